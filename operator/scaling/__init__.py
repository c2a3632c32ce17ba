"""Autoscaling and model placement from Prometheus signals.

Three layers, so the part that decides can be tested and benchmarked without a cluster:
``signals`` asks Prometheus (PromQL over the HTTP API) and returns a typed snapshot that says, per
signal, whether it is fresh; ``policy`` is a pure function from (spec, signals, current state,
history, clock) to a decision with its reason in words; ``timer`` holds the thin per-pipeline
Kopf daemon that, every ``spec.scaling.interval``, gathers, decides and acts (Deployment
replicas, the active-model annotation, status, Events).
The operator is the single writer of these Deployments' replicas: no HPA or KEDA may target them.
"""

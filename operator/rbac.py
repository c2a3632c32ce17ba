"""The Kubernetes permissions the operator needs, in one place.

The Helm chart's ClusterRole must grant at least these; tests/operator checks that every API call
the operator made against the emulator is covered by a rule here, so a new call without a rule
fails in CI instead of in a customer's cluster with a 403.
"""

from __future__ import annotations

from collections.abc import Iterable

# (apiGroups, resources, verbs), exactly as they go into a ClusterRole's rules.
RULES: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    # The custom resource: watched; status and Kopf's progress annotations written.
    (("livetranslate.io",), ("translationpipelines",), ("get", "list", "watch", "patch", "update")),
    (("livetranslate.io",), ("translationpipelines/status",), ("get", "patch", "update")),
    # Children, applied idempotently (create, then patch on 409).
    (("apps",), ("deployments",), ("get", "list", "watch", "create", "patch", "update", "delete")),
    (("apps",), ("deployments/scale",), ("get", "patch", "update")),
    (("",), ("services", "configmaps"), ("get", "list", "watch", "create", "patch", "update", "delete")),
    (("policy",), ("poddisruptionbudgets",), ("get", "list", "watch", "create", "patch", "update", "delete")),
    # Placement reads what the cluster offers.
    (("",), ("nodes",), ("get", "list", "watch")),
    # The autoscaler counts NPUs already requested by pods (an exhausted NPU pool moves audio on).
    (("",), ("pods",), ("list",)),
    # Events for placement changes and refused specs (core and events.k8s.io, Kopf uses core).
    (("", "events.k8s.io"), ("events",), ("create", "patch")),
]

# Granted by the chart only with rbac.pipelineMonitors (the operator then creates a PodMonitor per
# pipeline where the prometheus-operator CRDs exist).
MONITOR_RULES: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    (("monitoring.coreos.com",), ("podmonitors",), ("get", "list", "watch", "create", "patch", "update", "delete")),
]


def allows(group: str, resource: str, verb: str,
           rules: Iterable[tuple[Iterable[str], Iterable[str], Iterable[str]]] = RULES) -> bool:
    return any(group in groups and resource in resources and verb in verbs for groups, resources, verbs in rules)

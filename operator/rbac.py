"""The Kubernetes permissions the operator needs, in one place.

The Helm chart's ClusterRole must grant at least these; tests/operator checks that every API call
the operator made against the emulator is covered by a rule here, so a new call without a rule
fails in CI instead of in a customer's cluster with a 403.
"""

from __future__ import annotations

from collections.abc import Iterable

# (apiGroups, resources, verbs), exactly as they go into a ClusterRole's rules.
RULES: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    # The custom resource: listed and watched (Kopf), read fresh per reconcile; Kopf's progress
    # annotations and the autoscaler's annotations patched; status patched through /status.
    (("livetranslate.io",), ("translationpipelines",), ("get", "list", "watch", "patch")),
    (("livetranslate.io",), ("translationpipelines/status",), ("patch",)),
    # Children, applied idempotently: create, and on 409 get + merge-patch where they drifted.
    # Nothing is ever deleted by the operator: ownerReferences let the garbage collector do it.
    # Deployments are also listed and watched (status roll-up) and their replicas patched by the
    # autoscaler (on the Deployment itself, not through /scale).
    (("apps",), ("deployments",), ("get", "list", "watch", "create", "patch")),
    (("",), ("services", "configmaps"), ("get", "create", "patch")),
    (("policy",), ("poddisruptionbudgets",), ("get", "create", "patch")),
    # Per-stage NetworkPolicies, applied like the other children; listed and deleted only when
    # LT_OPERATOR_NETWORK_POLICIES turns them off.
    (("networking.k8s.io",), ("networkpolicies",), ("get", "list", "create", "patch", "delete")),
    # The model cache (spec.modelCache): its claims applied like the other children (a bound
    # claim's spec is never patched); one pull Job per model, listed and watched for
    # status.models, and deleted only to start a pull again after it gave up.
    (("",), ("persistentvolumeclaims",), ("get", "create", "patch")),
    (("batch",), ("jobs",), ("get", "list", "watch", "create", "patch", "delete")),
    # Placement reads what the cluster offers (Kopf's Node index lists and watches).
    (("",), ("nodes",), ("list", "watch")),
    # The autoscaler counts NPUs already requested by pods (an exhausted NPU pool moves audio on);
    # a finished pull Job's pod is read for its summary (bytes, sha256, or the error); before a
    # scale-down, gateway and audio pods get their live sessions as pod-deletion-cost.
    (("",), ("pods",), ("list", "patch")),
    # Events for placement changes, refused specs and scaling (core/v1, POSTed by ours and Kopf's).
    (("",), ("events",), ("create",)),
]

# Granted by the chart only with rbac.pipelineMonitors (the operator then creates a PodMonitor per
# pipeline where the prometheus-operator CRDs exist).
MONITOR_RULES: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    # Applied like the other children (whether the CRDs exist is asked through discovery).
    (("monitoring.coreos.com",), ("podmonitors",), ("get", "create", "patch")),
]


def allows(
    group: str,
    resource: str,
    verb: str,
    rules: Iterable[tuple[Iterable[str], Iterable[str], Iterable[str]]] = RULES,
) -> bool:
    return any(
        group in groups and resource in resources and verb in verbs for groups, resources, verbs in rules
    )

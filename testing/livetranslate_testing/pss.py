"""The "restricted" Pod Security Standard as a pure function over pod specs.

Namespaces that enforce ``pod-security.kubernetes.io/enforce: restricted`` refuse pods that break
it, so every pod template LiveTranslate ships (the chart's operator Deployment) or builds (the
operator's audio, translation and gateway Deployments) is checked against it by the same code,
without a cluster. The rules follow the Kubernetes Pod Security Standards (baseline + restricted,
latest version); each violation is returned as a readable string naming the container and field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Volume types the restricted profile allows.
ALLOWED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# Sysctls the baseline profile calls safe.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
ALLOWED_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
# Workload kinds whose pod template sits at spec.template.spec.
_TEMPLATE_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}
)

_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec inside a Kubernetes object, or None for objects that create no pods."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in _TEMPLATE_KINDS:
        return (spec.get("template") or {}).get("spec") or {}
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in _CONTAINER_LISTS:
        for c in pod.get(field) or []:
            yield f"{field}[{c.get('name', '?')}]", c


def restricted_violations(pod: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> list[str]:
    """Every way ``pod`` (a PodSpec as a dict) breaks the restricted Pod Security Standard.

    ``annotations`` are the pod template's annotations (only the legacy AppArmor ones matter).
    An empty list means the pod would be admitted by a namespace enforcing ``restricted``.
    """
    problems: list[str] = []
    psc = pod.get("securityContext") or {}

    # ---- baseline
    for host_field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host_field):
            problems.append(f"spec.{host_field} must not be true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("spec.securityContext.windowsOptions.hostProcess must not be true")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    problems += _selinux("spec.securityContext", psc.get("seLinuxOptions"))
    problems += _apparmor("spec.securityContext", psc.get("appArmorProfile"))
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            problems.append(f"annotation {key}={value}: AppArmor must be runtime/default or localhost/*")

    # ---- restricted: volumes
    for vol in pod.get("volumes") or []:
        types = [k for k in vol if k != "name"]
        for t in types:
            if t not in ALLOWED_VOLUME_TYPES:
                problems.append(f"volumes[{vol.get('name', '?')}]: volume type {t} is not allowed")

    # ---- restricted: pod-level defaults that containers may inherit
    pod_non_root = psc.get("runAsNonRoot")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_non_root is False:
        problems.append("spec.securityContext.runAsNonRoot must not be false")
    if psc.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser must not be 0")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        problems.append(f"spec.securityContext.seccompProfile.type {pod_seccomp} is not allowed")

    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: securityContext.privileged must not be true")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: securityContext.windowsOptions.hostProcess must not be true")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: securityContext.procMount must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: ports must not set hostPort")
        problems += _selinux(f"{where}: securityContext", sc.get("seLinuxOptions"))
        problems += _apparmor(f"{where}: securityContext", sc.get("appArmorProfile"))

        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot must be true (in the container or the pod)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: securityContext.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ALLOWED_SECCOMP:
            problems.append(
                f"{where}: seccompProfile.type must be RuntimeDefault or Localhost "
                "(in the container or the pod)"
            )
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: securityContext.capabilities.drop must include ALL")
        for cap in caps.get("add") or []:
            if cap != "NET_BIND_SERVICE":
                problems.append(f"{where}: capability {cap} must not be added")
    return problems


def object_violations(obj: Mapping[str, Any]) -> list[str]:
    """Restricted-profile violations of any Kubernetes object (empty for objects without pods)."""
    pod = pod_spec_of(obj)
    if pod is None:
        return []
    meta: Mapping[str, Any]
    if obj.get("kind") == "Pod":
        meta = obj.get("metadata") or {}
    elif obj.get("kind") == "CronJob":
        meta = (((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get(
            "metadata"
        ) or {}
    else:
        meta = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name', '?')}"
    return [f"{name}: {p}" for p in restricted_violations(pod, meta.get("annotations"))]


def _selinux(where: str, opts: Mapping[str, Any] | None) -> list[str]:
    if not opts:
        return []
    problems = []
    if opts.get("type", "") not in ALLOWED_SELINUX_TYPES:
        problems.append(f"{where}.seLinuxOptions.type {opts['type']} is not allowed")
    for field in ("user", "role"):
        if opts.get(field):
            problems.append(f"{where}.seLinuxOptions.{field} must not be set")
    return problems


def _apparmor(where: str, profile: Mapping[str, Any] | None) -> list[str]:
    if profile and profile.get("type") not in ("RuntimeDefault", "Localhost"):
        return [f"{where}.appArmorProfile.type {profile.get('type')} is not allowed"]
    return []

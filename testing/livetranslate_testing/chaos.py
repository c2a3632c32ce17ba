"""Operator chaos and API-fault harness: the real operator process against the emulator, checked.

Shared by tests/reliability and benchmarks/bench_chaos.py. The operator runs as users run it
(``livetranslate operator`` in its own process), so a kill is a real SIGKILL of a real pid, in the
middle of whatever HTTP request it has in flight (``KillSwitch`` fires from the emulator's gate,
before the request it counts is served). ``inspect`` reads the emulator's store and says, for
every pipeline, what a user would find wrong: children missing, duplicated or orphaned, status
lost or stale, a finalizer that keeps a deleted pipeline around.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from livetranslate.local import _die_with_parent
from livetranslate.operator import builders
from livetranslate_testing.figures import loadavg
from livetranslate_testing.kube_emulator import Call, KubeEmulator

TP = "livetranslate.io/v1alpha1/translationpipelines"
CHILD_RESOURCES = (
    "v1/configmaps",
    "v1/services",
    "apps/v1/deployments",
    "policy/v1/poddisruptionbudgets",
    "networking.k8s.io/v1/networkpolicies",
    "monitoring.coreos.com/v1/podmonitors",
)
# Children every servable pipeline has, whatever else the operator adds (NetworkPolicies, ...).
REQUIRED_KINDS = ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget")
OPERATOR_AGENT = "livetranslate-operator"
# What the operator can serve on a CPU-only cluster (offline Apertium en->es), and a target it
# cannot (no en->de offline): such a spec must end Failed, naming spec.targetLanguages.
SERVABLE_TARGET = "es"
UNSERVABLE_TARGET = "de"


def base_spec() -> dict[str, Any]:
    # The autoscaler would query a Prometheus that is not there; chaos is about reconciling.
    return {"sourceLanguage": "en", "targetLanguages": [SERVABLE_TARGET], "scaling": {"enabled": False}}


# ------------------------------------------------------------------------------- the operator


class OperatorSubprocess:
    """``livetranslate operator`` in a child process, pointed at the emulator's kubeconfig."""

    def __init__(
        self, api: KubeEmulator, kubeconfig: Path, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.api = api
        self.log_path = log_path
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONSAFEPATH": "1",
            "LT_OPERATOR_METRICS_PORT": "0",
            "LT_OPERATOR_LIVENESS_ENDPOINT": "",
            "LT_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._calls_at_start = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def spawn(self) -> None:
        self._calls_at_start = len(self.api.calls)
        with open(self.log_path, "ab") as log:
            log.write(f'{{"chaos": "operator start #{self.starts}"}}\n'.encode())
            log.flush()
            # Dies with us even if we are SIGKILLed: no operator left acting on a dead emulator port.
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "livetranslate.cli", "operator"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads here
            )
        self.starts += 1

    async def wait_watching(self, timeout: float = 90.0) -> float:
        """Seconds until this process opened its TranslationPipeline watch (it has listed them)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if any(
                c.verb == "watch" and c.resource == "translationpipelines"
                for c in self.api.calls[self._calls_at_start :]
            ):
                return time.monotonic() - started
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log_tail()}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"operator did not start watching within {timeout}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL by pid: no cleanup, requests in flight are abandoned."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def crashes(self) -> list[str]:
        """Log lines that mean a handler or the framework crashed: not a refused spec, not a
        retry, and not Kopf giving up on an event because the API server answered with an error
        (``Throttling ... due to an unexpected error: API...Error``; the resync recovers those)."""
        bad = ("failed with an exception", "unrecoverable", "Traceback", "Unhandled")
        api_errors = (
            "APIConflictError",
            "APIServerError",
            "APITooManyRequestsError",
            "ClientPayloadError",
            "ServerDisconnectedError",
            "ClientConnectionError",
            "ClientOSError",
        )
        return [
            record.splitlines()[0][:2000]
            for record in self.records()
            if any(b in record for b in bad)
            and not ("Throttling for" in record and any(a in record for a in api_errors))
        ]

    def records(self) -> list[str]:
        """The log's records, a traceback joined to the line that logged it."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        records: list[str] = []
        for line in lines:
            if records and not (line.startswith("{") or re.match(r"\d{4}-\d\d-\d\d", line)):
                records[-1] += "\n" + line
            else:
                records.append(line)
        return records

    def api_error_throttles(self) -> int:
        """How often Kopf dropped an event's processing because of an API error (then recovered
        by the next event or the operator's resync nudge)."""
        return sum(1 for r in self.records() if "Throttling for" in r and "unexpected error" in r)


class KillSwitch:
    """An emulator gate that SIGKILLs the operator when it sends its n-th request after arming.

    The request that trips it is then served, as a real API server would serve a request whose
    client died after sending it: the kill lands in the middle of a reconcile, between a write
    reaching the server and the operator learning its result.
    """

    def __init__(self, op: OperatorSubprocess) -> None:
        self.op = op
        self.remaining: int | None = None
        self.fired = asyncio.Event()
        self.tripped_by: Call | None = None

    def arm(self, after_requests: int) -> None:
        self.remaining = max(1, after_requests)
        self.fired = asyncio.Event()
        self.tripped_by = None

    async def __call__(self, call: Call) -> None:
        if self.remaining is None or not call.agent.startswith((OPERATOR_AGENT, "kopf")):
            return
        self.remaining -= 1
        if self.remaining <= 0:
            self.remaining = None
            self.tripped_by = call
            self.op.kill()
            self.fired.set()


# ---------------------------------------------------------------------------------- checking


@dataclasses.dataclass
class Inspection:
    """What is wrong in the cluster right now (all empty = converged)."""

    orphans: list[str] = dataclasses.field(default_factory=list)  # owner gone (or no owner)
    duplicates: list[str] = dataclasses.field(default_factory=list)  # two children for one role
    missing: list[str] = dataclasses.field(default_factory=list)  # a required child absent
    stale: list[str] = dataclasses.field(default_factory=list)  # config of an older generation
    bad_status: list[str] = dataclasses.field(default_factory=list)  # status not matching spec/children
    stuck_finalizers: list[str] = dataclasses.field(default_factory=list)  # deleted, still there

    @property
    def converged(self) -> bool:
        return not any(dataclasses.astuple(self))

    def counts(self) -> dict[str, int]:
        return {f.name: len(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def summary(self, limit: int = 5) -> str:
        parts = [
            f"{name}={len(items)} {items[:limit]}"
            for name, items in dataclasses.asdict(self).items()
            if items
        ]
        return "; ".join(parts) or "converged"


def servable(spec: Mapping[str, Any]) -> bool:
    return UNSERVABLE_TARGET not in (spec.get("targetLanguages") or [])


def inspect(api: KubeEmulator, namespace: str) -> Inspection:
    """Compare every pipeline's children and status with its spec, as ``kubectl get`` would."""
    found = Inspection()
    pipelines = {p["metadata"]["name"]: p for p in api.find(TP, namespace)}
    live_uids = {p["metadata"]["uid"] for p in pipelines.values()}
    children: dict[str, list[dict[str, Any]]] = {}
    for res in CHILD_RESOURCES:
        for obj in api.find(res, namespace, f"{builders.MANAGED_BY_LABEL}={builders.MANAGED_BY}"):
            meta = obj["metadata"]
            what = f"{obj['kind']}/{meta['name']}"
            owners = [o.get("uid") for o in meta.get("ownerReferences") or []]
            if not any(uid in live_uids for uid in owners):
                found.orphans.append(what)
                continue
            owner = (meta.get("labels") or {}).get(builders.PIPELINE_LABEL, "")
            children.setdefault(owner, []).append(obj)

    for name, tp in sorted(pipelines.items()):
        meta, spec, status = tp["metadata"], tp.get("spec") or {}, tp.get("status") or {}
        if meta.get("deletionTimestamp"):
            found.stuck_finalizers.append(f"{name} finalizers={meta.get('finalizers')}")
            continue
        generation = int(meta.get("generation") or 0)
        kids = children.get(name, [])
        roles = Counter(
            (k["kind"], (k["metadata"].get("labels") or {}).get(builders.STAGE_LABEL, "")) for k in kids
        )
        found.duplicates += [
            f"{name}: {n} x {kind}/{stage or '-'}" for (kind, stage), n in roles.items() if n > 1
        ]
        for k in kids:
            if k["metadata"]["ownerReferences"][0].get("uid") != meta["uid"]:
                found.orphans.append(f"{k['kind']}/{k['metadata']['name']} owned by another {name}")
        if servable(spec):
            kinds = Counter(k["kind"] for k in kids)
            for kind in REQUIRED_KINDS:
                want = 1 if kind == "ConfigMap" else len(builders.STAGES)
                if kinds.get(kind, 0) < want:
                    found.missing.append(f"{name}: {kinds.get(kind, 0)}/{want} {kind}")
            config = next((k for k in kids if k["kind"] == "ConfigMap"), None)
            if config is not None:
                applied = json.loads((config.get("data") or {}).get("pipeline.json") or "{}").get(
                    "generation"
                )
                if applied != generation:
                    found.stale.append(f"{name}: config generation {applied} != {generation}")
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
            )
            if (
                status.get("phase") != "Ready"
                or status.get("observedGeneration") != generation
                or ready.get("status") != "True"
                or ready.get("observedGeneration") != generation
                or status.get("readyStages") != f"{len(builders.STAGES)}/{len(builders.STAGES)}"
                or status.get("invalidField")
            ):
                found.bad_status.append(
                    f"{name}: phase={status.get('phase')} observed="
                    f"{status.get('observedGeneration')} gen={generation} "
                    f"ready={ready.get('status')}/{ready.get('observedGeneration')}"
                )
        else:
            if (
                status.get("phase") != "Failed"
                or status.get("observedGeneration") != generation
                or not str(status.get("invalidField") or "").startswith("spec.targetLanguages")
            ):
                found.bad_status.append(
                    f"{name}: unservable spec, phase={status.get('phase')} observed="
                    f"{status.get('observedGeneration')} gen={generation} "
                    f"invalidField={status.get('invalidField')}"
                )
    return found


async def converge(
    api: KubeEmulator, namespace: str, timeout: float, *, poll: float = 0.1
) -> tuple[float, Inspection]:
    """Seconds until ``inspect`` finds nothing wrong, or (timeout, what is still wrong)."""
    started = time.monotonic()
    while True:
        found = inspect(api, namespace)
        elapsed = time.monotonic() - started
        if found.converged or elapsed >= timeout:
            return elapsed, found
        await asyncio.sleep(poll)


# ------------------------------------------------------------------------------- the workload


class Workload:
    """Creates, spec updates and deletes of pipelines, written straight into the emulator (a user's
    kubectl, never faulted). Some updates ask for a target the cluster cannot serve: the
    operator must then report Failed naming the field, and recover when a later update fixes it."""

    def __init__(
        self, api: KubeEmulator, namespace: str, size: int, rng: random.Random, unservable_rate: float = 0.1
    ) -> None:
        self.api, self.namespace, self.size, self.rng = api, namespace, size, rng
        self.unservable_rate = unservable_rate
        self.serial = 0
        self.ops: Counter[str] = Counter()

    def names(self) -> list[str]:
        return sorted(
            p["metadata"]["name"]
            for p in self.api.find(TP, self.namespace)
            if not p["metadata"].get("deletionTimestamp")
        )

    def create(self) -> str:
        name = f"chaos-{self.serial:04d}"
        self.serial += 1
        self.api.create(TP, {"metadata": {"name": name, "namespace": self.namespace}, "spec": base_spec()})
        self.ops["create"] += 1
        return name

    def update(self, name: str) -> None:
        rng = self.rng
        low = rng.randint(1, 3)
        patch: dict[str, Any] = rng.choice(
            [
                {"audio": {"vad": rng.random() < 0.5}},
                {"gateway": {"maxSessionsPerReplica": rng.randint(50, 2000)}},
                {"gateway": {"replicas": {"min": low, "max": low + rng.randint(0, 3)}}},
                {"translation": {"contextSegments": rng.randint(0, 8)}},
                {"audio": {"diarization": {"enabled": rng.random() < 0.5, "maxSpeakers": rng.randint(1, 8)}}},
            ]
        )
        patch["targetLanguages"] = [
            UNSERVABLE_TARGET if rng.random() < self.unservable_rate else SERVABLE_TARGET
        ]
        self.api.patch_object(TP, self.namespace, name, {"spec": patch})
        self.ops["update"] += 1

    def delete(self, name: str) -> None:
        self.api.delete_object(TP, self.namespace, name)
        self.ops["delete"] += 1

    def fill(self) -> None:
        while len(self.names()) < self.size:
            self.create()

    def step(self, ops: int) -> None:
        """``ops`` random operations, keeping about ``size`` pipelines alive."""
        for _ in range(ops):
            names = self.names()
            x = self.rng.random()
            if not names or (len(names) < self.size and x < 0.3):
                self.create()
            elif x < 0.75:
                self.update(self.rng.choice(names))
            else:
                self.delete(self.rng.choice(names))


@contextlib.contextmanager
def loadavg_noted() -> Iterator[dict[str, Any]]:
    note: dict[str, Any] = {"loadavg_before": loadavg()}
    try:
        yield note
    finally:
        note["loadavg_after"] = loadavg()

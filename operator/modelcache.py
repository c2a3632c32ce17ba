"""The pipeline's model cache (spec.modelCache): what to pull, the volume and Jobs that pull it, the
pod pieces that use it, and what users read in ``status.models``. Pure; ``modelsync`` does the I/O.

- Which models: the audio model in the format its device needs (an OpenVINO IR on an NPU,
  CTranslate2 weights elsewhere) and, where vLLM serves translation, the translation model and every
  ``fallbackModels`` entry, pulled ahead so that a switch under GPU-memory pressure loads from disk.
  A model named by an absolute path is the user's own mount and is not pulled.
- One Job per model runs ``livetranslate model-cache pull``: it verifies what it fetched, renames it
  into place only when whole, and leaves a one-line summary (bytes, sha256, or the error) as its
  container's termination message, which the operator reads from the Job's pod.
- The Job controller retries a failed pod with its own exponential backoff (``JOB_BACKOFF_LIMIT``).
  A pull Job that gives up is reported Failed (ModelsReady=False and an Event) and replaced after a
  delay that doubles per attempt. A model that cannot exist here (an OpenVINO conversion this image
  cannot do, exit status ``EXIT_PERMANENT``) fails its Job at once through a podFailurePolicy rule
  (the Failed condition's reason is ``PodFailurePolicy``) and is not retried: placement moves the
  audio stage to the next device in spec.audio.devices for good (delete the Job to try again). Any
  other failed conversion (the converter OOM-killed, the node drained) is retried like a pull, and
  the audio stage runs on the next device only until a retry completes.
- ReadWriteMany: one volume for the pipeline. ReadWriteOnce: one volume per stage, because a volume
  attaches to one node; the stage's Jobs schedule like its pods, and once the scheduler has bound
  the volume to a node (the claim's ``volume.kubernetes.io/selected-node`` annotation) the stage's
  pods are pinned to that node, so every replica of the stage runs there.
- Pods mount the cache read-only and wait for their model in an init container before the engine
  starts; vLLM loads the cached directory and serves it under the model's name.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from livetranslate.api import Device, ModelCacheSpec, Stage
from livetranslate.config import MODEL_CACHE_MOUNT_DIR, ResolvedPipeline
from livetranslate.operator import placement as placing
from livetranslate.operator.settings import OperatorSettings
from livetranslate.workloads.modelcache import layout
from livetranslate.workloads.modelcache.errors import EXIT_PERMANENT

CacheStage = Literal["audio", "translation"]
COMPONENT = "model-cache"
MODEL_KEY_LABEL = "livetranslate.io/model-key"
ATTEMPT_ANNOTATION = "livetranslate.io/attempt"
MODEL_NAME_ANNOTATION = "livetranslate.io/model"
# Set by the scheduler on a claim whose StorageClass binds on first use (WaitForFirstConsumer).
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
TOKEN_MOUNT_DIR = "/etc/livetranslate/hf-token"
# Pod retries inside one Job (the Job controller waits 10 s, 20 s, 40 s ... between them).
JOB_BACKOFF_LIMIT = 3
# A Job's pod may take this long in all (a 15 GB model on a slow link, an OpenVINO conversion).
JOB_DEADLINE_SECONDS = 4 * 3600
# After a Job gives up: the first replacement after a minute, each later one twice as late.
RETRY_BASE_SECONDS = 60.0
RETRY_MAX_SECONDS = 1800.0


@dataclass(frozen=True)
class CachedModel:
    """One model the pipeline needs in its cache."""

    stage: CacheStage
    name: str
    format: str
    source: str

    @property
    def key(self) -> str:
        return layout.model_key(self.stage, self.name, self.format)

    @property
    def path(self) -> str:
        """The model's directory as the pods mount the cache."""
        return str(layout.model_dir(Path(MODEL_CACHE_MOUNT_DIR), self.stage, self.name, self.format))


def _pulled(name: str) -> bool:
    """Whether the cache pulls ``name``: a packaged name, a URI or a hub repo, not a local path."""
    return not name.startswith(("/", "./", "../", "~"))


def required_models(resolved: ResolvedPipeline, device: Device | None = None) -> list[CachedModel]:
    """The models the pipeline's cache holds, audio first, then translation's in spec order."""
    spec, placed = resolved.spec, resolved.placement
    out: list[CachedModel] = []
    audio = spec.audio_model()
    if _pulled(audio):
        fmt = layout.default_format("audio", audio, device or placed.audioDevice)
        out.append(CachedModel("audio", audio, fmt, layout.default_source("audio", audio)))
    if placed.translationBackend == "vllm":
        names = dict.fromkeys([spec.translation.model, *spec.translation.fallbackModels])
        for name in names:
            if _pulled(name):
                fmt = layout.default_format("translation", name, "gpu")
                out.append(CachedModel("translation", name, fmt, layout.default_source("translation", name)))
    return out


def kept_models(resolved: ResolvedPipeline, jobs: Iterable[Mapping[str, Any]]) -> list[CachedModel]:
    """``required_models`` and, while its conversion failed for a passing reason, the audio model's
    OpenVINO IR: placement runs audio on the next device meanwhile, but the conversion is still
    retried (and reported) so that audio returns to the NPU once it completes."""
    out = required_models(resolved)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    for model in required_models(resolved, device="npu"):
        job = by_name.get(job_name(resolved.name, model))
        if (
            model.format == "openvino-ir"
            and model not in out
            and job is not None
            and not job_complete(job)
            and not failed_for_good(job)
        ):
            out.append(model)
    return out


def path_key(model: CachedModel) -> str:
    """The key of ``ResolvedPipeline.modelPaths`` for a model."""
    return "audio" if model.stage == "audio" else f"translation:{model.name}"


def model_paths(models: Iterable[CachedModel]) -> dict[str, str]:
    return {path_key(m): m.path for m in models}


def claim_name(pipeline: str, spec: ModelCacheSpec, stage: CacheStage) -> str:
    return f"{pipeline}-models" if spec.accessMode == "ReadWriteMany" else f"{pipeline}-models-{stage}"


def claim_names(pipeline: str, spec: ModelCacheSpec) -> dict[CacheStage, str]:
    return {stage: claim_name(pipeline, spec, stage) for stage in ("audio", "translation")}


def job_name(pipeline: str, model: CachedModel) -> str:
    """``<pipeline>-model-<key>``, shortened with a digest of the pipeline's name to fit 63."""
    name = f"{pipeline}-model-{model.key}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(pipeline.encode()).hexdigest()[:6]
    room = 63 - len(model.key) - len("-model-") - len(digest) - 1
    return f"{pipeline[:room].rstrip('-')}-{digest}-model-{model.key}"


# ------------------------------------------------------------------------------------ manifests


def _labels(resolved: ResolvedPipeline, extra: Mapping[str, str]) -> dict[str, str]:
    from livetranslate.operator.builders import labels

    return {**labels(resolved.name), "app.kubernetes.io/component": COMPONENT, **extra}


def build_claims(resolved: ResolvedPipeline) -> list[dict[str, Any]]:
    """The cache's PersistentVolumeClaims (one, or one per stage with ReadWriteOnce)."""
    spec = resolved.spec.modelCache
    assert spec is not None
    out = []
    for claim in dict.fromkeys(claim_names(resolved.name, spec).values()):
        body: dict[str, Any] = {
            "accessModes": [spec.accessMode],
            "resources": {"requests": {"storage": spec.size}},
        }
        if spec.storageClassName:
            body["storageClassName"] = spec.storageClassName
        out.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": resolved.namespace, "labels": _labels(resolved, {})},
                "spec": body,
            }
        )
    return out


def _pull_command(model: CachedModel, token: bool) -> list[str]:
    cmd = ["livetranslate", "model-cache", "pull", "--cache", MODEL_CACHE_MOUNT_DIR]
    cmd += ["--stage", model.stage, "--name", model.name, "--format", model.format, "--source", model.source]
    if token:
        cmd += ["--token-file", f"{TOKEN_MOUNT_DIR}/token"]
    return [*cmd, "--termination-log", "/dev/termination-log"]


def build_job(
    resolved: ResolvedPipeline, model: CachedModel, settings: OperatorSettings, attempt: int = 1
) -> dict[str, Any]:
    """The Job that pulls (and, for an NPU, converts) one model into the cache.

    It runs the audio image, which carries the packaged Whisper weights, the OpenVINO converter and
    huggingface_hub; under the chart's restricted pod security like every other pod.
    """
    from livetranslate.operator.podparts import container_security, pod_security

    spec = resolved.spec.modelCache
    assert spec is not None
    token = spec.huggingFaceTokenSecretRef if model.source.startswith("hf:") else None
    labels = _labels(resolved, {MODEL_KEY_LABEL: model.key})
    volumes: list[dict[str, Any]] = [
        {
            "name": "cache",
            "persistentVolumeClaim": {"claimName": claim_name(resolved.name, spec, model.stage)},
        },
        # The converter's intermediate checkpoint and hub bookkeeping; the model itself is
        # written on the cache volume, next to where it is renamed into place.
        {"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "cache", "mountPath": MODEL_CACHE_MOUNT_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if token is not None:
        volumes.append(
            {
                "name": "hf-token",
                "secret": {"secretName": token.name, "items": [{"key": token.key, "path": "token"}]},
            }
        )
        mounts.append({"name": "hf-token", "mountPath": TOKEN_MOUNT_DIR, "readOnly": True})
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security(),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [
            {
                "name": "pull",
                "image": settings.audio_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": _pull_command(model, token is not None),
                "env": [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/hf"}],
                "volumeMounts": mounts,
                "resources": settings.audio_resources.as_k8s(),
                "securityContext": container_security(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": volumes,
    }
    if spec.accessMode == "ReadWriteOnce":
        # The volume binds on the node of its first user: let that be a node the stage can use.
        device = resolved.placement.audioDevice if model.stage == "audio" else "gpu"
        pod.update(placing.scheduling(device))
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(resolved.name, model),
            "namespace": resolved.namespace,
            "labels": labels,
            "annotations": {MODEL_NAME_ANNOTATION: model.name, ATTEMPT_ANNOTATION: str(attempt)},
        },
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "activeDeadlineSeconds": JOB_DEADLINE_SECONDS,
            # A model that cannot exist here fails the Job at once: no pod retries it.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "pull",
                            "operator": "In",
                            "values": [EXIT_PERMANENT],
                        },
                    }
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


# ------------------------------------------------------------------------------------ pod pieces


@dataclass(frozen=True)
class PodPieces:
    """What a stage's pod template gains from the cache."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]
    node: str | None = None  # ReadWriteOnce: the node that holds the stage's volume


def pod_pieces(
    resolved: ResolvedPipeline,
    stage: Stage,
    image: str,
    settings: OperatorSettings,
    nodes: Mapping[str, str | None],
) -> PodPieces | None:
    """The read-only cache mount and the init container that waits for the stage's model."""
    from livetranslate.operator.podparts import container_security

    spec = resolved.spec.modelCache
    if spec is None or stage == "gateway":
        return None
    models = [m for m in required_models(resolved) if m.stage == stage]
    if stage == "translation":
        models = [m for m in models if m.name == resolved.placement.translationModel]
    if not models:
        return None
    model = models[0]
    wait = [
        "livetranslate", "model-cache", "wait", "--cache", MODEL_CACHE_MOUNT_DIR,
        "--stage", model.stage, "--name", model.name, "--format", model.format,
    ]  # fmt: skip
    init = {
        "name": "wait-for-model",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": wait,
        "volumeMounts": [{"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT_DIR, "readOnly": True}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": container_security(),
    }
    claim = claim_name(resolved.name, spec, model.stage)
    return PodPieces(
        volumes=[{"name": "model-cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        mounts=[{"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT_DIR, "readOnly": True}],
        init_containers=[init],
        node=nodes.get(model.stage) if spec.accessMode == "ReadWriteOnce" else None,
    )


# Without spec.modelCache, an audio pod placed on an NPU converts its model into its own model
# volume (the /models emptyDir) before the engine starts: the default spec works on an NPU node.
POD_CONVERTED_DIR = "/models/converted"


def pod_conversion(resolved: ResolvedPipeline) -> CachedModel | None:
    """The audio model a pod must convert for itself: on an NPU, with no cache, a model the
    cache would pull (a packaged name or a URI; a mounted path is the user's own IR)."""
    if resolved.spec.modelCache is not None or resolved.placement.audioDevice != "npu":
        return None
    name = resolved.spec.audio_model()
    if not _pulled(name):
        return None
    return CachedModel("audio", name, "openvino-ir", layout.default_source("audio", name))


def pod_converted_path(model: CachedModel) -> str:
    return str(layout.model_dir(Path(POD_CONVERTED_DIR), model.stage, model.name, model.format))


def conversion_pieces(resolved: ResolvedPipeline, image: str, settings: OperatorSettings) -> PodPieces | None:
    """The init container that converts the pod's audio model into its own model volume."""
    from livetranslate.operator.podparts import container_security

    model = pod_conversion(resolved)
    if model is None:
        return None
    command = [
        "livetranslate", "model-cache", "pull", "--cache", POD_CONVERTED_DIR, "--stage", "audio",
        "--name", model.name, "--format", model.format, "--source", model.source,
    ]  # fmt: skip
    init = {
        "name": "convert-model",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}],
        # The conversion runs on the CPU (OpenVINO's CPU device); the NPU is for the engine.
        "resources": settings.audio_resources.as_k8s(),
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return PodPieces(volumes=[], mounts=[], init_containers=[init])


def pin_to_node(pod_spec: dict[str, Any], node: str) -> None:
    """Require ``node`` (a ReadWriteOnce cache attaches there only), keeping the preferences."""
    affinity = pod_spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
        ]
    }


# ----------------------------------------------------------------------------------------- state


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def job_failed(job: Mapping[str, Any]) -> bool:
    return _condition(job, "Failed") is not None


def failed_for_good(job: Mapping[str, Any]) -> bool:
    """Failed because its model cannot exist here (the podFailurePolicy rule): not retried."""
    return (_condition(job, "Failed") or {}).get("reason") == "PodFailurePolicy"


def attempt_of(job: Mapping[str, Any]) -> int:
    return int(((job.get("metadata") or {}).get("annotations") or {}).get(ATTEMPT_ANNOTATION) or 1)


def job_complete(job: Mapping[str, Any]) -> bool:
    return _condition(job, "Complete") is not None


def termination_summary(pods: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The pull command's one-line summary, from the newest of a Job's pods that wrote one."""
    newest = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    for pod in reversed(newest):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((status.get("state") or {}).get("terminated") or {}).get("message")
            if message:
                try:
                    parsed = json.loads(message.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    return {"error": message.strip().splitlines()[-1][:300] if message.strip() else ""}
                return parsed if isinstance(parsed, dict) else {}
    return {}


def waiting_reason(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """Why a pull Job's newest pod is not running (unschedulable, a Secret or image missing)."""
    newest = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    if not newest:
        return None
    status = newest[-1].get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}".strip(": ")
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting.get("reason") not in ("ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
    return None


def job_phase(job: Mapping[str, Any]) -> str:
    """Complete | Failed | Active | Pending: what a Job's watch event may have changed."""
    if job_complete(job):
        return "Complete"
    if job_failed(job):
        return "Failed"
    return "Active" if int((job.get("status") or {}).get("active") or 0) > 0 else "Pending"


def model_status(
    model: CachedModel,
    job: Mapping[str, Any] | None,
    summary: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``status.models`` entry from the model's Job and its pod's summary."""
    out: dict[str, Any] = {"stage": model.stage, "name": model.name, "format": model.format}
    if job is None:
        return {**out, "state": "Pending", "message": "no pull Job yet"}
    if job_complete(job):
        prev = previous or {}
        return {
            **out,
            "state": "Ready",
            "bytes": summary.get("bytes", prev.get("bytes")),
            "sha256": summary.get("sha256", prev.get("sha256")),
            "message": None,
        }
    if job_failed(job):
        reason = (
            summary.get("error") or (_condition(job, "Failed") or {}).get("message") or "the pull Job failed"
        )
        return {**out, "state": "Failed", "message": str(reason)[:500]}
    waiting = summary.get("waiting")
    if int((job.get("status") or {}).get("active") or 0) > 0 and not waiting:
        state = "Converting" if model.format == "openvino-ir" else "Pulling"
        return {**out, "state": state, "message": None}
    return {
        **out,
        "state": "Pending",
        "message": f"pull pod not running: {waiting}" if waiting else "pull Job waiting for its pod",
    }


def models_condition(models: Sequence[Mapping[str, Any]]) -> tuple[bool, str, str]:
    """ModelsReady: (ok, reason, message)."""
    failed = [m for m in models if m.get("state") == "Failed"]
    if failed:
        return (
            False,
            "ModelFailed",
            "; ".join(f"{m['name']} ({m['format']}): {m.get('message')}" for m in failed),
        )
    waiting = [m for m in models if m.get("state") != "Ready"]
    if waiting:
        return False, "ModelsPulling", ", ".join(f"{m['name']} {m.get('state')}" for m in waiting)
    return True, "ModelsReady", f"{len(models)} model(s) verified in the cache"


def unusable_devices(jobs: Iterable[Mapping[str, Any]], audio_model: str) -> dict[Device, str]:
    """Devices the audio model cannot use now: an NPU whose OpenVINO conversion cannot be done
    here (for good), or failed and is being retried (until a retry completes)."""
    for job in jobs:
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        key = ((job.get("metadata") or {}).get("labels") or {}).get(MODEL_KEY_LABEL)
        if annotations.get(MODEL_NAME_ANNOTATION) != audio_model or key != layout.model_key(
            "audio", audio_model, "openvino-ir"
        ):
            continue
        name = job["metadata"]["name"]
        if failed_for_good(job):
            return {"npu": f"{audio_model} could not be converted to an OpenVINO IR (Job {name})"}
        if job_failed(job) or (attempt_of(job) > 1 and not job_complete(job)):
            return {
                "npu": f"converting {audio_model} to an OpenVINO IR failed and is retried (Job {name}, "
                f"attempt {attempt_of(job)}); audio runs on the next device until it completes"
            }
    return {}


def retry_in(job: Mapping[str, Any], now: datetime.datetime | None = None) -> float:
    """Seconds until a failed pull Job is replaced (0: now); doubles with each attempt."""
    attempt = attempt_of(job)
    delay = min(RETRY_BASE_SECONDS * 2 ** (attempt - 1), RETRY_MAX_SECONDS)
    since = (_condition(job, "Failed") or {}).get("lastTransitionTime")
    if not since:
        return 0.0
    failed_at = datetime.datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(tz=datetime.UTC)
    return max(0.0, delay - (now - failed_at).total_seconds())

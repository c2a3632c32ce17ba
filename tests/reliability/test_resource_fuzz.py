"""Resource fuzzing (issue 6, item 3): generated TranslationPipeline specs, valid and invalid mixed.

Every spec is either refused with a message naming the field (by the CRD schema and its CEL rules
at apply time, or by the operator as phase Failed with ``status.invalidField``), or reconciled to
Ready; no spec makes a handler crash. The schema-level property runs on many examples (no I/O);
the operator-level one sends the accepted specs through the real operator (Kopf, over HTTP) and
the emulator, one pipeline per example.
"""

from __future__ import annotations

import itertools
import logging
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from livetranslate.api import describe_validation_error, first_error_field, parse_spec
from livetranslate.crd import openapi_schema
from livetranslate.operator.settings import OperatorSettings
from livetranslate.testing.kube_operator import NS, Cluster, OperatorProcess, emulated_cluster, eventually
from livetranslate.testing.kube_schema import admit

SCHEMA = openapi_schema()
TP = "livetranslate.io/v1alpha1/translationpipelines"
# Top-level spec fields and the fields of each section: what an error message may name.
SECTIONS = ("sourceLanguage", "targetLanguages", "audio", "translation", "gateway", "scaling")

# ------------------------------------------------------------------------------- strategies

VALID_CODES = ["en", "es", "de", "ca", "gl", "fr", "pt-BR", "zh-Hant-TW", "eo"]
BAD_CODES = ["", "e", "EN", "english", "es_ES", "toolonglanguage", "1a", "es-", "-es", "es es"]
junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                 st.text(string.printable, max_size=12), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.sampled_from(["a", "min", "name"]), st.integers(), max_size=2))


def specs(*, junk_values: bool) -> st.SearchStrategy[dict[str, Any]]:
    """TranslationPipeline specs, any subset of the fields.

    With ``junk_values``: values of the wrong type, just out of range, bad language codes, typo'd
    field names -- most specs are refused. Without: every single value is within its bounds
    (edges included), so what is refused is refused for a rule across fields (min > max,
    duplicates, source among targets, watermarks out of order) or by the operator (a pair or a
    backend this CPU-only cluster cannot serve). Scaling stays disabled: with it on, the
    autoscaler would query a Prometheus that is not there, which is the autoscaler's business.
    """

    def sometimes(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(valid, valid, valid, junk) if junk_values else valid

    def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
        return st.integers(lo - 1, hi + 1) if junk_values else st.integers(lo, hi)

    def section(fields: dict[str, st.SearchStrategy[Any]], unknown: bool = True) -> st.SearchStrategy[dict[str, Any]]:
        typos = {"replica": st.integers(0, 3), "enable": st.booleans(), "modle": st.text(max_size=5)}
        return st.fixed_dictionaries({}, optional={**fields, **(typos if unknown else {})})

    def pick(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
        return st.sampled_from(valid + invalid) if junk_values else st.sampled_from(valid)

    replicas = sometimes(section({"min": sometimes(ints(0, 6)), "max": sometimes(ints(0, 6))}, unknown=False))
    languages = pick(VALID_CODES * 2, BAD_CODES)
    fractions = st.floats(-0.1, 1.1, allow_nan=False) if junk_values else st.floats(0.01, 1.0)
    durations = pick(["15s", "1m30s", "250ms", "2h", "5m"], ["soon", "15", "-5s"])
    return section({
        "sourceLanguage": sometimes(pick(["en", "en", "en", "auto", "es", "de"], ["EN", ""])),
        "targetLanguages": sometimes(st.lists(languages, min_size=0 if junk_values else 1,
                                              max_size=17 if junk_values else 3)),
        "audio": sometimes(section({
            "model": sometimes(pick(["tiny.en", "base", "/models/whisper-ct2", "s3://bucket/m"], [""])),
            "devices": sometimes(st.lists(pick(["npu", "gpu", "cpu"], ["tpu"]), min_size=0 if junk_values else 1,
                                          max_size=4 if junk_values else 3)),
            "vad": sometimes(st.booleans()),
            "diarization": sometimes(section({"enabled": sometimes(st.booleans()),
                                              "maxSpeakers": sometimes(ints(1, 32))})),
            "replicas": replicas,
        })),
        "translation": sometimes(section({
            "backend": sometimes(pick(["auto", "auto", "apertium", "vllm", "openai"], ["llamacpp"])),
            "model": sometimes(pick(["Qwen/Qwen2.5-7B-Instruct", "gemma"], [""])),
            "fallbackModels": sometimes(st.lists(st.sampled_from(["Qwen/Qwen2.5-3B-Instruct-AWQ", "x"]),
                                                 max_size=9 if junk_values else 8)),
            "gpuMemoryUtilization": sometimes(fractions),
            "maxModelLen": sometimes(ints(256, 1_048_576)),
            "contextSegments": sometimes(ints(0, 32)),
            "endpoint": sometimes(st.sampled_from(["http://llm.demo.svc:8000/v1", "not a url"])),
            "apiKeySecretRef": sometimes(section({"name": pick(["llm-key"], ["Bad_Name"]),
                                                  "key": pick(["apiKey"], [""])})),
            "replicas": replicas,
        })),
        "gateway": sometimes(section({
            "replicas": replicas,
            "maxSessionsPerReplica": sometimes(ints(1, 100_000)),
            "authSecretRef": sometimes(section({"name": pick(["lt-tokens"], ["Not_A_Name", ""])})),
            "redisUrl": sometimes(st.just("redis://redis.demo.svc:6379/0")),
            "allowedOrigins": sometimes(st.lists(st.sampled_from(["https://example.org", "*"]), max_size=3)),
        })),
        "scaling": st.builds(lambda extra: {**extra, "enabled": False}, section({
            "interval": sometimes(durations),
            "scaleDownStabilization": sometimes(durations),
            "latencySLO": sometimes(section({"p95Seconds": sometimes(
                st.floats(-1, 61, allow_nan=False) if junk_values else st.floats(0.01, 60))})),
            "gpuMemory": sometimes(section({"highWatermark": sometimes(fractions),
                                            "lowWatermark": sometimes(fractions)})),
        })),
    })


spec_strategy = specs(junk_values=True)
plausible_specs = specs(junk_values=False)


def manifest(spec: dict[str, Any], name: str = "fuzz") -> dict[str, Any]:
    return {"apiVersion": "livetranslate.io/v1alpha1", "kind": "TranslationPipeline",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def _field_names(schema: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for name, sub in (schema.get("properties") or {}).items():
        names |= {name} | _field_names(sub)
    if isinstance(schema.get("items"), dict):
        names |= _field_names(schema["items"])
    return names


SPEC_FIELDS = _field_names(SCHEMA["properties"]["spec"])


def names_a_field(message: str) -> bool:
    """An error message users can act on names the spec field: by its path
    (``spec.audio.replicas: ...``) or, for a rule across fields at the spec's root, by the field
    names the rule's message uses (``spec: targetLanguages must not contain sourceLanguage``)."""
    if any(f"spec.{s}" in message for s in SECTIONS):
        return True
    words = set(message.replace(".", " ").replace(":", " ").replace(",", " ").split())
    return bool(words & SPEC_FIELDS)


# --------------------------------------------------------------------------- schema property


@settings(max_examples=200, deadline=None)
@given(spec=spec_strategy)
def test_every_spec_is_admitted_or_refused_naming_the_field(spec: dict[str, Any]) -> None:
    stored, errors = admit(manifest(spec), SCHEMA)
    if errors:
        for error in errors:
            assert names_a_field(error), f"the API server's message names no field: {error!r} for {spec}"
        return
    # Admitted: the operator parses what the API server stored, or refuses it naming the field.
    try:
        parse_spec(stored["spec"])
    except pydantic.ValidationError as e:
        assert first_error_field(e).startswith("spec."), e
        assert names_a_field(describe_validation_error(e)), describe_validation_error(e)


@settings(max_examples=200, deadline=None)
@given(spec=spec_strategy)
def test_the_schema_and_the_models_agree(spec: dict[str, Any]) -> None:
    """What `kubectl apply` admits, `livetranslate up` (no API server) accepts, and the reverse:
    the CRD is generated from the models, so a disagreement is a generator bug."""
    stored, errors = admit(manifest(spec), SCHEMA)
    try:
        parse_spec(stored["spec"] if not errors else spec)
        models_ok = True
    except pydantic.ValidationError:
        models_ok = False
    assert models_ok == (not errors), f"schema errors {errors} but models {'accept' if models_ok else 'refuse'}"


# ------------------------------------------------------------------------- operator property


@pytest.fixture
async def fuzz_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path / "kubeconfig", auto_ready_deployments=True) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        yield cluster


class Crashes(logging.Handler):
    """Log records that mean a handler (or Kopf's processing) crashed rather than refused a spec."""

    NEEDLES = ("failed with an exception", "unrecoverable", "Unhandled")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(n in message for n in self.NEEDLES):
            self.seen.append(message)


@pytest.fixture
async def fuzz_operator(fuzz_cluster: Cluster) -> AsyncIterator[tuple[OperatorProcess, Crashes]]:
    crashes = Crashes()
    logging.getLogger().addHandler(crashes)
    proc = OperatorProcess(OperatorSettings(metrics_port=0, liveness_endpoint="", retry_delay_seconds=0.5))
    await proc.start()
    try:
        yield proc, crashes
    finally:
        await proc.kill()
        logging.getLogger().removeHandler(crashes)


_serial = itertools.count()


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.filter_too_much])
@given(spec=plausible_specs)
async def test_admitted_specs_reconcile_to_ready_or_fail_naming_the_field(
        fuzz_cluster: Cluster, fuzz_operator: tuple[OperatorProcess, Crashes], spec: dict[str, Any]) -> None:
    _, errors = admit(manifest(spec), SCHEMA)
    assume(not errors)
    name = f"fuzz-{next(_serial)}"
    fuzz_cluster.api.create(TP, manifest(spec, name))

    def settled() -> dict[str, Any] | None:
        status = (fuzz_cluster.tp(name) or {}).get("status") or {}
        return status if status.get("phase") in ("Ready", "Failed") else None

    status = await eventually(settled, timeout=30, message=f"{name} Ready or Failed, spec {spec}")
    event(f"phase {status['phase']} {status.get('invalidField') or ''}".strip())
    if status["phase"] == "Failed":
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert str(status.get("invalidField", "")).startswith("spec."), status
        assert ready["status"] == "False" and names_a_field(ready["message"]), ready
    else:
        assert status["readyStages"] == "3/3" and status["observedGeneration"] == 1
    # Deleting it leaves nothing behind (finalizer released, children collected).
    fuzz_cluster.api.delete_object(TP, NS, name)
    await eventually(lambda: fuzz_cluster.tp(name) is None and not fuzz_cluster.children(name),
                     timeout=20, message=f"{name} gone with its children")
    _, crashes = fuzz_operator
    assert crashes.seen == [], crashes.seen

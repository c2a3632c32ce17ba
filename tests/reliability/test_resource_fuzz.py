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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings

from livetranslate.api import describe_validation_error, first_error_field, parse_spec
from livetranslate.operator.settings import OperatorSettings
from livetranslate_testing.kube_operator import NS, Cluster, OperatorProcess, emulated_cluster, eventually
from livetranslate_testing.kube_schema import admit
from livetranslate_testing.spec_fuzz import (
    SCHEMA,
    TP,
    manifest,
    names_a_field,
    plausible_specs,
    spec_strategy,
)

# --------------------------------------------------------------------------- schema property


@settings(max_examples=200, deadline=None)
@given(spec=spec_strategy)
# An explicit null where the model is optional: the audio model's CEL rule called startsWith on
# null, which the emulator raised on (the API server rejects an object a rule cannot evaluate).
@example(spec={"audio": {"model": None}})
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
@example(spec={"audio": {"diarization": {"enabled": 0.0}}})  # was admitted by the models (lax bool)
@example(spec={"gateway": {"replicas": {"min": "2"}}})
@example(spec={"audio": {"model": None}})  # null is "the default" to both
def test_the_schema_and_the_models_agree(spec: dict[str, Any]) -> None:
    """What `kubectl apply` admits, `livetranslate up` (no API server) accepts, and the reverse:
    the CRD is generated from the models, so a disagreement is a generator bug."""
    stored, errors = admit(manifest(spec), SCHEMA)
    try:
        parse_spec(stored["spec"] if not errors else spec)
        models_ok = True
    except pydantic.ValidationError:
        models_ok = False
    assert models_ok == (not errors), (
        f"schema errors {errors} but models {'accept' if models_ok else 'refuse'}"
    )


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
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(spec=plausible_specs)
async def test_admitted_specs_reconcile_to_ready_or_fail_naming_the_field(
    fuzz_cluster: Cluster, fuzz_operator: tuple[OperatorProcess, Crashes], spec: dict[str, Any]
) -> None:
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
    await eventually(
        lambda: fuzz_cluster.tp(name) is None and not fuzz_cluster.children(name),
        timeout=20,
        message=f"{name} gone with its children",
    )
    _, crashes = fuzz_operator
    assert crashes.seen == [], crashes.seen

"""Generated TranslationPipeline specs for resource fuzzing (issue 6, item 3).

Shared by tests/reliability/test_resource_fuzz.py and benchmarks/bench_chaos_fuzz.py: hypothesis
strategies for specs (valid and invalid mixed) and the check that an error message names the spec
field it refuses, as users need to act on it.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

from livetranslate.crd import openapi_schema
from livetranslate_testing.kube_operator import NS

SCHEMA = openapi_schema()
TP = "livetranslate.io/v1alpha1/translationpipelines"
# Top-level spec fields and the fields of each section: what an error message may name.
SECTIONS = ("sourceLanguage", "targetLanguages", "audio", "translation", "gateway", "scaling")

# ------------------------------------------------------------------------------- strategies

VALID_CODES = ["en", "es", "de", "ca", "gl", "fr", "pt-BR", "zh-Hant-TW", "eo"]
BAD_CODES = ["", "e", "EN", "english", "es_ES", "toolonglanguage", "1a", "es-", "-es", "es es"]
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.text(string.printable, max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["a", "min", "name"]), st.integers(), max_size=2),
)


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

    def section(
        fields: dict[str, st.SearchStrategy[Any]], unknown: bool = True
    ) -> st.SearchStrategy[dict[str, Any]]:
        typos = {"replica": st.integers(0, 3), "enable": st.booleans(), "modle": st.text(max_size=5)}
        return st.fixed_dictionaries({}, optional={**fields, **(typos if unknown else {})})

    def pick(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
        return st.sampled_from(valid + invalid) if junk_values else st.sampled_from(valid)

    replicas = sometimes(section({"min": sometimes(ints(0, 6)), "max": sometimes(ints(0, 6))}, unknown=False))
    languages = pick(VALID_CODES * 2, BAD_CODES)
    fractions = st.floats(-0.1, 1.1, allow_nan=False) if junk_values else st.floats(0.01, 1.0)
    durations = pick(["15s", "1m30s", "250ms", "2h", "5m"], ["soon", "15", "-5s"])
    return section(
        {
            "sourceLanguage": sometimes(pick(["en", "en", "en", "auto", "es", "de"], ["EN", ""])),
            "targetLanguages": sometimes(
                st.lists(languages, min_size=0 if junk_values else 1, max_size=17 if junk_values else 3)
            ),
            "audio": sometimes(
                section(
                    {
                        "model": sometimes(
                            pick(["tiny.en", "base", "/models/whisper-ct2", "s3://bucket/m"], [""])
                        ),
                        "devices": sometimes(
                            st.lists(
                                pick(["npu", "gpu", "cpu"], ["tpu"]),
                                min_size=0 if junk_values else 1,
                                max_size=4 if junk_values else 3,
                            )
                        ),
                        "vad": sometimes(st.booleans()),
                        "diarization": sometimes(
                            section(
                                {"enabled": sometimes(st.booleans()), "maxSpeakers": sometimes(ints(1, 32))}
                            )
                        ),
                        "replicas": replicas,
                    }
                )
            ),
            "translation": sometimes(
                section(
                    {
                        "backend": sometimes(
                            pick(["auto", "auto", "apertium", "vllm", "openai"], ["llamacpp"])
                        ),
                        "model": sometimes(pick(["Qwen/Qwen2.5-7B-Instruct", "gemma"], [""])),
                        "fallbackModels": sometimes(
                            st.lists(
                                st.sampled_from(["Qwen/Qwen2.5-3B-Instruct-AWQ", "x"]),
                                max_size=9 if junk_values else 8,
                            )
                        ),
                        "gpuMemoryUtilization": sometimes(fractions),
                        "maxModelLen": sometimes(ints(256, 1_048_576)),
                        "contextSegments": sometimes(ints(0, 32)),
                        "endpoint": sometimes(st.sampled_from(["http://llm.demo.svc:8000/v1", "not a url"])),
                        "apiKeySecretRef": sometimes(
                            section({"name": pick(["llm-key"], ["Bad_Name"]), "key": pick(["apiKey"], [""])})
                        ),
                        "replicas": replicas,
                    }
                )
            ),
            "gateway": sometimes(
                section(
                    {
                        "replicas": replicas,
                        "maxSessionsPerReplica": sometimes(ints(1, 100_000)),
                        "authSecretRef": sometimes(
                            section({"name": pick(["lt-tokens"], ["Not_A_Name", ""])})
                        ),
                        "redisUrl": sometimes(st.just("redis://redis.demo.svc:6379/0")),
                        "allowedOrigins": sometimes(
                            st.lists(st.sampled_from(["https://example.org", "*"]), max_size=3)
                        ),
                    }
                )
            ),
            "scaling": st.builds(
                lambda extra: {**extra, "enabled": False},
                section(
                    {
                        "interval": sometimes(durations),
                        "scaleDownStabilization": sometimes(durations),
                        "latencySLO": sometimes(
                            section(
                                {
                                    "p95Seconds": sometimes(
                                        st.floats(-1, 61, allow_nan=False)
                                        if junk_values
                                        else st.floats(0.01, 60)
                                    )
                                }
                            )
                        ),
                        "gpuMemory": sometimes(
                            section(
                                {"highWatermark": sometimes(fractions), "lowWatermark": sometimes(fractions)}
                            )
                        ),
                    }
                ),
            ),
        }
    )


spec_strategy = specs(junk_values=True)
plausible_specs = specs(junk_values=False)


def manifest(spec: dict[str, Any], name: str = "fuzz") -> dict[str, Any]:
    return {
        "apiVersion": "livetranslate.io/v1alpha1",
        "kind": "TranslationPipeline",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


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

"""Settings: the operator's resolved pipeline fills what the environment leaves open."""

from __future__ import annotations

from pathlib import Path

import pytest

from livetranslate.api import TranslationPipelineSpec
from livetranslate.config import Endpoints, Placement, ResolvedPipeline
from livetranslate.workloads.translate.settings import TranslateSettings, load_settings


def resolved(**placement: str) -> ResolvedPipeline:
    return ResolvedPipeline(
        name="town-hall",
        spec=TranslationPipelineSpec.model_validate(
            {
                "targetLanguages": ["es", "de"],
                "translation": {
                    "model": "Qwen/Qwen2.5-7B-Instruct",
                    "fallbackModels": ["Qwen/Qwen2.5-3B-Instruct-AWQ"],
                    "contextSegments": 4,
                },
            }
        ),
        placement=Placement(**placement),  # type: ignore[arg-type]
        endpoints=Endpoints(audio="http://a", translation="http://t", gateway="http://g"),
    )


def test_resolved_pipeline_fills_backend_model_and_context() -> None:
    s = TranslateSettings.load(
        resolved(translationBackend="vllm", translationModel="Qwen/Qwen2.5-7B-Instruct")
    )
    assert (s.pipeline, s.backend, s.model) == ("town-hall", "vllm", "Qwen/Qwen2.5-7B-Instruct")
    assert s.fallback_models == ["Qwen/Qwen2.5-3B-Instruct-AWQ"] and s.context_segments == 4
    assert s.target_languages == ["es", "de"] and s.vllm.url == "http://127.0.0.1:8000"


def test_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_TRANSLATE_BACKEND", "openai")
    monkeypatch.setenv("LT_TRANSLATE_OPENAI__URL", "http://llm:8080/v1")
    monkeypatch.setenv("LT_TRANSLATE_OPENAI__API_KEY", "sk-test")
    monkeypatch.setenv("LT_TRANSLATE_BATCH__MAX_BATCH", "4")
    s = TranslateSettings.load(resolved(translationBackend="vllm"))
    assert s.backend == "openai" and s.openai.url == "http://llm:8080/v1" and s.batch.max_batch == 4
    assert s.openai.key() == "sk-test" and "sk-test" not in repr(s)


def test_the_pipeline_file_is_the_channel_and_openai_api_key_the_one_alias(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The env copies the operator's pods used to carry mean nothing now; OPENAI_API_KEY, the name
    OpenAI clients read, still gives the key of a local run."""
    path = tmp_path / "pipeline.json"
    path.write_text(
        resolved(translationBackend="vllm", translationModel="Qwen/Qwen2.5-7B-Instruct").to_json()
    )
    for name, value in {
        "LT_TRANSLATION_BACKEND": "openai",
        "LT_TRANSLATION_MODEL": "m",
        "LT_VLLM_URL": "http://127.0.0.1:9",
        "OPENAI_API_KEY": "k",
    }.items():
        monkeypatch.setenv(name, value)
    s = load_settings(str(path))
    assert (s.backend, s.model, s.vllm.url) == ("vllm", "Qwen/Qwen2.5-7B-Instruct", "http://127.0.0.1:8000")
    assert s.openai.key() == "k"


def test_no_pipeline_file_means_local_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_PIPELINE_CONFIG", "/nonexistent/pipeline.json")
    s = load_settings()
    assert s.backend == "apertium" and s.pipeline == "local"


def test_spec_sleep_and_fallback_endpoints_fill_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TranslationPipelineSpec.model_validate(
        {
            "translation": {
                "sleepAfterIdle": "10m",
                "fallback": [
                    {
                        "endpoint": "https://llm.example.com/v1",
                        "model": "m",
                        "apiKeySecretRef": {"name": "k", "key": "token"},
                    },
                    {"endpoint": "http://llama.demo.svc:8080/v1", "promptStyle": "completion"},
                ],
            }
        }
    )
    r = ResolvedPipeline(
        name="t",
        spec=spec,
        placement=Placement(translationBackend="vllm"),
        endpoints=Endpoints(audio="http://a", translation="http://t", gateway="http://g"),
    )
    s = TranslateSettings.load(r)
    assert s.vllm.sleep_after_idle_s == 600.0
    first, second = s.fallback_endpoints
    assert (first.url, first.model, first.prompt_style) == ("https://llm.example.com/v1", "m", "chat")
    assert str(first.api_key_file) == "/etc/livetranslate/fallback-keys/0/token"
    assert (second.prompt_style, second.api_key_file, second.model) == ("completion", None, None)
    # the pod's environment still wins over the pipeline file
    monkeypatch.setenv("LT_TRANSLATE_VLLM__SLEEP_AFTER_IDLE_S", "0")
    assert TranslateSettings.load(r).vllm.sleep_after_idle_s == 0.0
    # and a fallback that is not an http(s) URL is refused with the spec
    with pytest.raises(ValueError, match="endpoint"):
        TranslationPipelineSpec.model_validate({"translation": {"fallback": [{"endpoint": "llm:8080"}]}})

"""Names and paths the operator builds from a model: safe for Job names and for the volume."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livetranslate.workloads.modelcache.layout import (
    default_format,
    default_source,
    model_dir,
    model_key,
    slug,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_a_repo_id_becomes_a_readable_folder_under_stage_and_format() -> None:
    path = model_dir(Path("/models"), "translation", "Qwen/Qwen2.5-7B-Instruct", "hf")
    assert path.parent.parent == Path("/models/translation") and path.name == "hf"
    assert re.fullmatch(r"qwen-qwen2\.5-7b-instruct-[0-9a-f]{8}", path.parent.name), path
    # names that read the same once lower-cased still get their own folders
    assert slug("Org/Model") != slug("org-model") != slug("org/model")


def test_format_and_stage_cannot_leave_the_cache() -> None:
    with pytest.raises(ValueError, match="format"):
        model_dir(Path("/models"), "audio", "tiny.en", "../x")
    with pytest.raises(ValueError, match="stage"):
        model_dir(Path("/models"), "/etc", "tiny.en", "ct2")
    assert model_dir(Path("/models"), "audio", "../../etc/passwd", "ct2").parent.parent == Path(
        "/models/audio"
    )


@given(st.sampled_from(["audio", "translation"]), st.text(min_size=1, max_size=300))
def test_any_name_gives_a_job_safe_key_and_a_dns_safe_slug(stage: str, name: str) -> None:
    keys = {model_key(stage, name, fmt) for fmt in ("ct2", "openvino-ir", "hf")}
    assert len(keys) == 3
    for key in keys:
        assert len(key) <= 40 and DNS_LABEL.match(key), key
    assert DNS_SUBDOMAIN.match(slug(name)) and len(slug(name)) <= 60, slug(name)


def test_keys_read_like_the_model() -> None:
    assert model_key("audio", "tiny.en", "ct2").startswith("asr-tiny-en-ct2-")
    assert model_key("translation", "Qwen/Qwen2.5-7B-Instruct", "hf").startswith(
        "mt-qwen-qwen2-5-7b-instruct-hf-"
    )


def test_default_format_follows_the_device() -> None:
    assert default_format("audio", "tiny.en", "npu") == "openvino-ir"
    assert default_format("audio", "base", "gpu") == "ct2"
    assert default_format("audio", "base", "cpu") == "ct2"
    assert default_format("translation", "Qwen/Qwen2.5-7B-Instruct", "gpu") == "hf"


def test_default_source_from_the_name() -> None:
    assert default_source("audio", "tiny.en") == "packaged:tiny.en"
    assert default_source("audio", "base") == "packaged:base"
    assert default_source("translation", "Qwen/Qwen2.5-7B-Instruct") == "hf:Qwen/Qwen2.5-7B-Instruct"
    for given_source in ("/data/whisper-small", "./w", "https://models.example/w.tar.gz", "file:///w"):
        assert default_source("audio", given_source) == given_source
    with pytest.raises(ValueError, match="no known source for the audio model 'small'"):
        default_source("audio", "small")


def test_the_operator_facing_module_loads_nothing_heavy() -> None:
    code = (
        "import sys, livetranslate.workloads.modelcache.layout\n"
        "heavy = {'numpy', 'torch', 'faster_whisper', 'huggingface_hub', 'httpx', 'ctranslate2'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_an_ir_of_an_older_converter_is_neither_found_nor_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgrading the converter (revision 1's stateless IR does not load in OpenVINO GenAI) must not
    leave pods on the old IR: a new revision is another directory and another Job, and a manifest
    of another revision fails the check pods and pulls make, saying why."""
    from livetranslate.workloads.modelcache import layout

    old_dir = model_dir(tmp_path, "audio", "tiny.en", "openvino-ir")
    old_key = model_key("audio", "tiny.en", "openvino-ir")
    assert old_dir.name == "openvino-ir-r2" and model_dir(tmp_path, "audio", "tiny.en", "ct2").name == "ct2"
    (old_dir / "model").mkdir(parents=True)
    (old_dir / "model" / "openvino_model.xml").write_text("<net/>")
    files = layout.scan(old_dir)
    manifest = layout.Manifest(
        name="tiny.en",
        stage="audio",
        format="openvino-ir",
        source="packaged:tiny.en",
        bytes=sum(f.bytes for f in files),
        sha256=layout.model_digest("openvino-ir", files),
        files=files,
        pulledAt=layout.now(),
        formatRevision=2,
    )
    layout.write_manifest(old_dir, manifest)
    assert layout.check_model(old_dir, expect=("audio", "tiny.en", "openvino-ir")).formatRevision == 2

    monkeypatch.setitem(layout.FORMAT_REVISIONS, "openvino-ir", 3)
    assert model_dir(tmp_path, "audio", "tiny.en", "openvino-ir").name == "openvino-ir-r3"
    assert model_key("audio", "tiny.en", "openvino-ir") != old_key  # a new Job converts again
    with pytest.raises(layout.ModelNotReady, match="converter revision 2, this version makes revision 3"):
        layout.check_model(old_dir, expect=("audio", "tiny.en", "openvino-ir"))

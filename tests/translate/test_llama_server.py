"""How the llama-server engine is found, started and named, without building or running it."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from livetranslate.workloads.translate import llama_server as ls
from livetranslate.workloads.translate.engines import served_names


def test_model_aliases_count_as_served_names() -> None:
    """llama-server lists one model with its other names under `aliases`; vLLM one entry per name."""
    llama = {
        "object": "list",
        "data": [{"id": "gemma-270m", "aliases": ["gemma-270m", "gemma-270m-small"], "object": "model"}],
    }
    assert served_names(llama) == ["gemma-270m", "gemma-270m-small"]
    vllm = {"data": [{"id": "Qwen/Qwen2.5-7B-Instruct"}, {"id": "qwen"}]}
    assert served_names(vllm) == ["Qwen/Qwen2.5-7B-Instruct", "qwen"]
    assert served_names({"data": "garbage"}) == [] and served_names(None) == []


def test_server_command_batches_on_loopback(tmp_path: Path) -> None:
    cmd = ls.server_command(
        tmp_path / "llama-server",
        tmp_path / "m.gguf",
        port=9000,
        aliases=["a", "b"],
        parallel=16,
        ctx_size=8192,
        threads=2,
    )
    joined = " ".join(cmd)
    assert "--host 127.0.0.1" in joined and "--port 9000" in joined
    assert "--parallel 16" in joined and "--cont-batching" in cmd and "--ctx-size 8192" in joined
    assert "--no-kv-unified" in cmd  # a KV cache per slot: batched steps attend only to their own
    default = ls.server_command(
        tmp_path / "llama-server", tmp_path / "m.gguf", port=9000, parallel=8, kv_unified=True
    )
    assert f"--ctx-size {8 * ls.CTX_PER_SLOT}" in " ".join(default) and "--kv-unified" in default
    assert "--alias a,b" in joined and "--metrics" in cmd
    assert "--n-gpu-layers" not in cmd and "--backend-sampling" not in cmd  # a CPU engine unless asked
    gpu = ls.server_command(tmp_path / "llama-server", tmp_path / "m.gguf", port=9000, gpu_layers=999)
    assert gpu[gpu.index("--n-gpu-layers") + 1] == "999"
    assert "--backend-sampling" in gpu  # on a GPU the host-side sampler is the per-sequence cost
    host = ls.server_command(
        tmp_path / "llama-server", tmp_path / "m.gguf", port=9000, gpu_layers=999, backend_sampling=False
    )
    assert "--backend-sampling" not in host


def test_explicit_binary_wins_and_must_be_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv(ls.BINARY_ENV, str(binary))
    assert ls.find_binary() is None  # not executable: refused, not run and failed later
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    assert ls.find_binary() == binary


def test_cache_is_keyed_by_version_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ls.BINARY_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = ls.cached_binary()
    assert path.is_relative_to(tmp_path / "livetranslate" / "llama-server")
    assert path.parent.name.startswith(ls.SOURCE_VERSION + "-")
    assert ls.find_binary() is None
    monkeypatch.setattr(ls, "BUILD_FLAGS", (*ls.BUILD_FLAGS, "-DGGML_AVX512=ON"))
    assert ls.cached_binary() != path  # other flags, another binary: never a stale one reused


def test_an_sdist_without_the_server_sources_is_a_clear_error(tmp_path: Path) -> None:
    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = b"cmake_minimum_required(VERSION 3.14)\n"
        info = tarfile.TarInfo("llama_cpp_python-0.3.36/vendor/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ls.BuildError, match="no tools/server"):
        ls.extract_llama_cpp(sdist, tmp_path / "src")

"""``livetranslate convert-openvino``: faster-whisper (CTranslate2) weights -> OpenVINO IR.

NPU and Intel GPU nodes run Whisper through OpenVINO GenAI, which needs an OpenVINO IR; the only
Whisper weights reachable offline are CTranslate2's. CTranslate2's ``model.bin`` is a flat list
of named tensors, so it can be read back into a transformers Whisper checkpoint (the fused
query/key/value projections split apart again), which optimum-intel exports to IR with int8
weights. The default (stateful) export is what OpenVINO GenAI loads on every device, the NPU
included (its static pipeline makes the decoder stateless itself). ``--stateless`` exports the
decoder without internal KV-cache state for other runtimes; GenAI 2026.4 cannot load that export.

Needs the ``convert`` extra (optimum-intel, transformers; torch on its CPU build). Run offline,
once per model: the output directory is what ``spec.audio.model`` (or LT_AUDIO_MODEL) names.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from livetranslate.logs import configure_logging
from livetranslate.workloads.audio.engines import packaged_model_dir

log = logging.getLogger(__name__)

# CTranslate2 DataType ids (include/ctranslate2/types.h).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BF16 = 5


def _read_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n).rstrip(b"\0").decode()


def read_ct2_model(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """All variables of a CTranslate2 model.bin (format versions 5 and 6) as float32/int arrays.

    int8-quantised weights come with ``<name>_scale`` (q = round(w * scale)); they are
    dequantised here so the checkpoint is plain float.
    """
    variables: dict[str, np.ndarray] = {}
    with path.open("rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 model format {version} is too old (need >= 5)")
        spec = _read_string(f)
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _read_string(f)
            rank = f.read(1)[0]
            dims = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
            dtype_id = f.read(1)[0]
            (nbytes,) = struct.unpack("<I", f.read(4))
            raw = f.read(nbytes)
            if dtype_id == _BF16:
                arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dtype_id in _CT2_DTYPES:
                arr = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_id])
            else:
                raise ValueError(f"{path}: variable {name} has unsupported type id {dtype_id}")
            variables[name] = arr.reshape(dims) if dims else arr.reshape(())
        (aliases,) = struct.unpack("<I", f.read(4))
        for _ in range(aliases):
            alias, target = _read_string(f), _read_string(f)
            variables[alias] = variables[target]
    for name in [n for n in variables if n.endswith("_scale")]:
        base = name.removesuffix("_scale")
        if base in variables and variables[base].dtype == np.int8:
            scale = variables.pop(name).astype(np.float32)
            q = variables[base].astype(np.float32)
            variables[base] = q / (scale.reshape(-1, *([1] * (q.ndim - 1))) if scale.ndim else scale)
    return spec, variables


def _linear(
    out: dict[str, Any], prefix: str, src: dict[str, np.ndarray], name: str, bias: bool = True
) -> None:
    out[f"{prefix}.weight"] = src[f"{name}/weight"]
    if bias and f"{name}/bias" in src:
        out[f"{prefix}.bias"] = src[f"{name}/bias"]


def _norm(out: dict[str, Any], prefix: str, src: dict[str, np.ndarray], name: str) -> None:
    out[f"{prefix}.weight"] = src[f"{name}/gamma"]
    out[f"{prefix}.bias"] = src[f"{name}/beta"]


def _split(w: np.ndarray, parts: int) -> list[np.ndarray]:
    return list(np.split(w, parts, axis=0))


def to_transformers_state(src: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Map CTranslate2 Whisper variables to transformers' WhisperForConditionalGeneration names."""
    out: dict[str, Any] = {}
    enc_layers = sum(1 for k in src if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    dec_layers = sum(1 for k in src if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight"))
    for side in ("encoder", "decoder"):
        for conv in ("conv1", "conv2"):
            if side == "encoder":
                _linear(out, f"model.encoder.{conv}", src, f"encoder/{conv}")
        out[f"model.{side}.embed_positions.weight"] = src[f"{side}/position_encodings/encodings"]
        _norm(out, f"model.{side}.layer_norm", src, f"{side}/layer_norm")
    out["model.decoder.embed_tokens.weight"] = src["decoder/embeddings/weight"]
    for i in range(enc_layers):
        p, s = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        _self_attention(out, f"{p}.self_attn", src, f"{s}/self_attention")
        _norm(out, f"{p}.self_attn_layer_norm", src, f"{s}/self_attention/layer_norm")
        _ffn(out, p, src, s)
    for i in range(dec_layers):
        p, s = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        _self_attention(out, f"{p}.self_attn", src, f"{s}/self_attention")
        _norm(out, f"{p}.self_attn_layer_norm", src, f"{s}/self_attention/layer_norm")
        _linear(out, f"{p}.encoder_attn.q_proj", src, f"{s}/attention/linear_0")
        k, v = _split(src[f"{s}/attention/linear_1/weight"], 2)
        out[f"{p}.encoder_attn.k_proj.weight"], out[f"{p}.encoder_attn.v_proj.weight"] = k, v
        out[f"{p}.encoder_attn.v_proj.bias"] = _split(src[f"{s}/attention/linear_1/bias"], 2)[1]
        _linear(out, f"{p}.encoder_attn.out_proj", src, f"{s}/attention/linear_2")
        _norm(out, f"{p}.encoder_attn_layer_norm", src, f"{s}/attention/layer_norm")
        _ffn(out, p, src, s)
    d_model = int(src["decoder/embeddings/weight"].shape[1])
    dims: dict[str, Any] = {
        "d_model": d_model,
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": int(src["encoder/num_heads"]),
        "decoder_attention_heads": int(src["decoder/num_heads"]),
        "encoder_ffn_dim": int(src["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(src["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "vocab_size": int(src["decoder/embeddings/weight"].shape[0]),
        "num_mel_bins": int(src["encoder/conv1/weight"].shape[1]),
        "max_source_positions": int(src["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(src["decoder/position_encodings/encodings"].shape[0]),
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}, dims


def _self_attention(out: dict[str, Any], prefix: str, src: dict[str, np.ndarray], name: str) -> None:
    q, k, v = _split(src[f"{name}/linear_0/weight"], 3)
    qb, _kb, vb = _split(src[f"{name}/linear_0/bias"], 3)  # Whisper's key projection has no bias
    out[f"{prefix}.q_proj.weight"], out[f"{prefix}.q_proj.bias"] = q, qb
    out[f"{prefix}.k_proj.weight"] = k
    out[f"{prefix}.v_proj.weight"], out[f"{prefix}.v_proj.bias"] = v, vb
    _linear(out, f"{prefix}.out_proj", src, f"{name}/linear_1")


def _ffn(out: dict[str, Any], prefix: str, src: dict[str, np.ndarray], name: str) -> None:
    _linear(out, f"{prefix}.fc1", src, f"{name}/ffn/linear_0")
    _linear(out, f"{prefix}.fc2", src, f"{name}/ffn/linear_1")
    _norm(out, f"{prefix}.final_layer_norm", src, f"{name}/ffn/layer_norm")


def write_checkpoint(ct2_dir: Path, out_dir: Path) -> Path:
    """A transformers Whisper checkpoint (weights, config, tokenizer, feature extractor)."""
    import torch
    from transformers import (  # type: ignore[attr-defined]  # lazy names mypy cannot see
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    spec, variables = read_ct2_model(ct2_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{ct2_dir}: a {spec} model, not Whisper")
    state, dims = to_transformers_state(variables)
    ct2_config = (
        json.loads((ct2_dir / "config.json").read_text()) if (ct2_dir / "config.json").exists() else {}
    )
    multilingual = dims["vocab_size"] >= 51865
    eot = 50257 if multilingual else 50256
    sot = eot + 1
    config_kwargs: dict[str, Any] = {
        **dims,
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "bos_token_id": eot,
        "pad_token_id": eot,
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", [220, eot]),
        "tie_word_embeddings": True,
    }
    config = WhisperConfig(**config_kwargs)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
    )
    missing = [m for m in missing if m != "proj_out.weight"]  # tied to the token embeddings
    if missing or unexpected:
        raise ValueError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(ct2_dir / "tokenizer.json"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(out_dir)
    no_timestamps = sot + (100 if multilingual else 0) + 105  # <|notimestamps|>
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        bos_token_id=eot,
        pad_token_id=eot,
        max_length=dims["max_target_positions"],
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        is_multilingual=multilingual,
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>") or no_timestamps,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        alignment_heads=ct2_config.get("alignment_heads", []),
        task_to_id={
            "transcribe": tokenizer.convert_tokens_to_ids("<|transcribe|>"),
            "translate": tokenizer.convert_tokens_to_ids("<|translate|>"),
        },
        lang_to_id={}
        if not multilingual
        else {
            t: tokenizer.convert_tokens_to_ids(t)
            for t in tokenizer.additional_special_tokens
            if len(t) <= 7 and t.startswith("<|") and t[2:-2].isalpha()
        },
        forced_decoder_ids=None,
    )
    gen.save_pretrained(out_dir)
    return out_dir


def export_openvino(checkpoint: Path, output: Path, weight_format: str, stateless: bool) -> None:
    cli = Path(sys.executable).with_name("optimum-cli")
    cmd = [
        str(cli) if cli.exists() else "optimum-cli",
        "export",
        "openvino",
        "--model",
        str(checkpoint),
        "--task",
        "automatic-speech-recognition-with-past",
        "--weight-format",
        weight_format,
    ]
    if stateless:
        cmd.append("--disable-stateful")
    cmd.append(str(output))
    log.info("exporting to OpenVINO IR", extra={"fields": {"cmd": " ".join(cmd)}})
    subprocess.run(cmd, check=True)


def convert(
    model: Path,
    output: Path,
    weight_format: str = "int8",
    stateless: bool = False,
    keep_checkpoint: Path | None = None,
) -> Path:
    with tempfile.TemporaryDirectory(prefix="lt-whisper-") as tmp:
        checkpoint = write_checkpoint(model, keep_checkpoint or Path(tmp) / "checkpoint")
        export_openvino(checkpoint, output, weight_format, stateless)
    if not (output / "openvino_encoder_model.xml").exists():
        raise RuntimeError(f"export finished but {output} holds no OpenVINO encoder")
    return output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="livetranslate convert-openvino",
        description="Convert Whisper weights for faster-whisper (CTranslate2) into an OpenVINO IR that "
        "the audio service runs on an Intel NPU. Runs on OpenVINO's CPU device; no NPU needed.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="CTranslate2 Whisper directory (default: the packaged tiny.en)",
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="directory for the OpenVINO IR")
    parser.add_argument(
        "--weight-format",
        default="int8",
        choices=["fp32", "fp16", "int8", "int4"],
        help="weight precision of the IR (default int8)",
    )
    parser.add_argument(
        "--stateless",
        action="store_true",
        help="decoder without internal state (for runtimes other than OpenVINO GenAI, which cannot load it)",
    )
    parser.add_argument(
        "--keep-checkpoint",
        type=Path,
        default=None,
        help="also keep the intermediate transformers checkpoint here",
    )
    args = parser.parse_args(argv)
    configure_logging(component="convert-openvino")
    if shutil.which("optimum-cli") is None and not Path(sys.executable).with_name("optimum-cli").exists():
        parser.error(
            "optimum-cli not found: install the convert extra (pip install 'livetranslate[convert]')"
        )
    model = args.model or packaged_model_dir()
    if not (model / "model.bin").is_file():
        print(
            f"livetranslate convert-openvino: {model} holds no CTranslate2 Whisper model (no model.bin)",
            file=sys.stderr,
        )
        return 2
    try:
        out = convert(model, args.output, args.weight_format, args.stateless, args.keep_checkpoint)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"livetranslate convert-openvino: {exc}", file=sys.stderr)
        return 1
    log.info("converted", extra={"fields": {"output": str(out)}})
    return 0

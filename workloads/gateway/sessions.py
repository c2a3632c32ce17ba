"""Session state that outlives a connection: in memory for one replica, in Redis for several.

What is kept per session: the next segment number, the session seconds of audio already committed
(the ``timeOffset`` of the next audio stream), the languages, and a bounded log of final segments
with their translations and delivery flags. The log is what makes resume exact:

* A final is written to the log (``finalSent=False``) before it is queued to the client, and
  marked sent once the WebSocket write completed; a translation likewise.
* A resuming client names the last final it received (``lastSegmentId``; ``livetranslate stream``
  and the captions page do). Every logged final after it is sent again with its translations,
  none before it. A client that does not say falls back on the gateway's ``finalSent`` flags,
  which can miss frames that were written to a connection that then died.
* Only one gateway holds a session at a time: an owner lease (``SET NX PX`` in Redis) is taken on
  start and released after the disconnect flush, so a client that reconnects to another replica
  while the first is still finalising its last words waits for those finals instead of racing.
* A session handed over by a draining replica (drain.py) also leaves its audio tail: the audio
  after its last final, which the audio service heard but did not finalise. The next owner sends
  it to its own audio stream first, so nothing is cut or lost (``put_tail``/``take_tail``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from livetranslate.protocol import SpeakerMemory

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a Redis client raises when the server is away: its own errors (connection, timeout, a
# replica still loading its data) and the socket's.
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)


STORE_RETRY_SECONDS = 1.0  # how often an unreachable store is tried again


def max_deferred_writes(max_segments: int) -> int:
    """Writes kept while Redis is away: a full log's worth for a few hundred sessions (about
    1 KB each), beyond which the oldest go (their sessions then resume from less)."""
    return 200 * max_segments


class SessionState(BaseModel):
    sessionId: str
    nextSegment: int = 0
    nextSentence: int = 0  # the open sentence's id (or the next one's): ids move on as they close
    audioSeconds: float = 0.0
    sourceLanguage: str = "en"
    # With sourceLanguage auto: the spoken language the audio service settled on (hysteresis),
    # handed to the session's next audio stream so a handover does not detect it afresh.
    spokenLanguage: str | None = None
    # With diarization: the speakers (labels and voices) the audio service knows for the session,
    # handed to its next audio stream so a voice keeps its label across a handover. Voice
    # embeddings identify a speaker: they live as long as the session's state and no longer.
    speakers: SpeakerMemory | None = None
    targetLanguages: list[str] = Field(default_factory=list)
    createdAt: float = Field(default_factory=time.time)
    updatedAt: float = Field(default_factory=time.time)


class SegmentRecord(BaseModel):
    segmentId: int
    text: str
    start: float
    end: float
    speaker: str | None = None
    language: str | None = None  # detected spoken language (sessions with sourceLanguage auto)
    translations: dict[str, str] = Field(default_factory=dict)
    translationErrors: dict[str, str] = Field(default_factory=dict)
    finalSent: bool = False
    translationsSent: list[str] = Field(default_factory=list)
    # Set on the final that closes a sentence: the sentence covers the finals since the previous
    # closing one, and ``translations`` (with their flags) are the whole sentence's.
    sentenceId: int | None = None


class AudioTail(BaseModel):
    """PCM16 at 16 kHz from session second ``start``: heard by the audio service, not finalised."""

    start: float
    pcm: bytes

    def dump(self) -> str:
        return json.dumps({"start": self.start, "pcm": base64.b64encode(self.pcm).decode()})

    @classmethod
    def load(cls, raw: str) -> AudioTail:
        data = json.loads(raw)
        return cls(start=float(data["start"]), pcm=base64.b64decode(data["pcm"]))


class SessionStore(Protocol):
    """Where session state lives. Every method is safe to call from many connections at once."""

    async def load(self, session_id: str) -> SessionState | None: ...
    async def save(self, state: SessionState) -> None: ...
    async def delete(self, session_id: str) -> None: ...
    async def put_segment(self, session_id: str, segment: SegmentRecord) -> None: ...
    async def segments(self, session_id: str) -> list[SegmentRecord]: ...
    async def claim(self, session_id: str, owner: str, wait_seconds: float) -> bool: ...
    async def refresh(self, session_id: str, owner: str) -> bool: ...
    async def release(self, session_id: str, owner: str) -> None: ...
    async def take_over(self, session_id: str, owner: str) -> None: ...
    async def put_tail(self, session_id: str, tail: AudioTail) -> None: ...
    async def take_tail(self, session_id: str) -> AudioTail | None: ...
    async def ping(self) -> bool: ...
    async def settled(self, timeout: float) -> bool: ...
    async def close(self) -> None: ...


LEASE_SECONDS = 20.0


class MemorySessionStore:
    """One replica's sessions. Entries expire ``ttl`` seconds after their last update."""

    def __init__(self, ttl_seconds: float = 3600, max_segments: int = 512) -> None:
        self._ttl = ttl_seconds
        self._max_segments = max_segments
        self._states: dict[str, SessionState] = {}
        # The log holds each segment as its JSON, as Redis does: one str per segment, which the
        # cyclic garbage collector never visits. As models (4 tracked objects each) a full log of
        # 1,000 sessions was 2 million objects and a 0.5 s pause on every full collection, which
        # happen while logs grow; dumping also costs less than copying the model (2.0 us against
        # 3.6), and the log is read back only when a session resumes.
        self._segments: dict[str, dict[int, str]] = {}
        self._owners: dict[str, tuple[str, float]] = {}
        self._tails: dict[str, AudioTail] = {}
        self._released = asyncio.Condition()
        self._swept_at = time.monotonic()

    def _expire(self) -> None:
        # A sweep is O(sessions): at most once a minute, not on every session start (10,000
        # sessions starting would otherwise cost 10,000 sweeps). load() checks its own entry.
        if time.monotonic() - self._swept_at < min(60.0, self._ttl):
            return
        self._swept_at = time.monotonic()
        cutoff = time.time() - self._ttl
        for sid in [s for s, st in self._states.items() if st.updatedAt < cutoff]:
            self._states.pop(sid, None)
            self._segments.pop(sid, None)
            self._tails.pop(sid, None)

    async def load(self, session_id: str) -> SessionState | None:
        self._expire()
        state = self._states.get(session_id)
        if state is None or state.updatedAt < time.time() - self._ttl:
            return None
        return _copy_state(state)

    async def save(self, state: SessionState) -> None:
        state.updatedAt = time.time()
        self._states[state.sessionId] = _copy_state(state)

    async def delete(self, session_id: str) -> None:
        self._states.pop(session_id, None)
        self._segments.pop(session_id, None)
        self._tails.pop(session_id, None)

    async def put_segment(self, session_id: str, segment: SegmentRecord) -> None:
        log = self._segments.setdefault(session_id, {})
        log[segment.segmentId] = segment.model_dump_json()
        log.pop(segment.segmentId - self._max_segments, None)  # segment ids are consecutive

    async def segments(self, session_id: str) -> list[SegmentRecord]:
        log = self._segments.get(session_id, {})
        return [SegmentRecord.model_validate_json(log[k]) for k in sorted(log)]

    async def claim(self, session_id: str, owner: str, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        async with self._released:
            while True:
                holder = self._owners.get(session_id)
                if holder is None or holder[0] == owner or holder[1] < time.monotonic():
                    self._owners[session_id] = (owner, time.monotonic() + LEASE_SECONDS)
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._released.wait(), min(remaining, 0.5))
                except TimeoutError:
                    pass

    async def refresh(self, session_id: str, owner: str) -> bool:
        """Extend the lease; False when someone else holds it now."""
        holder = self._owners.get(session_id)
        if holder and holder[0] == owner:
            self._owners[session_id] = (owner, time.monotonic() + LEASE_SECONDS)
            return True
        return holder is None

    async def release(self, session_id: str, owner: str) -> None:
        async with self._released:
            holder = self._owners.get(session_id)
            if holder and holder[0] == owner:
                del self._owners[session_id]
            self._released.notify_all()

    async def take_over(self, session_id: str, owner: str) -> None:
        """Take a lease whose holder did not let go in time (a replica that died mid-flush)."""
        self._owners[session_id] = (owner, time.monotonic() + LEASE_SECONDS)

    async def put_tail(self, session_id: str, tail: AudioTail) -> None:
        self._tails[session_id] = tail

    async def take_tail(self, session_id: str) -> AudioTail | None:
        return self._tails.pop(session_id, None)

    async def ping(self) -> bool:
        return True

    async def settled(self, timeout: float) -> bool:
        return True

    async def close(self) -> None:
        return None


def _copy_state(state: SessionState) -> SessionState:
    """A copy sharing nothing mutable with ``state``: its fields are scalars and one list of str.

    Written with every final, so not ``model_copy(deep=True)``: its generic deepcopy measured
    about three times the CPU of this copy. One state per session, so kept as a model. (The
    speakers are shared: a session replaces them whole, never changes them in place.)
    """
    return state.model_copy(update={"targetLanguages": list(state.targetLanguages)})


# Release only if we still own it: a lease that expired and was taken over stays with its new owner.
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_REFRESH_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class StoreUnavailable(RuntimeError):
    """The session store did not answer a read (Redis down or unreachable)."""


class RedisSessionStore:
    """Sessions shared by every gateway replica of a pipeline.

    Keys (all with the session TTL, refreshed on write): ``lt:<pipeline>:s:<id>`` (state JSON),
    ``...:seg`` (hash segmentId -> segment JSON), ``...:owner`` (lease, ``LEASE_SECONDS``),
    ``...:tail`` (a handed-over session's unfinalised audio, read once by the next owner).

    Redis going away (a restart, a failover, a partition) must not end live sessions: their
    captions need nothing from it. A write that fails is kept here, the newest per key, and
    written with the next write that gets through (or the next ``ping`` that does), so the
    sessions are resumable again once Redis is back; a lease refresh that fails counts as held
    (no other replica can take it while Redis is away either). Reads, which a session start
    needs, raise ``StoreUnavailable``: the caller decides (a new session starts without the
    store, a resume cannot).
    """

    def __init__(
        self,
        url: str,
        pipeline: str,
        ttl_seconds: int = 3600,
        max_segments: int = 512,
        errors: Callable[[str], None] | None = None,
    ) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            health_check_interval=30,
        )
        self._prefix = f"lt:{pipeline}:s:"
        self._ttl = int(ttl_seconds)
        self._max_segments = max_segments
        self._release = self._redis.register_script(_RELEASE_LUA)
        self._refresh = self._redis.register_script(_REFRESH_LUA)
        self._errors = errors or (lambda operation: None)
        # Writes Redis did not take, the newest per key, in the order they were first deferred:
        # (kind, session, segment id) -> the write. Bounded: a full log's worth per session is
        # kept by the segment ids themselves, and the oldest writes go first past the bound.
        self._deferred: dict[tuple[str, str, int], Callable[[Pipeline], None]] = {}
        self._max_deferred = max_deferred_writes(max_segments)
        self._down_since: float | None = None
        self._retry: asyncio.Task[None] | None = None

    def _key(self, session_id: str, suffix: str = "") -> str:
        return f"{self._prefix}{session_id}{suffix}"

    @property
    def deferred_writes(self) -> int:
        """Writes waiting for Redis to come back."""
        return len(self._deferred)

    @property
    def available(self) -> bool:
        """False from a call Redis failed until a retry gets through (every ``STORE_RETRY_SECONDS``)."""
        return self._down_since is None

    def _unreachable(self, operation: str, exc: Exception) -> None:
        self._errors(operation)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "session store unreachable: live sessions go on, their writes wait for it",
                extra={"fields": {"operation": operation, "error": str(exc) or type(exc).__name__}},
            )
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(self._retry_until_back())

    async def _retry_until_back(self) -> None:
        """While Redis is away no session waits on it: this task alone tries it again."""
        while self._down_since is not None:
            await asyncio.sleep(STORE_RETRY_SECONDS)
            try:
                await self._redis.ping()
            except STORE_ERRORS as exc:
                log.debug("session store still unreachable: %s", exc)
                continue
            if await self._flush("retry"):
                outage = time.monotonic() - self._down_since
                self._down_since = None
                log.info(
                    "session store reachable again; deferred writes written",
                    extra={"fields": {"outageSeconds": round(outage, 1)}},
                )

    async def _read(self, operation: str, read: Callable[[], Awaitable[T]]) -> T:
        if self._down_since is not None:
            away = time.monotonic() - self._down_since
            raise StoreUnavailable(f"session store unreachable for {away:.0f} s")
        try:
            return await read()
        except STORE_ERRORS as exc:
            self._unreachable(operation, exc)
            raise StoreUnavailable(f"session store unreachable ({str(exc) or type(exc).__name__})") from exc

    async def _write(
        self, operation: str, key: tuple[str, str, int], write: Callable[[Pipeline], None]
    ) -> None:
        """Run ``write`` (queued on a transaction); if Redis does not take it, or is known to be
        away, keep it for the retry (replacing an older write of the same key)."""
        self._deferred.pop(key, None)
        self._deferred[key] = write
        while len(self._deferred) > self._max_deferred:
            del self._deferred[next(iter(self._deferred))]
        if self._down_since is None:
            await self._flush(operation)

    async def _flush(self, operation: str) -> bool:
        """Write every pending write in one transaction; True when Redis took them."""
        if not self._deferred:
            return True
        # Taken out while in flight, so concurrent writers do not send them again.
        writes, self._deferred = self._deferred, {}
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for write in writes.values():
                    write(pipe)
                await pipe.execute()
        except STORE_ERRORS as exc:
            # Back, oldest first, unless a newer write of the same key came meanwhile.
            kept = {k: w for k, w in writes.items() if k not in self._deferred}
            self._deferred = {**kept, **self._deferred}
            self._unreachable(operation, exc)
            return False
        return True

    async def load(self, session_id: str) -> SessionState | None:
        raw = await self._read("load", lambda: self._redis.get(self._key(session_id)))
        return SessionState.model_validate_json(raw) if raw else None

    async def save(self, state: SessionState) -> None:
        state.updatedAt = time.time()
        sid, raw = state.sessionId, state.model_dump_json()

        def write(pipe: Pipeline) -> None:
            pipe.set(self._key(sid), raw, ex=self._ttl)
            pipe.expire(self._key(sid, ":seg"), self._ttl)

        await self._write("save", ("state", sid, 0), write)

    async def delete(self, session_id: str) -> None:
        for key in [k for k in self._deferred if k[1] == session_id]:
            del self._deferred[key]  # nothing of an ended session needs writing any more

        def write(pipe: Pipeline) -> None:
            pipe.delete(self._key(session_id), self._key(session_id, ":seg"), self._key(session_id, ":tail"))

        await self._write("delete", ("delete", session_id, 0), write)

    async def put_segment(self, session_id: str, segment: SegmentRecord) -> None:
        key, seg_id, raw = self._key(session_id, ":seg"), segment.segmentId, segment.model_dump_json()

        def write(pipe: Pipeline) -> None:
            pipe.hset(key, str(seg_id), raw)
            if seg_id - self._max_segments >= 0:
                pipe.hdel(key, str(seg_id - self._max_segments))
            pipe.expire(key, self._ttl)

        await self._write("put_segment", ("segment", session_id, seg_id), write)

    async def segments(self, session_id: str) -> list[SegmentRecord]:
        raw = await self._read("segments", lambda: self._redis.hgetall(self._key(session_id, ":seg")))
        segs = [SegmentRecord.model_validate_json(v) for v in raw.values()]
        return sorted(segs, key=lambda s: s.segmentId)

    async def claim(self, session_id: str, owner: str, wait_seconds: float) -> bool:
        key = self._key(session_id, ":owner")
        deadline = time.monotonic() + wait_seconds
        lease_ms = int(LEASE_SECONDS * 1000)
        while True:
            if await self._read("claim", lambda: self._redis.set(key, owner, nx=True, px=lease_ms)):
                return True
            if await self._read("claim", lambda: self._redis.get(key)) == owner:
                await self._read("claim", lambda: self._redis.pexpire(key, lease_ms))
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def refresh(self, session_id: str, owner: str) -> bool:
        """Extend the lease; False when someone else holds it now. Redis away: held (no other
        replica can take it meanwhile), and the deferred writes are tried again."""
        if self._down_since is not None:
            return True
        key, lease_ms = self._key(session_id, ":owner"), int(LEASE_SECONDS * 1000)
        try:
            if await self._refresh(keys=[key], args=[owner, lease_ms]):
                return True
            return bool(await self._redis.set(key, owner, nx=True, px=lease_ms))
        except STORE_ERRORS as exc:
            self._unreachable("refresh", exc)
            return True

    async def release(self, session_id: str, owner: str) -> None:
        if self._down_since is not None:
            return  # the lease runs out on its own
        try:
            await self._release(keys=[self._key(session_id, ":owner")], args=[owner])
        except STORE_ERRORS as exc:
            self._unreachable("release", exc)

    async def take_over(self, session_id: str, owner: str) -> None:
        """Take a lease whose holder did not let go in time (a replica that died mid-flush)."""
        key, lease_ms = self._key(session_id, ":owner"), int(LEASE_SECONDS * 1000)
        await self._read("take_over", lambda: self._redis.set(key, owner, px=lease_ms))

    async def put_tail(self, session_id: str, tail: AudioTail) -> None:
        key, raw = self._key(session_id, ":tail"), tail.dump()

        def write(pipe: Pipeline) -> None:
            pipe.set(key, raw, ex=self._ttl)

        await self._write("put_tail", ("tail", session_id, 0), write)

    async def take_tail(self, session_id: str) -> AudioTail | None:
        async def take() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._key(session_id, ":tail"))
                pipe.delete(self._key(session_id, ":tail"))
                raw, _ = await pipe.execute()
            return raw

        raw = await self._read("take_tail", take)
        return AudioTail.load(raw) if raw else None

    async def ping(self) -> bool:
        if self._down_since is not None:
            return False  # the retry task says when it is back
        try:
            return bool(await self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "not reachable" for /readyz
            return False

    async def settled(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until Redis answers and no write waits for it; False if
        it did not happen in time. A draining replica hands its sessions over, and exits, only
        once their state is where the next replica reads it."""
        deadline = time.monotonic() + timeout
        while self._down_since is not None or self._deferred:
            if time.monotonic() >= deadline:
                return False
            if self._down_since is None:
                await self._flush("settle")
            await asyncio.sleep(0.1)
        return True

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        await self._redis.aclose()

"""Translation engines behind one small interface: any OpenAI-compatible server.

An engine turns a micro-batch of jobs (same source and target language) into one outcome per job:
the raw text, or the exception that job failed with. It never applies quality checks (the service
does) and never retries (the service decides between retry and fallback). vLLM in the same pod
(its metrics and sleep mode) is ``vllm.py``, the Apertium engine ``apertium.py``, and what the
servers' /metrics say ``engine_metrics.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import httpx
from cachetools import LRUCache

from livetranslate.capabilities import language_name

from .engine_metrics import LLAMACPP_STATS, engine_stats
from .quality import Job, Prompt, build_packed_prompt, build_prompt, parse_packed
from .settings import OpenAISettings

log = logging.getLogger(__name__)


class EngineError(Exception):
    """A failure of the engine itself (down, timeout, HTTP error, unreadable reply)."""

    code = "upstream_unavailable"


class GarbageError(EngineError):
    code = "translation_failed"


class UnsupportedError(Exception):
    code = "unsupported_language"


@dataclass
class Output:
    text: str
    truncated: bool = False
    packed_miss: bool = False  # a packed batch skipped this line; it was re-asked on its own
    via: str | None = None  # translated through this pivot language (two offline pairs chained)


@dataclass
class EngineState:
    ready: bool = False
    detail: str = "starting"
    model: str | None = None
    sleeping: bool = False
    # Down but coming back by itself within seconds (a child process restarting): requests wait
    # for it instead of being refused.
    recovering: bool = False
    stats: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """What the batcher and the service need from a backend."""

    name: str = "engine"
    batch_mode: str = "list"
    # Batches worth having in flight at once (None: as many as the settings allow). An engine that
    # works through one request at a time gains nothing from more, and its batches stay smaller.
    max_inflight: int | None = None

    def __init__(self) -> None:
        self.state = EngineState()

    async def start(self) -> None:
        """Connect or spawn what the engine needs; failures show in ``state``, never raise."""

    async def close(self) -> None:
        """Release processes and connections."""

    def unsupported(self, source: str, target: str) -> str | None:
        """Why this engine cannot translate source->target (None = it can)."""
        for code in (source, target):
            if language_name(code) is None:
                return f"unknown language {code!r}"
        return None

    @abstractmethod
    async def translate(
        self, jobs: list[Job], model: str | None, *, attempt: int = 0
    ) -> list[Output | BaseException]:
        """One outcome per job, in order."""

    async def check(self) -> EngineState:
        """Refresh and return the readiness state (called by /readyz and a background poller)."""
        return self.state

    def note_activity(self) -> None:
        """Called for every batch; engines that sleep when idle reset their timer here."""


def served_names(models: Any) -> list[str]:
    """Model names a /v1/models reply says the server answers to, its ids first.

    llama-server lists one entry per model and its other names under ``aliases`` (``--alias a,b``);
    vLLM and hosted APIs list one entry per name. Both count as served for a model switch.
    """
    data = models.get("data", []) if isinstance(models, dict) else []
    names: list[str] = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    for m in data:
        aliases = m.get("aliases") if isinstance(m, dict) else None
        if isinstance(aliases, list):
            names += [a for a in aliases if isinstance(a, str) and a not in names]
    return names


class SlotMap:
    """Which llama-server slot each (session, target language) stream of prompts uses.

    A new stream takes the slot with the fewest streams on it (the lowest index on a tie), so up
    to ``slots`` streams each own a slot and more share them evenly; the least recently used
    stream is forgotten once ``4 * slots`` are known (an ended session sends nothing more).
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a server has at least one slot")
        self.slots = slots
        self._load = [0] * slots
        self._of = _Streams(4 * slots, self._load)

    def slot(self, session_id: str, target: str) -> int:
        key = (session_id, target)
        known = self._of.get(key)  # a hit counts as a use
        if known is not None:
            return int(known)
        if self._of.currsize >= self._of.maxsize:
            self._of.popitem()  # forget the least recently used stream, freeing its slot
        chosen = min(range(self.slots), key=lambda i: (self._load[i], i))
        self._of[key] = chosen
        self._load[chosen] += 1
        return chosen


class _Streams(LRUCache[tuple[str, str], int]):
    """The known streams, least recently used forgotten first; a forgotten stream frees its slot."""

    def __init__(self, maxsize: int, load: list[int]) -> None:
        super().__init__(maxsize)
        self._load = load

    def popitem(self) -> tuple[tuple[str, str], int]:
        key, slot = super().popitem()
        self._load[slot] -= 1
        return key, slot


class OpenAIEngine(Engine):
    """Any OpenAI-compatible server: /v1/completions (few-shot prompt) or /v1/chat/completions."""

    name = "openai"

    def __init__(self, settings: OpenAISettings, context_segments: int, *, name: str = "openai") -> None:
        super().__init__()
        self.name = name
        self.settings = settings
        self.context_segments = context_segments
        self.batch_mode = settings.batch_mode
        if not settings.url:
            raise ValueError(
                f"{name}: no endpoint URL (spec.translation.endpoint or LT_TRANSLATE_{name.upper()}__URL)"
            )
        self.base = settings.url.rstrip("/").removesuffix("/v1")
        headers = {}
        if key := settings.key():
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(
            base_url=self.base,
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s, connect=3.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self.served_models: list[str] = []
        self._last_success = 0.0
        self._posting = 0  # requests in flight to the server
        self.slot_map: SlotMap | None = None  # with slot_affinity, once /props gave the slot count
        self._slots_asked = False  # /props answered, with a slot count or without
        self._serves_metrics: bool | None = None  # /metrics with llama.cpp's names; None: not known yet

    async def close(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------ readiness

    def _recently_served(self) -> bool:
        # A server that runs one request at a time (llama-cpp-python's) answers /v1/models only between
        # generations: a probe that times out while translations keep succeeding is not an outage.
        return self.served_models != [] and time.monotonic() - self._last_success < 15.0

    async def _discover_slots(self) -> None:
        """llama-server's slot count (``/props`` ``total_slots``), for slot affinity.

        A server not up yet is asked again at the next readiness check; one that answers without
        a slot count (not a llama-server) is told once, and its prompts go unpinned. After a lost
        connection (a restarted server may run another ``--parallel``) it is asked again; the
        streams keep their slots when the count is unchanged.
        """
        try:
            resp = await self.client.get("/props", timeout=3.0)
        except httpx.HTTPError:
            return
        if resp.status_code >= 500:  # up but not serving yet: llama-server answers 503 while it loads
            return
        self._slots_asked = True
        try:
            resp.raise_for_status()
            props = resp.json()
        except (httpx.HTTPError, ValueError):
            props = None
        slots = props.get("total_slots") if isinstance(props, dict) else None
        if isinstance(slots, int) and slots > 0:
            if self.slot_map is not None and self.slot_map.slots == slots:
                return
            self.slot_map = SlotMap(slots)
            log.info("slot affinity on", extra={"fields": {"engine": self.base, "slots": slots}})
        else:
            log.warning(
                "slot affinity: the server reports no slot count (/props total_slots); prompts go unpinned",
                extra={"fields": {"engine": self.base}},
            )

    async def check(self) -> EngineState:
        await self._probe()
        if self.state.ready:
            await self._read_metrics()
        else:
            self._serves_metrics = None  # what comes back may be another server
        return self.state

    async def _read_metrics(self) -> None:
        """The server's own load, where it publishes it: llama-server with ``--metrics`` (how
        ``llama_server.server_command`` starts it) serves ``llamacpp:requests_processing`` and
        ``llamacpp:requests_deferred`` (requests waiting for a free slot). A server that answers
        ``/metrics`` with an error or without those names (a hosted API, llama-cpp-python's
        server) is asked once; one that does not answer (busy, restarting) is asked again at the
        next check."""
        if self._serves_metrics is False:
            return
        try:
            resp = await self.client.get("/metrics", timeout=2.0)
        except httpx.HTTPError:
            return
        if resp.status_code >= 500:
            return
        stats = engine_stats(resp.text, LLAMACPP_STATS) if resp.status_code == 200 else {}
        if not stats:
            self._serves_metrics = False
            log.info(
                "the engine publishes no llama.cpp metrics; its load is not mirrored",
                extra={"fields": {"engine": self.base, "status": resp.status_code}},
            )
            return
        self._serves_metrics = True
        self.state.stats = stats

    async def _probe(self) -> None:
        """Readiness: ``/v1/models`` (and, with slot affinity, the slot count once)."""
        if self.settings.slot_affinity and not self._slots_asked:
            await self._discover_slots()
        if self._recently_served():
            self.state.ready, self.state.detail = True, "ok"
            return
        try:
            resp = await self.client.get("/v1/models", timeout=3.0)
            resp.raise_for_status()
            self.served_models = served_names(resp.json())
            self.state.ready = True
            self.state.detail = "ok"
        except httpx.TimeoutException as exc:
            if self._posting and self.served_models:
                self.state.detail = "busy (probe timed out while translations are in flight)"
            else:
                self.state.ready = False
                self.state.detail = f"{self.base} did not answer: {type(exc).__name__}"
        except (httpx.HTTPError, ValueError) as exc:
            self.state.ready = False
            self.state.detail = f"{self.base} unreachable: {type(exc).__name__}: {exc}"

    def resolve_model(self, model: str | None) -> str:
        """The model name to send: the one asked for, else the server's only (first) model."""
        chosen = model or self.settings.model
        if chosen:
            return chosen
        return self.served_models[0] if self.served_models else "default"

    # ------------------------------------------------------------ translation

    def _max_tokens(self, text: str) -> int:
        return max(self.settings.min_max_tokens, math.ceil(len(text) * self.settings.max_tokens_per_char))

    async def translate(
        self, jobs: list[Job], model: str | None, *, attempt: int = 0
    ) -> list[Output | BaseException]:
        self.note_activity()
        await self.before_request()
        model_name = self.resolve_model(model)
        # A retry samples a little: the greedy answer already failed a check.
        temperature = self.settings.temperature if attempt == 0 else max(0.3, self.settings.temperature)
        mode = self.batch_mode if len(jobs) > 1 else "concurrent"
        if self.settings.prompt_style == "chat":
            mode = "concurrent"  # chat endpoints take one conversation per request
        if mode == "list":
            return await self._list(jobs, model_name, temperature)
        if mode == "packed":
            return await self._packed(jobs, model_name, temperature)
        results = await asyncio.gather(
            *(self._one(j, model_name, temperature) for j in jobs), return_exceptions=True
        )
        return list(results)

    async def before_request(self) -> None:
        """Hook for engines that must be woken before use."""

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._posting += 1
        try:
            resp = await self.client.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise EngineError(f"{self.name}: no reply within {self.settings.timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            if self.settings.slot_affinity:
                self._slots_asked = False  # the server may come back with another slot count
            raise EngineError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._posting -= 1
        if resp.status_code >= 400:
            raise EngineError(f"{self.name}: HTTP {resp.status_code}: {resp.text[:200]}")
        self._last_success = time.monotonic()
        if not self.state.ready:
            self.state.ready, self.state.detail = True, "ok"
        try:
            data = resp.json()
        except ValueError as exc:
            raise GarbageError(f"{self.name}: reply is not JSON: {resp.text[:120]!r}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise GarbageError(f"{self.name}: reply has no choices: {str(data)[:120]}")
        return data

    @staticmethod
    def _choice_text(choice: Any, chat: bool) -> tuple[str, bool]:
        if not isinstance(choice, dict):
            raise GarbageError("choice is not an object")
        if chat:
            msg = choice.get("message") or {}
            text = msg.get("content") if isinstance(msg, dict) else None
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            raise GarbageError("choice carries no text")
        return text, choice.get("finish_reason") == "length"

    async def _one(self, job: Job, model: str, temperature: float) -> Output:
        prompt = build_prompt(job, self.context_segments)
        chat = self.settings.prompt_style == "chat"
        body: dict[str, Any] = {
            "model": model,
            "temperature": temperature,
            "max_tokens": self._max_tokens(job.text),
        }
        if self.slot_map is not None:
            body["id_slot"] = self.slot_map.slot(job.session_id, job.target)
        if chat:
            body["messages"] = prompt.messages
            data = await self._post("/v1/chat/completions", body)
        else:
            body |= {"prompt": prompt.text, "stop": prompt.stop}
            data = await self._post("/v1/completions", body)
        if not data["choices"]:
            raise GarbageError(f"{self.name}: empty choices")
        text, truncated = self._choice_text(data["choices"][0], chat)
        return Output(text, truncated)

    async def _list(self, jobs: list[Job], model: str, temperature: float) -> list[Output | BaseException]:
        prompts: list[Prompt] = [build_prompt(j, self.context_segments) for j in jobs]
        body = {
            "model": model,
            "temperature": temperature,
            "prompt": [p.text for p in prompts],
            "stop": prompts[0].stop,
            "max_tokens": max(self._max_tokens(j.text) for j in jobs),
        }
        data = await self._post("/v1/completions", body)
        outs: list[Output | BaseException] = [GarbageError(f"{self.name}: no choice for this prompt")] * len(
            jobs
        )
        for pos, choice in enumerate(data["choices"]):
            idx = choice.get("index", pos) if isinstance(choice, dict) else pos
            if isinstance(idx, int) and 0 <= idx < len(jobs):
                try:
                    text, truncated = self._choice_text(choice, False)
                    outs[idx] = Output(text, truncated)
                except GarbageError as exc:
                    outs[idx] = exc
        return outs

    async def _packed(self, jobs: list[Job], model: str, temperature: float) -> list[Output | BaseException]:
        prompt = build_packed_prompt(jobs, self.context_segments)
        budget = sum(self._max_tokens(j.text) for j in jobs) + 4 * len(jobs)
        body = {
            "model": model,
            "temperature": temperature,
            "prompt": prompt.text,
            "stop": prompt.stop,
            "max_tokens": budget,
        }
        data = await self._post("/v1/completions", body)
        if not data["choices"]:
            raise GarbageError(f"{self.name}: empty choices")
        text, truncated = self._choice_text(data["choices"][0], False)
        parsed = parse_packed(text, len(jobs))
        outs: list[Output | BaseException] = []
        missing = [i for i, p in enumerate(parsed) if p is None]
        # A line the model skipped (or cut off) is asked again alone rather than lost.
        redo = await asyncio.gather(
            *(self._one(jobs[i], model, temperature) for i in missing), return_exceptions=True
        )
        redone = dict(zip(missing, redo, strict=True))
        for i, p in enumerate(parsed):
            if p is None:
                r = redone[i]
                if isinstance(r, Output):
                    r.packed_miss = True
                outs.append(r)
            else:
                outs.append(Output(p, truncated and i == len(jobs) - 1))
        return outs

"""The pod's real-time factor is the decoders' utilisation: it rises with the sessions a pod
serves, reaches 1 where the pod stops keeping up, and drops to 0 when the pod goes idle. The
autoscaler scales audio on it (docs/scaling.md), so a per-session cost that stays flat as sessions
are added would hide a pod that falls behind."""

from __future__ import annotations

import asyncio

import pytest

from livetranslate.workloads.audio import service as audio_service
from livetranslate.workloads.audio.service import AudioService, decoder_utilisation
from livetranslate.workloads.audio.settings import AudioSettings


def test_utilisation_grows_with_sessions_and_saturates() -> None:
    # One worker, 0.3 s of decode per second of audio per session, 10 s of wall time.
    readings = [decoder_utilisation(0.3 * 10 * sessions, 10.0, 1) for sessions in (1, 2, 3, 4)]
    assert readings == pytest.approx([0.3, 0.6, 0.9, 1.0])
    assert decoder_utilisation(12.0, 10.0, 2) == pytest.approx(0.6)  # two workers share the load
    assert decoder_utilisation(5.0, 0.0, 1) == 0.0


async def test_the_gauge_follows_busy_time_and_returns_to_zero_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audio_service, "RTF_INTERVAL_SECONDS", 0.2)
    svc = AudioService(AudioSettings())
    labels = {"pipeline": svc.settings.pipeline, "device": svc.device}

    def reading() -> float | None:
        return svc.registry.get_sample_value("livetranslate_audio_realtime_factor", labels)

    loop = asyncio.create_task(svc._rtf_loop())
    try:
        # Busy passes worth far more than the wall time: the reading saturates at 1.
        for _ in range(4):
            svc.decode_seconds_total += 10.0 * svc.scheduler.workers
            await asyncio.sleep(0.1)
        assert reading() == pytest.approx(1.0)
        await asyncio.sleep(0.5)  # no passes for two intervals
        assert reading() == 0.0
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

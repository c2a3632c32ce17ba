"""Voice activity detection that gates the decoder: silero-vad's packaged ONNX model.

One onnxruntime session is shared by every stream (the model is a few hundred KB, but sessions
cost threads and memory); each stream keeps only its recurrent state and 64 samples of context,
so an extra stream costs about a kilobyte. Frames are 512 samples (32 ms) at 16 kHz, as the model
expects. A stream without VAD (``vad: false`` in the spec) treats every frame as speech.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FRAME = 512
CONTEXT = 64
FRAME_SECONDS = FRAME / 16000


def _model_path() -> Path:
    import silero_vad

    return Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"


class SileroVad:
    """The shared model. ``stream()`` makes a per-session detector."""

    def __init__(self) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(_model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(16000, dtype=np.int64)

    def probabilities(
        self, frames: np.ndarray, state: np.ndarray, context: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Speech probability per 512-sample frame; returns (probs, new_state, new_context)."""
        probs = np.empty(len(frames), dtype=np.float32)
        for i, frame in enumerate(frames):
            x = np.concatenate([context, frame])[None, :]
            out, state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
            probs[i] = float(out[0, 0])
            context = frame[-CONTEXT:]
        return probs, state, context

    def stream(self) -> VadStream:
        return VadStream(self)


class VadStream:
    """Per-session detector state: recurrent state, context and the not-yet-full frame."""

    def __init__(self, model: SileroVad | None) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities for every complete frame the new samples finish (0, 1 or many)."""
        buf = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(buf) // FRAME
        self._pending = buf[n * FRAME :].copy()
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        if self._model is None:
            return np.ones(n, dtype=np.float32)
        frames = buf[: n * FRAME].reshape(n, FRAME).astype(np.float32, copy=False)
        probs, self._state, self._context = self._model.probabilities(frames, self._state, self._context)
        return probs

"""The failures a pull, a wait or a verify expects, each with a one-line message.

The ``reason`` travels in the termination log next to the message, so the operator can tell a
model that cannot exist here (a conversion impossible on this image: fall back to the next device)
from one worth retrying (a hub that is unreachable right now).
"""

from __future__ import annotations

# The pull command's exit status for a model that cannot exist here, whatever is retried: the
# model-cache Jobs fail at once on it (a podFailurePolicy rule), and the operator falls back
# instead of retrying. Every other failure exits 1 and is retried.
EXIT_PERMANENT = 3


class PullError(Exception):
    """An expected failure: the message is one line a user can act on; no traceback."""

    reason = "Failed"
    exit_code = 1


class ModelNotReady(PullError):
    """No complete model at its path: missing, unfinished, or a file that does not match."""

    reason = "NotReady"


class SourceUnavailable(PullError):
    """The source cannot give the model now: not found, no access, offline, unreachable."""

    reason = "SourceUnavailable"


class DigestMismatch(PullError):
    """What arrived is not what was asked for (a sha256 or a size differs): nothing is placed."""

    reason = "DigestMismatch"


class CacheFull(PullError):
    """The model cache volume has no room for the model."""

    reason = "VolumeFull"


class ConversionFailed(PullError):
    """The weights cannot be converted to the asked format on this image: trying again fails the
    same way (no converter, an export that refuses the model)."""

    reason = "ConversionFailed"
    exit_code = EXIT_PERMANENT


class ConversionInterrupted(PullError):
    """The converter was killed (out of memory, the node going away): worth another attempt."""

    reason = "ConversionInterrupted"

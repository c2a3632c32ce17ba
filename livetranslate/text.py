"""Where a sentence ends in transcribed text: one rule for the audio service, which never lets a
final run past a sentence end, and the gateway, which closes sentences on it."""

from __future__ import annotations

import re

# Sentence-final punctuation, Latin and CJK, optionally followed by closing quotes or brackets.
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’»)\]]*$")
# Words whose trailing period does not end a sentence ("Mr. Smith"). "etc." is left out: it
# ends sentences more often than not.
_ABBREVIATIONS = frozenset(
    {
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "prof.",
        "st.",
        "sr.",
        "jr.",
        "vs.",
        "e.g.",
        "i.e.",
        "no.",
        "approx.",
        "dept.",
        "fig.",
        "mt.",
        "sra.",
        "dra.",
        "hr.",
        "fr.",
    }
)


def ends_sentence(text: str) -> bool:
    """Whether text (a final, or one word) ends on sentence-final punctuation, not an abbreviation."""
    text = text.rstrip()
    if not _SENTENCE_END.search(text):
        return False
    last = text.rsplit(None, 1)[-1].lower()
    return last not in _ABBREVIATIONS

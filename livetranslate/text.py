"""Where a sentence ends in transcribed text, and how finals join into it: one rule for the audio
service, which never lets a final run past a sentence end, and the gateway, which closes
sentences on it and joins their finals."""

from __future__ import annotations

import re

# Scripts written without spaces between words (CJK ideographs, kana, Thai, Lao, Myanmar, and
# CJK punctuation and full-width forms).
UNSPACED = re.compile("[\u0e00-\u0eff\u1000-\u109f\u3000-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")


def join_texts(texts: list[str] | tuple[str, ...]) -> str:
    """Finals as one text: a space between two, except where either side is in a script written
    without spaces ("おは" + "ようございます" is one word, not two)."""
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and not (UNSPACED.match(out[-1]) or UNSPACED.match(text[0])):
            out += " "
        out += text
    return out


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

"""Prompts, output cleanup and the checks that decide whether a translation may be shown.

Pure functions, no I/O: the service calls them around every engine call. Context matters for
live speech: a segment is often half a sentence, and "it" or a product name must be rendered the
way the previous segments were, so the prompt replays the session's last segments with the
translations users already saw.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from livetranslate.capabilities import language_name, primary
from livetranslate.protocol import ContextSegment, context_span

# One worked example per target language anchors the format for base and instruct models alike.
_EXAMPLE_SOURCE = "Good morning, everyone, and thank you for coming."
_EXAMPLES = {
    "es": "Buenos días a todos y gracias por venir.",
    "fr": "Bonjour à tous et merci d'être venus.",
    "de": "Guten Morgen allerseits und danke, dass Sie gekommen sind.",
    "it": "Buongiorno a tutti e grazie per essere venuti.",
    "pt": "Bom dia a todos e obrigado por terem vindo.",
    "ca": "Bon dia a tothom i gràcies per venir.",
    "nl": "Goedemorgen allemaal en bedankt voor jullie komst.",
    "pl": "Dzień dobry wszystkim i dziękuję za przybycie.",
    "ru": "Доброе утро всем и спасибо, что пришли.",
    "uk": "Доброго ранку всім і дякую, що прийшли.",
    "zh": "大家早上好,感谢各位的到来。",
    "ja": "皆さん、おはようございます。お越しいただきありがとうございます。",
    "ko": "여러분 안녕하세요, 와 주셔서 감사합니다.",
    "ar": "صباح الخير جميعًا، وشكرًا لحضوركم.",
    "hi": "सभी को सुप्रभात, और आने के लिए धन्यवाद।",
    "tr": "Herkese günaydın, geldiğiniz için teşekkürler.",
}

_PREAMBLES = re.compile(
    r"^\s*(?:sure[,!.]?\s*)?(?:here(?:'s| is) (?:the |your |a )?(?:\w+ )?translation[^:\n]*:|"
    r"translation(?: \(\w+\))?:|(?:the )?\w+ translation(?: is)?:|\w+:\s*(?=\S))\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’«»„‚「」『』"
_NUMBERED = re.compile(r"^\s*(\d{1,3})[.)]\s*(.*)$")


@dataclass(frozen=True)
class Job:
    """One segment for one target language: the unit the batcher groups and engines translate."""

    text: str
    source: str
    target: str
    context: tuple[ContextSegment, ...] = ()
    session_id: str = ""
    segment_id: int = 0
    # A preview of a sentence still being spoken: a later request replaces it, so it gets the
    # primary engine once, with no retry and no fallback (those are for what listeners keep).
    partial: bool = False


@dataclass
class Check:
    ok: bool
    reason: str = "ok"
    detail: str = ""


@dataclass
class Prompt:
    """A prompt in both shapes (completion text, chat messages), plus its stop strings."""

    text: str
    messages: list[dict[str, str]] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)


def name(code: str) -> str:
    return language_name(code) or code


def _context_pairs(job: Job, limit: int) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    span = context_span(limit)
    for seg in job.context[-span:] if span else ():
        out = seg.translations.get(job.target) or seg.translations.get(primary(job.target))
        if out:
            pairs.append((seg.source.strip(), out.strip()))
    return pairs


def build_prompt(job: Job, context_segments: int) -> Prompt:
    """The per-target prompt: an instruction, one example, the session's last segments, the segment.

    The completion shape is a few-shot transcript ("English: ... / Spanish: ...") that base models
    continue correctly and instruct models follow too; the chat shape replays the context as earlier
    user/assistant turns, which is how chat models keep pronouns and terms consistent.
    """
    src, tgt = name(job.source), name(job.target)
    example = _EXAMPLES.get(primary(job.target)) if primary(job.source) == "en" else None
    pairs = _context_pairs(job, context_segments)
    instruction = (
        f"Translate the {src} lines of a live talk into {tgt}. "
        f"Write only the {tgt} translation of each line, nothing else."
    )
    lines = [instruction, ""]
    if example:
        lines += [f"{src}: {_EXAMPLE_SOURCE}", f"{tgt}: {example}", ""]
    for s, t in pairs:
        lines += [f"{src}: {s}", f"{tgt}: {t}"]
    lines += [f"{src}: {job.text.strip()}", f"{tgt}:"]
    system = (
        f"You are a professional interpreter translating a live talk from {src} into {tgt}. "
        f"Reply with the {tgt} translation of the user's line only: no quotes, no notes, "
        "no explanations. Keep names and terms consistent with your earlier replies."
    )
    messages = [{"role": "system", "content": system}]
    if example:
        messages += [{"role": "user", "content": _EXAMPLE_SOURCE}, {"role": "assistant", "content": example}]
    for s, t in pairs:
        messages += [{"role": "user", "content": s}, {"role": "assistant", "content": t}]
    messages.append({"role": "user", "content": job.text.strip()})
    return Prompt(text="\n".join(lines), messages=messages, stop=["\n"])


def build_packed_prompt(jobs: list[Job], context_segments: int) -> Prompt:
    """Several segments (one source and target language) as numbered lines in one prompt.

    For servers that run one request at a time: the instruction, the example and the context are
    read once for the whole batch instead of once per segment. The example block is made of the
    batch's own context (each session's last segments with the translations already shown), so
    terms stay consistent per session as far as one shared prompt allows.
    """
    src, tgt = name(jobs[0].source), name(jobs[0].target)
    shown: list[tuple[str, str]] = []
    seen: set[str] = set()
    budget = max(2, min(8, context_segments * 2))
    for job in jobs:
        for s, t in _context_pairs(job, min(context_segments, 2)):
            if s not in seen and len(shown) < budget:
                seen.add(s)
                shown.append((s, t))
    example = _EXAMPLES.get(primary(jobs[0].target)) if primary(jobs[0].source) == "en" else None
    if example and not shown:
        shown.append((_EXAMPLE_SOURCE, example))
    header = f"Translate each numbered {src} line into {tgt}. Keep the numbering; write only the {tgt} lines."
    lines = [header, ""]
    if shown:
        lines.append(f"{src}:")
        lines += [f"{i}. {s}" for i, (s, _) in enumerate(shown, 1)]
        lines.append(f"{tgt}:")
        lines += [f"{i}. {t}" for i, (_, t) in enumerate(shown, 1)]
        lines.append("")
    lines.append(f"{src}:")
    lines += [f"{i}. {j.text.strip()}" for i, j in enumerate(jobs, 1)]
    lines += [f"{tgt}:", "1."]
    return Prompt(text="\n".join(lines), stop=["\n\n", f"{src}:"])


def parse_packed(output: str, count: int) -> list[str | None]:
    """Numbered lines back into per-segment outputs; a line the model skipped is None."""
    found: dict[int, str] = {}
    text = "1. " + output.lstrip()
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m:
            idx = int(m.group(1))
            if 1 <= idx <= count and idx not in found:
                found[idx] = m.group(2).strip()
        elif found and line.strip() and not line.strip().endswith(":"):
            last = max(found)
            found[last] = f"{found[last]} {line.strip()}"
    return [found.get(i) for i in range(1, count + 1)]


def cleanup(output: str, target: str) -> str:
    """Strip what models wrap a translation in: preambles, quotes, a label, trailing notes."""
    text = output.strip()
    if not text:
        return text
    text = text.split("\n\n", 1)[0].strip()
    tgt = re.escape(name(target))
    text = re.sub(rf"^\s*{tgt}\s*:\s*", "", text, flags=re.IGNORECASE)
    text = _PREAMBLES.sub("", text, count=1) if _looks_like_preamble(text) else text
    text = re.sub(r"\s*\((?:note|translation|literally)[^)]*\)\s*$", "", text, flags=re.IGNORECASE)
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return " ".join(text.split())


def _looks_like_preamble(text: str) -> bool:
    head = text[:80].lower()
    return ("translation" in head and ":" in head) or head.startswith(("sure", "here is", "here's"))


def clean_apertium(output: str) -> str:
    """Apertium marks unknown words (*), generation gaps (#) and untranslated lemmas (@)."""
    return " ".join(re.sub(r"(?<!\w)[*#@](?=\w)", "", output).split())


# ---------------------------------------------------------------- checks

# Script each language is written in (languages absent here are written in Latin script).
_SCRIPTS = {
    "ru": "CYRILLIC",
    "uk": "CYRILLIC",
    "bg": "CYRILLIC",
    "mk": "CYRILLIC",
    "be": "CYRILLIC",
    "kk": "CYRILLIC",
    "ky": "CYRILLIC",
    "mn": "CYRILLIC",
    "tg": "CYRILLIC",
    "el": "GREEK",
    "ar": "ARABIC",
    "fa": "ARABIC",
    "ur": "ARABIC",
    "ps": "ARABIC",
    "sd": "ARABIC",
    "he": "HEBREW",
    "yi": "HEBREW",
    "hi": "DEVANAGARI",
    "mr": "DEVANAGARI",
    "ne": "DEVANAGARI",
    "bn": "BENGALI",
    "as": "BENGALI",
    "pa": "GURMUKHI",
    "gu": "GUJARATI",
    "ta": "TAMIL",
    "te": "TELUGU",
    "kn": "KANNADA",
    "ml": "MALAYALAM",
    "si": "SINHALA",
    "th": "THAI",
    "lo": "LAO",
    "km": "KHMER",
    "my": "MYANMAR",
    "ka": "GEORGIAN",
    "hy": "ARMENIAN",
    "am": "ETHIOPIC",
    "zh": "CJK",
    "yue": "CJK",
    "ja": "CJK",
    "ko": "HANGUL",
}
# Frequent function words: enough to tell a Spanish line from an untranslated English one.
_STOPWORDS = {
    "en": {
        "the",
        "and",
        "is",
        "are",
        "of",
        "to",
        "in",
        "that",
        "it",
        "you",
        "we",
        "this",
        "for",
        "with",
        "was",
        "have",
        "be",
        "on",
        "not",
        "they",
        "what",
        "will",
        "our",
        "your",
    },
    "es": {
        "el",
        "la",
        "los",
        "las",
        "de",
        "que",
        "y",
        "en",
        "un",
        "una",
        "es",
        "por",
        "con",
        "para",
        "no",
        "se",
        "del",
        "al",
        "lo",
        "su",
        "nos",
        "muy",
        "está",
        "son",
    },
    "fr": {
        "le",
        "la",
        "les",
        "de",
        "des",
        "et",
        "est",
        "un",
        "une",
        "que",
        "en",
        "du",
        "pour",
        "dans",
        "pas",
        "nous",
        "vous",
        "il",
        "ce",
        "qui",
        "sur",
        "avec",
        "au",
    },
    "de": {
        "der",
        "die",
        "das",
        "und",
        "ist",
        "nicht",
        "ein",
        "eine",
        "zu",
        "den",
        "mit",
        "von",
        "wir",
        "sie",
        "es",
        "ich",
        "auf",
        "für",
        "dem",
        "im",
        "auch",
        "sind",
    },
    "it": {
        "il",
        "la",
        "di",
        "che",
        "e",
        "è",
        "un",
        "una",
        "per",
        "non",
        "in",
        "del",
        "con",
        "sono",
        "gli",
        "le",
        "lo",
        "si",
        "da",
        "ci",
        "al",
    },
    "pt": {
        "o",
        "a",
        "os",
        "as",
        "de",
        "que",
        "e",
        "é",
        "um",
        "uma",
        "para",
        "com",
        "não",
        "em",
        "do",
        "da",
        "no",
        "na",
        "se",
        "por",
        "nós",
    },
    "ca": {
        "el",
        "la",
        "els",
        "les",
        "de",
        "que",
        "i",
        "és",
        "un",
        "una",
        "per",
        "amb",
        "no",
        "en",
        "del",
        "al",
        "es",
        "som",
        "als",
    },
    "nl": {
        "de",
        "het",
        "een",
        "en",
        "is",
        "van",
        "dat",
        "niet",
        "we",
        "je",
        "op",
        "te",
        "in",
        "voor",
        "met",
        "zijn",
        "ik",
        "wij",
    },
}


def _script_of(ch: str) -> str | None:
    try:
        n = unicodedata.name(ch)
    except ValueError:
        return None
    if n.startswith(("CJK", "HIRAGANA", "KATAKANA")):
        return "CJK"
    return n.split(" ", 1)[0]


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)?", text.lower())


def _norm(text: str) -> str:
    return " ".join(_words(text))


def check(source_text: str, output: str, source: str, target: str, *, truncated: bool = False) -> Check:
    """Catch what a user would see as broken: nothing, the source again, another language, a runaway."""
    if not output.strip():
        return Check(False, "empty")
    src_len = len(source_text.strip())
    if truncated or len(output) > 3 * src_len + 40:
        return Check(False, "runaway", f"{len(output)} chars for {src_len}")
    src_words = _words(source_text)
    if primary(source) != primary(target) and len(src_words) >= 3 and _norm(output) == _norm(source_text):
        return Check(False, "echo")
    expected = _SCRIPTS.get(primary(target), "LATIN")
    letters = [s for s in (_script_of(c) for c in output if c.isalpha()) if s]
    if letters:
        share = sum(
            1 for s in letters if s == expected or (expected == "CJK" and s in ("CJK", "HANGUL"))
        ) / len(letters)
        if share < 0.5:
            return Check(False, "wrong_language", f"{share:.0%} of letters in the {expected} script")
    words = _words(output)
    src_stop = _STOPWORDS.get(primary(source))
    tgt_stop = _STOPWORDS.get(primary(target))
    if expected == "LATIN" and src_stop and primary(source) != primary(target) and len(words) >= 4:
        src_hits = sum(w in src_stop for w in words)
        tgt_hits = sum(w in tgt_stop for w in words) if tgt_stop else 0
        if src_hits >= 2 and src_hits > 2 * tgt_hits and src_hits / len(words) >= 0.2:
            return Check(False, "wrong_language", f"reads as {name(source)}")
    return Check(True)

"""What each translation backend can serve, checked before anything is built.

The operator calls ``backend_problems`` when it reconciles a spec (a pair the backend lacks is a
``Failed`` pipeline naming the field, not a silent passthrough at run time), ``livetranslate up``
calls it against the Apertium modes installed on this machine, and the translation service calls
it again at start-up against what its image really has.

The offline backend's pairs are never listed by hand: they are read from Apertium mode names (the
files under ``/usr/share/apertium/modes`` that apertium-apy serves), whose codes mix ISO 639-1 and
639-3 ("en-gl", "eng-spa", "spa-eng_US") and are mapped here to the BCP-47 tags the API uses. The
one hand-kept table is ``APERTIUM_PACKAGES``: which Debian packages the offline backend installs
(scripts/bootstrap.sh reads it; docker/translate.Dockerfile is checked against it) and the modes
each one installs, so the operator knows what the translation image offers without opening it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODES_DIR = Path("/usr/share/apertium/modes")

# The Debian (bookworm) packages of Apertium pairs that the offline backend installs, and the
# translation modes each installs (read from `dpkg -L`; modes for spelling variants like
# "_iec2017" or "nno_e", which no spec names, are left out). Every pair Debian ships that touches a
# language Whisper hears, except two: apertium-oci-fra (79 MiB installed, Occitan<->French: 22% of
# the whole set for one pair, and fr->oc still works through es) and apertium-fra-frp (22 MiB,
# French->Arpitan). The 44 below with their dependencies (cg3, apertium-recursive, -separable,
# -anaphora) take 277 MiB under /usr/share/apertium (the 24 of the previous set: 171 MiB) and
# download 87 MiB; measured here, apt downloads them in 9 s and installs them in 18 s.
APERTIUM_PACKAGES: dict[str, tuple[str, ...]] = {
    "apertium-eng-spa": ("eng-spa", "spa-eng", "spa-eng_US"),
    "apertium-eng-cat": ("eng-cat", "cat-eng", "cat-eng_US", "eng-cat_valencia"),
    "apertium-en-gl": ("en-gl", "gl-en"),
    "apertium-eo-en": ("en-eo", "eo-en"),
    "apertium-eu-en": ("eu-en",),
    "apertium-hbs-eng": ("eng-hbs", "eng-hbs_BS", "eng-hbs_HR", "eng-hbs_SR", "hbs-eng"),
    "apertium-isl-eng": ("isl-eng",),
    "apertium-mkd-eng": ("mkd-eng",),
    "apertium-fr-es": ("es-fr", "fr-es"),
    "apertium-es-pt": ("es-pt", "es-pt_BR", "pt-es"),
    "apertium-es-ro": ("ro-es",),
    "apertium-spa-ita": ("spa-ita", "ita-spa"),
    "apertium-spa-cat": ("spa-cat", "cat-spa", "spa-cat_valencia"),
    "apertium-es-gl": ("es-gl", "gl-es"),
    "apertium-eu-es": ("eu-es",),
    "apertium-eo-es": ("es-eo",),
    "apertium-oc-es": ("es-oc", "oc-es", "es-oc_aran", "oc_aran-es"),
    "apertium-spa-arg": ("spa-arg", "arg-spa"),
    "apertium-spa-ast": ("spa-ast",),
    "apertium-fra-cat": ("fra-cat", "cat-fra"),
    "apertium-por-cat": ("por-cat", "cat-por", "cat-por_BR"),
    "apertium-cat-ita": ("cat-ita", "ita-cat"),
    "apertium-oc-ca": ("ca-oc", "oc-ca", "ca-oc_aran", "oc_aran-ca"),
    "apertium-eo-ca": ("ca-eo",),
    "apertium-arg-cat": ("arg-cat", "cat-arg"),
    "apertium-cat-srd": ("cat-srd",),
    "apertium-srd-ita": ("ita-srd",),
    "apertium-pt-gl": ("pt-gl", "gl-pt"),
    "apertium-eo-fr": ("fr-eo",),
    "apertium-br-fr": ("br-fr",),
    "apertium-afr-nld": ("afr-nld", "nld-afr"),
    "apertium-rus-ukr": ("rus-ukr", "ukr-rus"),
    "apertium-bel-rus": ("bel-rus", "rus-bel"),
    "apertium-mkd-bul": ("mkd-bul", "bul-mkd"),
    "apertium-hbs-mkd": ("hbs-mkd", "mkd-hbs_BS", "mkd-hbs_HR", "mkd-hbs_SR"),
    "apertium-hbs-slv": ("hbs-slv", "slv-hbs", "slv-hbs_BS", "slv-hbs_HR", "slv-hbs_SR"),
    "apertium-pol-szl": ("pol-szl", "szl-pol"),
    "apertium-nno-nob": ("nno-nob", "nob-nno"),
    "apertium-dan-nor": ("dan-nno", "dan-nob", "nno-dan", "nob-dan"),
    "apertium-swe-dan": ("swe-dan", "dan-swe"),
    "apertium-swe-nor": ("swe-nno", "swe-nob", "nno-swe", "nob-swe"),
    "apertium-isl-swe": ("isl-swe", "swe-isl"),
    "apertium-ind-zlm": ("ind-zlm", "zlm-ind"),
    "apertium-urd-hin": ("urd-hin", "hin-urd"),
}

if __name__ == "__main__":  # scripts/bootstrap.sh: the packages to install, before any venv exists
    # Run as a file, before the package is installed: nothing from it can be imported yet, so
    # the table above is all this needs, and it stops here.
    print(" ".join(APERTIUM_PACKAGES))
    raise SystemExit

from livetranslate.language_tags import (
    LANGUAGE_NAMES,
    WHISPER_LANGUAGES,
    from_whisper,
    language_name,
    primary,
    whisper_language,
)

# The contract the operator, the workloads and the tests import from here; the language tags live
# in language_tags.py.
__all__ = [
    "APERTIUM_PACKAGES",
    "DEFAULT_MODES_DIR",
    "ISO639_3",
    "LANGUAGE_NAMES",
    "PIVOT_PREFERENCE",
    "WHISPER_LANGUAGES",
    "ApertiumPairs",
    "Route",
    "backend_problems",
    "from_whisper",
    "installed_modes",
    "language_name",
    "mode_languages",
    "offline_source_languages",
    "package_of",
    "packaged_pairs",
    "primary",
    "speech_problems",
    "whisper_language",
]

# ISO 639-3 codes in Apertium mode names -> the BCP-47 primary subtag (the 639-1 code where one
# exists; BCP-47 keeps the 3-letter code otherwise, as for "ast" and "szl").
ISO639_3: dict[str, str] = {
    "afr": "af",
    "arg": "an",
    "bel": "be",
    "bre": "br",
    "bul": "bg",
    "cat": "ca",
    "dan": "da",
    "eng": "en",
    "epo": "eo",
    "eus": "eu",
    "fra": "fr",
    "glg": "gl",
    "hbs": "sh",
    "hin": "hi",
    "ind": "id",
    "isl": "is",
    "ita": "it",
    "mkd": "mk",
    "nld": "nl",
    "nno": "nn",
    "nob": "nb",
    "nor": "no",
    "oci": "oc",
    "pol": "pl",
    "por": "pt",
    "ron": "ro",
    "rus": "ru",
    "slv": "sl",
    "spa": "es",
    "srd": "sc",
    "swe": "sv",
    "ukr": "uk",
    "urd": "ur",
    "zlm": "ms",
}
# Mode-name variants that are languages or regions of their own; any other variant (spelling
# reforms such as "_iec2017", "_pre2017", Nynorsk "nno_e") is not offered as a pair.
_VARIANTS: dict[tuple[str, str], str] = {
    ("sh", "SR"): "sr",
    ("sh", "HR"): "hr",
    ("sh", "BS"): "bs",
    ("oc", "aran"): "oc-aranes",
    ("ca", "valencia"): "ca-valencia",
}
# What a spec or Whisper may say for a language whose pairs are filed under another code:
# Serbian, Croatian and Bosnian speech is translated by the Serbo-Croatian pairs, and Whisper's
# "no" (Norwegian) is Bokmal.
_ALIASES: dict[str, tuple[str, ...]] = {"sr": ("sh",), "hr": ("sh",), "bs": ("sh",), "no": ("nb",)}
# Intermediate languages tried first when no direct pair exists: Spanish is the hub of Apertium's
# best-maintained pairs, English the next.
PIVOT_PREFERENCE = ("es", "en")

# Apertium-apy's own pattern for a translation mode (apertium_apy/mode_search.py).
_MODE_RE = re.compile(r"^([a-z]{2,3})(?:_([A-Za-z0-9]+))?-([a-z]{2,3})(?:_([A-Za-z0-9]+))?$")


def installed_modes(modes_dir: Path = DEFAULT_MODES_DIR) -> set[str]:
    """Modes really installed (``eng-spa.mode`` -> ``eng-spa``): what apertium-apy will serve."""
    if not modes_dir.is_dir():
        return set()
    return {p.name.removesuffix(".mode") for p in modes_dir.glob("*.mode")}


def _tag(code: str, variant: str | None) -> str | None:
    lang = ISO639_3.get(code, code)
    if variant is None:
        return lang
    if (lang, variant) in _VARIANTS:
        return _VARIANTS[(lang, variant)]
    if len(variant) == 2 and variant.isupper():  # a region: spa-eng_US -> en-US
        return f"{lang}-{variant}"
    return None


def mode_languages(mode: str) -> tuple[str, str] | None:
    """(source, target) BCP-47 tags of a translation mode ("eng-spa" -> ("en", "es"), "eng-hbs_SR"
    -> ("en", "sr")), or None for a mode that is no pair a spec can name (a spelling variant, a
    transliterator, a debugging mode)."""
    m = _MODE_RE.match(mode)
    if m is None:
        return None
    source, target = _tag(m[1], m[2]), _tag(m[3], m[4])
    if source is None or target is None or primary(source) == primary(target):
        return None
    return source, target


def package_of(mode: str) -> str | None:
    """The Debian package (of ``APERTIUM_PACKAGES``) that installs ``mode``."""
    for package, modes in APERTIUM_PACKAGES.items():
        if mode in modes:
            return package
    return None


@dataclass(frozen=True)
class Route:
    """How the offline backend translates one pair: one mode, or two through a pivot language."""

    source: str  # tags as the modes name them: a Serbian speaker's "sr" is translated from "sh"
    target: str
    modes: tuple[str, ...]
    via: str | None = None

    @property
    def quality(self) -> str:
        """The ``quality`` its translations carry on the wire."""
        return f"pivot:{self.via}" if self.via else "ok"

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "target": self.target,
            "via": self.via,
            "quality": self.quality,
            "modes": list(self.modes),
            "packages": sorted({package_of(m) or "?" for m in self.modes}),
        }


def _pivot_rank(lang: str) -> tuple[int, str]:
    return (PIVOT_PREFERENCE.index(lang) if lang in PIVOT_PREFERENCE else len(PIVOT_PREFERENCE), lang)


class ApertiumPairs:
    """The pairs a set of Apertium modes translates: directly, or chaining two modes through one
    intermediate language where no direct one exists (the shortest path; a direct pair always
    wins, and among intermediates Spanish, then English, then the first by code)."""

    def __init__(self, modes: Iterable[str]) -> None:
        self.modes = frozenset(modes)
        self.edges: dict[str, dict[str, str]] = {}  # source tag -> target tag -> mode
        for mode in sorted(self.modes):
            langs = mode_languages(mode)
            if langs is not None:
                self.edges.setdefault(langs[0], {}).setdefault(langs[1], mode)
        self.targets = sorted({t for out in self.edges.values() for t in out})

    @staticmethod
    def _matches(tag: str, known: Iterable[str]) -> list[str]:
        """The tags of ``known`` that serve ``tag``: itself, its primary language, its aliases."""
        by_lower = {k.lower(): k for k in known}
        wanted = [tag.lower(), primary(tag), *_ALIASES.get(primary(tag), ())]
        found: list[str] = []
        for w in wanted:
            k = by_lower.get(w)
            if k is not None and k not in found:
                found.append(k)
        return found

    def route(self, source: str, target: str) -> Route | None:
        """How ``source`` -> ``target`` is translated here, or None where no path of at most two
        modes exists (``source`` "auto" has none: the detected language is routed instead)."""
        sources = self._matches(source, self.edges)
        targets = self._matches(target, self.targets)
        for s in sources:
            for t in targets:
                if t in self.edges[s]:
                    return Route(s, t, (self.edges[s][t],))
        for s in sources:
            for t in targets:
                hubs = [
                    h
                    for h in self.edges[s]
                    if "-" not in h and primary(h) != primary(t) and t in self.edges.get(h, {})
                ]
                if hubs:
                    via = min(hubs, key=_pivot_rank)
                    return Route(s, t, (self.edges[s][via], self.edges[via][t]), via)
        return None

    def routes(self, source: str | None = None) -> list[Route]:
        """Every pair that works (from ``source`` only, when given), direct ones first per source."""
        found: list[Route] = []
        sources = sorted(self.edges) if source is None else self._matches(source, self.edges)[:1]
        for s in sources:
            for t in self.targets:
                r = self.route(s, t) if primary(s) != primary(t) else None
                if r is not None and r.target == t:
                    found.append(r)
        return sorted(found, key=lambda r: (r.source, r.via is not None, r.via or "", r.target))

    def reaches(self, target: str) -> bool:
        """Whether some source language translates into ``target`` (what ``auto`` needs)."""
        return any(self.route(s, target) is not None for s in self.edges)

    def offered(self, source: str | None = None) -> str:
        """The pairs that work, for an error message: direct targets, then targets per pivot."""
        if source is None:  # with sourceLanguage auto: every target some language reaches
            return ", ".join(sorted({r.target for r in self.routes()})) or "nothing"
        groups: dict[str | None, list[str]] = {}
        for r in self.routes(source):
            groups.setdefault(r.via, []).append(r.target)
        parts = [", ".join(groups.pop(None))] if None in groups else []
        parts += [
            f"{', '.join(ts)} through {via}"
            for via, ts in sorted(groups.items(), key=lambda kv: _pivot_rank(kv[0] or ""))
        ]
        return "; ".join(parts) or "nothing"


@functools.cache
def packaged_pairs() -> ApertiumPairs:
    """The pairs the translation image offers (every mode of ``APERTIUM_PACKAGES``)."""
    return ApertiumPairs(m for modes in APERTIUM_PACKAGES.values() for m in modes)


def offline_source_languages(targets: Collection[str], pairs: ApertiumPairs | None = None) -> list[str]:
    """The spoken languages (as Whisper names them) the offline backend can do something with for
    these targets: translate into at least one of them, or pass through (a target language itself).
    Language detection in ``auto`` sessions chooses among these."""
    pairs = pairs or packaged_pairs()
    reverse = {alias: spoken for spoken, aliases in _ALIASES.items() for alias in aliases}
    found: set[str] = {primary(t) for t in targets}
    for source in pairs.edges:
        if any(pairs.route(source, t) is not None for t in targets):
            found.add(primary(source))
            found.update(s for s, aliases in _ALIASES.items() if primary(source) in aliases)
    return sorted(found - set(reverse))


def _apertium_problems(source: str, targets: list[str], installed: Collection[str] | None) -> list[str]:
    shipped = packaged_pairs()
    here = shipped if installed is None else ApertiumPairs(installed)
    where = "" if installed is None else " installed here"
    if source == "auto":
        # The detected language is routed per utterance: a target is servable when some source
        # language reaches it (an utterance in a language without a route gets an error event).
        return [
            f"spec.targetLanguages[{i}]: no apertium pair{where} translates into {t} from any language "
            f"(with sourceLanguage auto it translates into: {here.offered()})"
            for i, t in enumerate(targets)
            if not here.reaches(t)
        ]
    if not shipped.routes(source):
        return [
            (
                f"spec.sourceLanguage: the apertium backend translates nothing from {source} "
                f"(it translates from: {', '.join(sorted(shipped.edges))})"
            )
        ]
    problems: list[str] = []
    for i, target in enumerate(targets):
        if here.route(source, target) is not None:
            continue
        known = shipped.route(source, target)
        if known is not None and installed is not None:
            packages = sorted({package_of(m) or m for m in known.modes if m not in here.modes})
            problems.append(
                f"spec.targetLanguages[{i}]: the apertium pair {source}->{target} ({' then '.join(known.modes)}) "
                f"is not installed here; install the Debian package {' '.join(packages)} "
                f"(from {source} it offers here: {here.offered(source)})"
            )
        else:
            problems.append(
                f"spec.targetLanguages[{i}]: the apertium backend has no {source}->{target} pair, direct or "
                f"through one pivot language (from {source} it offers{where}: {here.offered(source)})"
            )
    return problems


def speech_problems(source: str) -> list[str]:
    """Why the audio stage cannot transcribe ``sourceLanguage`` (empty = fine; ``auto`` detects)."""
    if source == "auto" or whisper_language(source) is not None:
        return []
    name = language_name(source)
    named = f" ({name})" if name else ""
    heard = ", ".join(sorted(WHISPER_LANGUAGES))
    problem = (
        f"spec.sourceLanguage: Whisper does not transcribe {source}{named}; it hears "
        f"{len(WHISPER_LANGUAGES)} languages ({heard}), or use auto"
    )
    return [problem]


def backend_problems(
    backend: str,
    source: str,
    targets: list[str],
    *,
    endpoint: str | None = None,
    installed_modes: Collection[str] | None = None,
) -> list[str]:
    """Reasons, each naming the spec field, why ``backend`` cannot serve this spec (empty = fine).

    ``backend`` is the resolved one (vllm, openai or apertium), never ``auto``. The operator calls
    it without ``installed_modes`` (it checks against the pairs of ``APERTIUM_PACKAGES``, what the
    translation image installs); ``livetranslate up`` and the translation service pass the modes
    really installed, so a pair whose package is missing is named with the package to install
    instead of failing on the first segment. Pairs without a direct mode count where two modes
    chain through one pivot language.
    """
    if backend == "apertium":
        return _apertium_problems(source, targets, installed_modes)
    problems: list[str] = []
    for field, code in [("spec.sourceLanguage", source)] + [
        (f"spec.targetLanguages[{i}]", t) for i, t in enumerate(targets)
    ]:
        if code != "auto" and language_name(code) is None:
            problems.append(f"{field}: unknown language {code!r} for the {backend} backend")
    if backend == "openai" and not endpoint:
        problems.append(
            "spec.translation.endpoint: the openai backend needs the base URL of an OpenAI-compatible server"
        )
    return problems

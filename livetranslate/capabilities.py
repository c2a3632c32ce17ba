"""What each translation backend can serve, checked before anything is built.

The operator calls ``backend_problems`` when it reconciles a spec (a pair the backend lacks is a
``Failed`` pipeline naming the field, not a silent passthrough at run time), and the translation
service calls it again at start-up against what is really installed.
"""

from __future__ import annotations

from collections.abc import Collection

# BCP-47 primary language -> Apertium's ISO 639-3 code (APy names pairs by these).
APERTIUM_CODES = {"en": "eng", "es": "spa", "ca": "cat", "gl": "glg", "eo": "epo", "eu": "eus",
                  "fr": "fra", "pt": "por", "it": "ita", "oc": "oci", "is": "isl", "mk": "mkd",
                  "sh": "hbs", "sr": "hbs", "hr": "hbs", "bs": "hbs", "ro": "ron", "ru": "rus",
                  "uk": "ukr", "nn": "nno", "nb": "nob", "no": "nob", "sv": "swe", "da": "dan",
                  "af": "afr", "nl": "nld"}

# Pairs (source, target) in BCP-47 primary subtags that Debian's Apertium packages provide, with
# the mode each one installs under /usr/share/apertium/modes and the package that carries it.
# Read from the packages' file lists (Debian bookworm/trixie), not guessed: mode names mix 2- and
# 3-letter codes ("en-gl", "eng-spa"), which is why the table names them explicitly.
APERTIUM_PACKAGES: dict[tuple[str, str], tuple[str, str]] = {
    ("en", "es"): ("eng-spa", "apertium-eng-spa"),
    ("es", "en"): ("spa-eng", "apertium-eng-spa"),
    ("en", "ca"): ("eng-cat", "apertium-eng-cat"),
    ("ca", "en"): ("cat-eng", "apertium-eng-cat"),
    ("en", "gl"): ("en-gl", "apertium-en-gl"),
    ("gl", "en"): ("gl-en", "apertium-en-gl"),
    ("en", "eo"): ("en-eo", "apertium-eo-en"),
    ("eo", "en"): ("eo-en", "apertium-eo-en"),
    ("eu", "en"): ("eu-en", "apertium-eu-en"),
    ("en", "sh"): ("eng-hbs", "apertium-hbs-eng"),
    ("en", "sr"): ("eng-hbs_SR", "apertium-hbs-eng"),
    ("en", "hr"): ("eng-hbs_HR", "apertium-hbs-eng"),
    ("en", "bs"): ("eng-hbs_BS", "apertium-hbs-eng"),
    ("sh", "en"): ("hbs-eng", "apertium-hbs-eng"),
    ("sr", "en"): ("hbs-eng", "apertium-hbs-eng"),
    ("hr", "en"): ("hbs-eng", "apertium-hbs-eng"),
    ("bs", "en"): ("hbs-eng", "apertium-hbs-eng"),
    ("is", "en"): ("isl-eng", "apertium-isl-eng"),
    ("mk", "en"): ("mkd-eng", "apertium-mkd-eng"),
    ("es", "fr"): ("es-fr", "apertium-fr-es"),
    ("fr", "es"): ("fr-es", "apertium-fr-es"),
    ("es", "pt"): ("es-pt", "apertium-es-pt"),
    ("pt", "es"): ("pt-es", "apertium-es-pt"),
    ("es", "ca"): ("spa-cat", "apertium-spa-cat"),
    ("ca", "es"): ("cat-spa", "apertium-spa-cat"),
    ("es", "it"): ("spa-ita", "apertium-spa-ita"),
    ("it", "es"): ("ita-spa", "apertium-spa-ita"),
    ("es", "gl"): ("es-gl", "apertium-es-gl"),
    ("gl", "es"): ("gl-es", "apertium-es-gl"),
    ("es", "oc"): ("es-oc", "apertium-oc-es"),
    ("oc", "es"): ("oc-es", "apertium-oc-es"),
    ("es", "eo"): ("es-eo", "apertium-eo-es"),
    ("ro", "es"): ("ro-es", "apertium-es-ro"),
    ("eu", "es"): ("eu-es", "apertium-eu-es"),
    ("fr", "ca"): ("fra-cat", "apertium-fra-cat"),
    ("ca", "fr"): ("cat-fra", "apertium-fra-cat"),
    ("pt", "ca"): ("por-cat", "apertium-por-cat"),
    ("ca", "pt"): ("cat-por", "apertium-por-cat"),
    ("ca", "it"): ("cat-ita", "apertium-cat-ita"),
    ("it", "ca"): ("ita-cat", "apertium-cat-ita"),
    ("ru", "uk"): ("rus-ukr", "apertium-rus-ukr"),
    ("uk", "ru"): ("ukr-rus", "apertium-rus-ukr"),
    ("nn", "nb"): ("nno-nob", "apertium-nno-nob"),
    ("nb", "nn"): ("nob-nno", "apertium-nno-nob"),
    ("no", "nn"): ("nob-nno", "apertium-nno-nob"),
    ("sv", "da"): ("swe-dan", "apertium-swe-dan"),
    ("da", "sv"): ("dan-swe", "apertium-swe-dan"),
    ("af", "nl"): ("afr-nld", "apertium-afr-nld"),
    ("nl", "af"): ("nld-afr", "apertium-afr-nld"),
}

# Region/variant tags with a mode of their own (checked before the primary-subtag table).
APERTIUM_VARIANTS: dict[tuple[str, str], str] = {
    ("es", "pt-br"): "es-pt_BR",
    ("ca", "pt-br"): "cat-por_BR",
    ("es", "en-us"): "spa-eng_US",
    ("ca", "en-us"): "cat-eng_US",
}

# Pairs (source, target) -> mode name, kept for callers of the first version of this module.
APERTIUM_PAIRS: dict[tuple[str, str], str] = {pair: mode for pair, (mode, _) in APERTIUM_PACKAGES.items()}


# English names of the languages LLM backends are prompted with (BCP-47 primary subtag -> name).
# A code outside this table is an unknown language: refused at spec-check time, not guessed at.
LANGUAGE_NAMES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bs": "Bosnian", "ca": "Catalan",
    "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
    "fi": "Finnish", "fil": "Filipino", "fr": "French", "ga": "Irish", "gl": "Galician",
    "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "ig": "Igbo", "is": "Icelandic",
    "it": "Italian", "ja": "Japanese", "jv": "Javanese", "ka": "Georgian", "kk": "Kazakh",
    "km": "Khmer", "kn": "Kannada", "ko": "Korean", "ku": "Kurdish", "ky": "Kyrgyz", "la": "Latin",
    "lb": "Luxembourgish", "lo": "Lao", "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian",
    "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "mt": "Maltese",
    "my": "Burmese", "nb": "Norwegian Bokmal", "ne": "Nepali", "nl": "Dutch",
    "nn": "Norwegian Nynorsk", "no": "Norwegian", "oc": "Occitan", "pa": "Punjabi", "pl": "Polish",
    "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "rw": "Kinyarwanda",
    "sd": "Sindhi", "sh": "Serbo-Croatian", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian",
    "so": "Somali", "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili",
    "ta": "Tamil", "te": "Telugu", "tg": "Tajik", "th": "Thai", "tl": "Tagalog", "tr": "Turkish",
    "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "xh": "Xhosa",
    "yi": "Yiddish", "yo": "Yoruba", "yue": "Cantonese", "zh": "Chinese", "zu": "Zulu",
}


def primary(code: str) -> str:
    return code.split("-", 1)[0].lower()


def apertium_mode(source: str, target: str) -> str | None:
    """The Apertium mode that translates ``source`` into ``target``, or None when Debian has none."""
    variant = APERTIUM_VARIANTS.get((primary(source), target.lower()))
    return variant or APERTIUM_PAIRS.get((primary(source), primary(target)))


def apertium_package(source: str, target: str) -> str | None:
    """The Debian package that installs the pair (for error messages that say what to install)."""
    entry = APERTIUM_PACKAGES.get((primary(source), primary(target)))
    return entry[1] if entry else None


def language_name(code: str) -> str | None:
    """English name of a BCP-47 tag's primary language (what an LLM prompt says), None if unknown."""
    return LANGUAGE_NAMES.get(primary(code))


def backend_problems(backend: str, source: str, targets: list[str], *,
                     endpoint: str | None = None,
                     installed_modes: Collection[str] | None = None) -> list[str]:
    """Reasons, each naming the spec field, why ``backend`` cannot serve this spec (empty = fine).

    ``backend`` is the resolved one (vllm, openai or apertium), never ``auto``. The operator calls
    it without ``installed_modes`` (it checks against what Debian ships); the translation service
    passes the modes really installed in its image, so a pair whose package is missing there is
    named with the package to install instead of failing on the first segment.
    """
    problems: list[str] = []
    if backend == "apertium":
        if source == "auto":
            problems.append("spec.sourceLanguage: the apertium backend needs a fixed source language, not 'auto'")
        else:
            for i, target in enumerate(targets):
                mode = apertium_mode(source, target)
                if mode is None:
                    offered = sorted(t for s, t in APERTIUM_PAIRS if s == primary(source))
                    problems.append(
                        f"spec.targetLanguages[{i}]: the apertium backend has no {source}->{target} pair "
                        f"(from {source} it offers: {', '.join(offered) or 'nothing'})"
                    )
                elif installed_modes is not None and mode not in installed_modes:
                    problems.append(
                        f"spec.targetLanguages[{i}]: the apertium pair {source}->{target} (mode {mode}) "
                        f"is not installed here; install the Debian package {apertium_package(source, target)}"
                    )
    else:
        for field, code in [("spec.sourceLanguage", source)] + [
                (f"spec.targetLanguages[{i}]", t) for i, t in enumerate(targets)]:
            if code != "auto" and language_name(code) is None:
                problems.append(f"{field}: unknown language {code!r} for the {backend} backend")
        if backend == "openai" and not endpoint:
            problems.append("spec.translation.endpoint: the openai backend needs the base URL of an "
                            "OpenAI-compatible server")
    return problems

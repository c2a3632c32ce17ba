"""What each translation backend can serve, checked before anything is built.

The operator calls ``backend_problems`` when it reconciles a spec (a pair the backend lacks is a
``Failed`` pipeline naming the field, not a silent passthrough at run time), and the translation
service calls it again at start-up against what is really installed.
"""

from __future__ import annotations

# BCP-47 primary language -> Apertium's ISO 639-3 code.
APERTIUM_CODES = {"en": "eng", "es": "spa", "ca": "cat", "gl": "glg", "eo": "epo", "eu": "eus",
                  "fr": "fra", "pt": "por", "it": "ita", "oc": "oci"}

# Pairs (source, target) in BCP-47 primary subtags that Debian's Apertium packages provide and
# that `livetranslate up` installs or documents. Mode names are "<src3>-<tgt3>".
APERTIUM_PAIRS: dict[tuple[str, str], str] = {
    ("en", "es"): "eng-spa",
    ("es", "en"): "spa-eng",
}


def primary(code: str) -> str:
    return code.split("-", 1)[0].lower()


def apertium_mode(source: str, target: str) -> str | None:
    return APERTIUM_PAIRS.get((primary(source), primary(target)))


def backend_problems(backend: str, source: str, targets: list[str], *,
                     endpoint: str | None = None) -> list[str]:
    """Reasons, each naming the spec field, why ``backend`` cannot serve this spec (empty = fine).

    ``backend`` is the resolved one (vllm, openai or apertium), never ``auto``.
    """
    problems: list[str] = []
    if backend == "apertium":
        if source == "auto":
            problems.append("spec.sourceLanguage: the apertium backend needs a fixed source language, not 'auto'")
        else:
            for i, target in enumerate(targets):
                if apertium_mode(source, target) is None:
                    problems.append(
                        f"spec.targetLanguages[{i}]: the apertium backend has no {source}->{target} pair "
                        f"(available: {', '.join(f'{s}->{t}' for s, t in sorted(APERTIUM_PAIRS))})"
                    )
    elif backend == "openai" and not endpoint:
        problems.append("spec.translation.endpoint: the openai backend needs the base URL of an "
                        "OpenAI-compatible server")
    return problems

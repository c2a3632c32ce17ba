"""Which language pairs the offline backend serves, from Apertium mode names alone (no Apertium run)."""

from __future__ import annotations

import json

import pytest

from livetranslate.capabilities import (
    APERTIUM_PACKAGES,
    ApertiumPairs,
    backend_problems,
    mode_languages,
    package_of,
    packaged_pairs,
)

MODES = [
    "eng-spa",
    "spa-eng",
    "es-fr",
    "fr-es",
    "eng-cat",
    "cat-eng",
    "spa-cat",
    "es-pt_BR",
    "pt-es",
    "hbs-eng",
    "eng-hbs_SR",
    "spa-cat_valencia",
]


@pytest.mark.parametrize(
    ("mode", "langs"),
    [
        ("eng-spa", ("en", "es")),
        ("es-pt_BR", ("es", "pt-BR")),
        ("spa-cat_valencia", ("es", "ca-valencia")),
        ("hbs-eng", ("sh", "en")),
        ("eng-hbs_SR", ("en", "sr")),
        ("spa-eng_US", ("es", "en-US")),
    ],
)
def test_mode_names_map_to_api_tags(mode: str, langs: tuple[str, str]) -> None:
    assert mode_languages(mode) == langs


def test_a_direct_pair_beats_a_pivot() -> None:
    route = ApertiumPairs(MODES).route("en", "ca")
    assert route is not None and route.modes == ("eng-cat",) and route.via is None and route.quality == "ok"


def test_a_missing_pair_chains_two_modes_through_spanish() -> None:
    pairs = ApertiumPairs(MODES)
    route = pairs.route("en", "fr")
    assert route is not None and route.modes == ("eng-spa", "es-fr") and route.quality == "pivot:es"
    back = pairs.route("fr", "en")
    assert back is not None and back.modes == ("fr-es", "spa-eng") and back.via == "es"


def test_regional_tags_and_aliases_find_their_modes() -> None:
    pairs = ApertiumPairs(MODES)
    # pt-BR from Spanish is the Brazilian mode; a Serbian speaker is translated by the hbs pair
    assert pairs.route("es", "pt-BR").modes == ("es-pt_BR",)  # type: ignore[union-attr]
    assert pairs.route("sr", "en").modes == ("hbs-eng",)  # type: ignore[union-attr]
    assert pairs.route("pt-BR", "en").modes == ("pt-es", "spa-eng")  # type: ignore[union-attr]


def test_no_path_of_two_modes_is_no_route() -> None:
    pairs = ApertiumPairs(MODES)
    assert pairs.route("en", "de") is None
    assert pairs.route("auto", "es") is None
    assert pairs.reaches("es") and not pairs.reaches("de")


def test_offered_lists_direct_targets_then_targets_per_pivot() -> None:
    text = ApertiumPairs(MODES).offered("en")
    assert text.startswith("ca, es, sr; ")
    assert "fr, pt-BR through es" in text


def test_every_packaged_mode_names_two_languages_and_its_package() -> None:
    for package, modes in APERTIUM_PACKAGES.items():
        for mode in modes:
            assert mode_languages(mode) is not None, mode
            assert package_of(mode) == package
    # what the translation image offers from English: more than Spanish, through one pivot at most
    targets = {r.target for r in packaged_pairs().routes("en")}
    assert {"es", "ca", "fr", "it", "pt", "gl", "eo"} <= targets


def test_problems_name_the_package_to_install() -> None:
    # English->French needs eng-spa and es-fr; this machine has only the first
    problems = backend_problems("apertium", "en", ["es", "fr"], installed_modes=["eng-spa", "spa-eng"])
    [problem] = problems
    assert problem.startswith("spec.targetLanguages[1]") and "apertium-fr-es" in problem
    # the image (every packaged mode) serves both, and auto needs only some language reaching each
    assert backend_problems("apertium", "en", ["es", "fr"]) == []
    assert backend_problems("apertium", "auto", ["es", "fr"]) == []
    [bad] = backend_problems("apertium", "en", ["de"])
    assert "no en->de pair" in bad


def test_languages_command_lists_what_the_spec_check_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    from livetranslate.cli import main

    assert main(["languages", "--from", "en", "--to", "fr", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [route] = doc["routes"]
    assert route["modes"] == ["eng-spa", "es-fr"] and route["quality"] == "pivot:es"
    assert route["packages"] == ["apertium-eng-spa", "apertium-fr-es"]
    assert main(["languages"]) == 0
    text = capsys.readouterr().out
    en = next(line for line in text.splitlines() if line.startswith("en "))
    assert "-> bs ca" in en and "through es:" in en and " fr " in en
    # every source the listing names is one the spec check accepts for its direct targets
    for r in packaged_pairs().routes():
        assert backend_problems("apertium", r.source, [r.target]) == [], r


def test_languages_command_refuses_an_unknown_code(capsys: pytest.CaptureFixture[str]) -> None:
    from livetranslate.cli import main

    assert main(["languages", "--to", "xx"]) == 2
    assert "'xx' is not a language code" in capsys.readouterr().err
    assert main(["languages", "--from", "en", "--to", "de"]) == 1  # known, but no offline path


def test_whisper_languages_are_faster_whispers_own_and_tags_map_to_them() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    from livetranslate.capabilities import WHISPER_LANGUAGES, from_whisper, speech_problems, whisper_language

    assert set(_LANGUAGE_CODES) == WHISPER_LANGUAGES
    assert (
        whisper_language("pt-BR") == "pt"
        and whisper_language("nb") == "no"
        and whisper_language("jv") == "jw"
    )
    assert whisper_language("ast") is None and from_whisper("jw") == "jv"
    assert speech_problems("auto") == [] and speech_problems("es-419") == []
    [problem] = speech_problems("ast")
    assert problem.startswith("spec.sourceLanguage: Whisper does not transcribe ast (Asturian)")

"""Prompts, cleanup and quality checks: what decides whether a caption translation is shown."""

from __future__ import annotations

from livetranslate.api import TranslationSpec
from livetranslate.capabilities import backend_problems
from livetranslate.protocol import ContextSegment, TranslateRequest, context_span, context_window
from livetranslate.workloads.translate.quality import (
    Job,
    build_packed_prompt,
    build_prompt,
    check,
    clean_apertium,
    cleanup,
    parse_packed,
)


def test_prompt_carries_session_context_and_asks_for_the_translation_only() -> None:
    # oldest first, as the gateway sends it
    ctx = (
        ContextSegment(source="Old segment.", translations={"es": "Segmento viejo."}),
        ContextSegment(source="Earlier one.", translations={"es": "Uno anterior."}),
        ContextSegment(
            source="We built a robot called Max.", translations={"es": "Construimos un robot llamado Max."}
        ),
        ContextSegment(source="It can walk.", translations={"es": "Puede caminar."}),
    )
    prompt = build_prompt(Job("He is very fast.", "en", "es", ctx), context_segments=2)
    assert "Spanish translation" in prompt.text and "only" in prompt.text
    # at most 2 * 2 - 1 context segments (the gateway's growing window), with the translations
    # users already saw, before the segment
    assert "English: It can walk.\nSpanish: Puede caminar." in prompt.text
    assert "Construimos un robot llamado Max." in prompt.text and "Uno anterior." in prompt.text
    assert "Old segment." not in prompt.text
    assert prompt.text.endswith("English: He is very fast.\nSpanish:")
    # the chat shape replays the same context as earlier turns
    roles = [m["role"] for m in prompt.messages]
    assert roles[0] == "system" and roles[-1] == "user"
    assert {"role": "assistant", "content": "Puede caminar."} in prompt.messages


def test_context_without_this_target_is_left_out() -> None:
    ctx = (ContextSegment(source="Hello there.", translations={"fr": "Bonjour."}),)
    prompt = build_prompt(Job("Good.", "en", "de", ctx), 3)
    assert "Hello there." not in prompt.text


def test_cleanup_strips_wrappers() -> None:
    assert cleanup(' "Hola a todos."', "es") == "Hola a todos."
    assert cleanup("Here is the translation: «Hola a todos.»", "es") == "Hola a todos."
    assert cleanup("Spanish: Hola a todos.\n\nNote: informal register.", "es") == "Hola a todos."
    assert cleanup("Sure! Here's the Spanish translation:\nHola.", "es") == "Hola."
    assert cleanup("Hola a todos. (Note: literal)", "es") == "Hola a todos."
    assert cleanup("  Hola,   amigos  ", "es") == "Hola, amigos"


def test_apertium_markers_are_removed() -> None:
    assert (
        clean_apertium("Hola Mundo, dónde es la #canal de *Zorblax?")
        == "Hola Mundo, dónde es la canal de Zorblax?"
    )


def test_checks_catch_what_users_would_see_as_broken() -> None:
    src = "The new product ships next week."
    assert check(src, "El nuevo producto sale la semana que viene.", "en", "es").ok
    assert check(src, "", "en", "es").reason == "empty"
    assert check(src, "The new product ships next week.", "en", "es").reason == "echo"
    assert check(src, "This is the product and it ships in the week.", "en", "es").reason == "wrong_language"
    assert check(src, "Новый продукт выйдет на следующей неделе.", "en", "es").reason == "wrong_language"
    assert check(src, "Новый продукт выйдет на следующей неделе.", "en", "ru").ok
    assert check(src, "El producto " * 40, "en", "es").reason == "runaway"
    assert check(src, "El nuevo producto", "en", "es", truncated=True).reason == "runaway"
    # names and numbers may legitimately stay the same
    assert check("OpenAI.", "OpenAI.", "en", "es").ok
    assert check(src, "新产品下周发货。", "en", "zh").ok


def test_packed_prompt_and_parse() -> None:
    jobs = [Job("One.", "en", "es"), Job("Two.", "en", "es"), Job("Three.", "en", "es")]
    prompt = build_packed_prompt(jobs, 3)
    assert "1. One.\n2. Two.\n3. Three.\nSpanish:\n1." in prompt.text
    assert parse_packed(" Uno.\n2. Dos.\n3. Tres.", 3) == ["Uno.", "Dos.", "Tres."]
    # a skipped line is reported as missing, never shifted onto the wrong segment
    assert parse_packed(" Uno.\n3. Tres.", 3) == ["Uno.", None, "Tres."]


def test_backend_problems_name_the_field() -> None:
    assert backend_problems("apertium", "en", ["es"]) == []
    problems = backend_problems("apertium", "en", ["es", "de"])
    assert len(problems) == 1 and problems[0].startswith("spec.targetLanguages[1]")
    missing = backend_problems("apertium", "en", ["ca"], installed_modes={"eng-spa"})
    assert "apertium-eng-cat" in missing[0]
    assert backend_problems("vllm", "en", ["de", "ja"]) == []
    assert backend_problems("vllm", "en", ["qq"])[0].startswith("spec.targetLanguages[0]")


def test_a_sessions_prompts_extend_each_other_between_window_jumps() -> None:
    # The gateway's context window only grows between jumps, so an engine's prefix cache finds
    # each prompt's start (previous prompt + the translation it produced) already computed.
    size, said = 3, [(f"Line {i}.", f"Linea {i}.") for i in range(14)]
    previous: tuple[str, str] | None = None
    jumps = []
    for n in range(len(said)):
        window = context_window(n, size)
        assert min(n, size) <= len(window) <= context_span(size) and window.stop == n
        ctx = tuple(ContextSegment(source=said[i][0], translations={"es": said[i][1]}) for i in window)
        prompt = build_prompt(Job(said[n][0], "en", "es", ctx), size).text
        if previous is not None and not prompt.startswith(previous[0] + " " + previous[1]):
            jumps.append(n)
        previous = (prompt, said[n][1])
    assert jumps == [6, 9, 12]


def test_the_widest_context_a_pipeline_can_ask_for_fits_a_translate_request() -> None:
    # contextSegments at its maximum makes the gateway send context_span of it: the internal
    # request must take that many, or every such request would be refused with 422.
    limit = next(m.le for m in TranslationSpec.model_fields["contextSegments"].metadata if hasattr(m, "le"))
    ctx = [ContextSegment(source=f"Line {i}.") for i in range(context_span(limit))]
    req = TranslateRequest(sessionId="s", segmentId=99, text="Next.", targetLanguages=["es"], context=ctx)
    assert len(req.context) == context_span(limit) == 2 * limit - 1

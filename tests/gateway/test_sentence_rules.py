"""Sentence assembly rules (workloads/gateway/sentences.py): pure, no gateway."""

from __future__ import annotations

from livetranslate.workloads.gateway.sentences import (
    Piece,
    SentenceAssembler,
    SentenceRules,
    ends_clause,
    ends_sentence,
)


def feed(
    asm: SentenceAssembler, texts: list[str], seconds: float = 1.0
) -> list[tuple[int, list[int], str, str]]:
    """Add finals ``texts`` (one ``seconds`` each); returns the closed (id, segment ids, text, reason)."""
    closed: list[tuple[int, list[int], str, str]] = []
    for i, text in enumerate(texts):
        piece = Piece(_next_segment(asm, closed), text, i * seconds, (i + 1) * seconds)
        closed += [(s.id, s.segment_ids, s.text, s.reason) for s in asm.add(piece)]
    return closed


def _next_segment(asm: SentenceAssembler, closed: list[tuple[int, list[int], str, str]]) -> int:
    done = sum(len(c[1]) for c in closed)
    return done + (len(asm.open.pieces) if asm.open else 0)


def test_sentence_final_punctuation_closes_whatever_the_script() -> None:
    for text in (
        "on such short notice.",
        "Is that clear?",
        "Wow!",
        "会议开始了。",
        "本当ですか？",
        "He said “stop.”",
        "(see the appendix.)",
        "Well…",
    ):
        assert ends_sentence(text), text
    for text in ("Good morning,", "Mr.", "e.g.", "we need", "12.5", "Dr."):
        assert not ends_sentence(text), text
    assert ends_clause("Good morning,") and ends_clause("first;") and ends_clause("这样，")
    assert not ends_clause("morning")


def test_finals_group_into_sentences_with_consecutive_ids() -> None:
    asm = SentenceAssembler(SentenceRules())
    closed = feed(
        asm,
        [
            "Good morning,",
            "everyone, and thanks",
            "for joining",
            "on such short notice.",
            "Let's begin",
            "with the budget.",
        ],
    )
    assert closed == [
        (
            0,
            [0, 1, 2, 3],
            "Good morning, everyone, and thanks for joining on such short notice.",
            "punctuation",
        ),
        (1, [4, 5], "Let's begin with the budget.", "punctuation"),
    ]
    assert asm.open is None and asm.next_id == 2


def test_an_abbreviation_does_not_end_a_sentence() -> None:
    asm = SentenceAssembler(SentenceRules())
    assert feed(asm, ["Please welcome Dr.", "Smith to the call."]) == [
        (0, [0, 1], "Please welcome Dr. Smith to the call.", "punctuation")
    ]


def test_the_end_of_an_utterance_closes_an_unpunctuated_sentence() -> None:
    asm = SentenceAssembler(SentenceRules())
    assert feed(asm, ["so the next", "item is"]) == []
    assert asm.open is not None and asm.open.id == 0
    [s] = asm.utterance_end()
    assert (s.id, s.segment_ids, s.text, s.reason) == (0, [0, 1], "so the next item is", "utterance")
    assert asm.utterance_end() == []  # nothing open: nothing to close


def test_a_sentence_that_never_ends_is_cut_after_the_last_clause_at_the_bound() -> None:
    asm = SentenceAssembler(SentenceRules(max_words=8))
    # No final ends on a clause boundary (the comma is inside one): the bound closes all of it.
    closed = feed(asm, ["we went to the", "market, then", "we went home", "and we"])
    assert closed == [(0, [0, 1, 2], "we went to the market, then we went home", "bound")]
    assert asm.open is not None and asm.open.segment_ids == [3]
    # A final that ends a clause: the cut falls after it, and the rest stays open.
    asm = SentenceAssembler(SentenceRules(max_words=8))
    closed = feed(asm, ["we went to the market,", "then we went", "home and"])
    assert closed == [(0, [0], "we went to the market,", "bound")]
    assert asm.open is not None and asm.open.id == 1 and asm.open.segment_ids == [1, 2]


def test_the_bound_in_seconds_holds_for_speech_without_words_between_spaces() -> None:
    asm = SentenceAssembler(SentenceRules(max_seconds=3.0))
    closed = feed(asm, ["我们今天", "讨论预算", "和计划"], seconds=1.5)
    assert [c[1] for c in closed] == [[0, 1]]


def test_a_one_word_sentence_and_a_final_that_is_only_punctuation() -> None:
    asm = SentenceAssembler(SentenceRules())
    assert feed(asm, ["Yes."]) == [(0, [0], "Yes.", "punctuation")]
    asm = SentenceAssembler(SentenceRules())
    assert feed(asm, ["that is all", "."]) == [(0, [0, 1], "that is all .", "punctuation")]


def test_final_unit_translates_every_final_alone() -> None:
    asm = SentenceAssembler(SentenceRules(unit="final"))
    assert [c[1] for c in feed(asm, ["Good morning,", "everyone"])] == [[0], [1]]


def test_a_resumed_session_continues_its_open_sentence_under_the_same_id() -> None:
    asm = SentenceAssembler(SentenceRules(), next_id=7)
    asm.restore([Piece(20, "and the", 0.0, 1.0)])
    [s] = asm.add(Piece(21, "next one.", 1.0, 2.0))
    assert (s.id, s.segment_ids, s.text) == (7, [20, 21], "and the next one.")
    assert asm.next_id == 8


def test_a_change_of_detected_language_starts_a_new_sentence() -> None:
    asm = SentenceAssembler(SentenceRules())
    assert asm.add(Piece(0, "Good morning", 0, 1, "en")) == []
    [closed] = asm.add(Piece(1, "buenos días", 1, 2, "es"))
    assert (closed.segment_ids, closed.reason, closed.language) == ([0], "language", "en")
    assert asm.open is not None and asm.open.language == "es" and asm.open.segment_ids == [1]
    # finals without a detected language (a fixed source) never split a sentence
    assert asm.add(Piece(2, "a todos", 2, 3)) == [] and asm.open.segment_ids == [1, 2]


def test_finals_in_a_script_without_spaces_join_without_one() -> None:
    """Whisper's Japanese or Chinese finals may end inside a word ("おは" + "ようございます"): the
    sentence a listener reads and the translator gets has no space inserted there."""
    asm = SentenceAssembler(SentenceRules())
    closed = feed(
        asm, ["みなさん、おは", "ようございます。", "Good morning", "everyone.", "会议", "开始了。"]
    )
    assert [c[2] for c in closed] == [
        "みなさん、おはようございます。",
        "Good morning everyone.",
        "会议开始了。",
    ]
    mixed = feed(SentenceAssembler(SentenceRules()), ["LiveTranslate", "は便利です。"])
    assert mixed[0][2] == "LiveTranslateは便利です。"

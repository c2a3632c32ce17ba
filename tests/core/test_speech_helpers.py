from __future__ import annotations

from livetranslate_testing.speech import word_error_rate


def test_word_error_rate() -> None:
    assert word_error_rate("The meeting starts at 5.", "the meeting starts at five") == 0
    assert word_error_rate("a b c d", "a x c") == 0.5
    # Whisper writes digits where a script spells the number out.
    assert word_error_rate("It leaves every twenty five minutes.", "It leaves every 25 minutes") == 0
    assert word_error_rate("Sales grew by twelve percent.", "Sales grew by 12%.") == 0

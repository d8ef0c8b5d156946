"""The default prompt redaction (gateway/accounting/redaction.py): e-mail addresses and runs of
4+ digits go, the rest of the text stays."""

from __future__ import annotations

import pytest

from gateway.accounting.redaction import DefaultRedactor, redactor


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("write to bob.smith+news@mail.example.co.uk today", "write to [email] today"),
        ("call +44 20 7946 0958 or 555-1234", "call [digits] or [digits]"),
        ("card 4111 1111 1111 1111, exp 12/27", "card [digits], exp 12/27"),
        ("order 12345: where is it?", "order [digits]: where is it?"),
        ("what is 17 * 23 + 4? 3 apples, 1.5 kg", "what is 17 * 23 + 4? 3 apples, 1.5 kg"),
        ("no numbers at all", "no numbers at all"),
    ],
)
def test_the_default_takes_emails_and_long_digit_runs(text: str, kept: str) -> None:
    assert DefaultRedactor().redact(text) == kept


def test_none_keeps_the_text_and_an_unknown_name_is_refused() -> None:
    assert redactor("none").redact("a@b.io 12345") == "a@b.io 12345"
    assert redactor("default").redact("a@b.io 12345") == "[email] [digits]"
    with pytest.raises(ValueError, match="prompt_redaction"):
        redactor("strict")

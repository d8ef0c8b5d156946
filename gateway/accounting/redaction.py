"""Redaction of prompt text before the request log keeps it (routes with `log_prompts: true`).

The default takes out what most often identifies a person or an account and teaches a router
nothing: e-mail addresses become `[email]` and runs of 4 or more digits (phone, card, account
and order numbers; spaces or dashes between digit groups count as one run) become `[digits]`.
Shorter numbers stay: "3 apples", "in 2 steps" and small arithmetic are what a router reads to
judge a query's difficulty. Years (4 digits) are redacted too: better one lost year than one
kept PIN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

EMAIL = "[email]"
DIGITS = "[digits]"


class Redactor(Protocol):
    """Turns a prompt into the text the request log may keep."""

    def redact(self, text: str) -> str: ...


def _email_pattern() -> re.Pattern[str]:
    return re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def _digits_pattern() -> re.Pattern[str]:
    # Digit groups joined by single spaces, dashes or dots ("+44 20 7946 0958", "4111-1111-...")
    # are one run; the run is redacted when it holds 4 digits or more in all.
    return re.compile(r"\+?\d(?:[ .\-]?\d)*")


@dataclass(frozen=True, slots=True)
class DefaultRedactor:
    """E-mail addresses -> `[email]`, runs of `min_digits` digits or more -> `[digits]`."""

    min_digits: int = 4
    _email: re.Pattern[str] = field(default_factory=_email_pattern, repr=False)
    _digits: re.Pattern[str] = field(default_factory=_digits_pattern, repr=False)

    def redact(self, text: str) -> str:
        text = self._email.sub(EMAIL, text)
        return self._digits.sub(self._digit_run, text)

    def _digit_run(self, match: re.Match[str]) -> str:
        run = match.group(0)
        return DIGITS if sum(c.isdigit() for c in run) >= self.min_digits else run


@dataclass(frozen=True, slots=True)
class NoRedaction:
    """Keeps the text as it is (`prompt_redaction: none`: the operator's own choice)."""

    def redact(self, text: str) -> str:
        return text


def redactor(name: str) -> Redactor:
    """The redactor a route's `prompt_redaction` names."""
    if name == "none":
        return NoRedaction()
    if name == "default":
        return DefaultRedactor()
    raise ValueError(f"unknown prompt_redaction {name!r}: use default or none")

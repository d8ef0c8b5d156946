"""`--since/--until` values: an ISO date or date-time (UTC when no offset is given) or a span
back from now such as 30m, 24h, 7d, 2w."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_when(text: str, now: float) -> float:
    """Unix seconds for `text`; ValueError with a usage hint when it is neither form."""
    value = text.strip()
    match = _RELATIVE.match(value.lower())
    if match:
        return now - float(match[1]) * _UNIT_S[match[2]]
    if value.lower() == "now":
        return now
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r}: expected an ISO date or time (2026-01-31, 2026-01-31T12:00) "
            "or a span back from now (30m, 24h, 7d, 2w)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the log's days and hours are UTC too
    return moment.timestamp()

"""UTC calendar periods for budgets and pacing: which window a moment falls in, and when the
window resets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


def period_bounds(period: str, now: float) -> tuple[datetime, datetime]:
    """[start, end) of the day, ISO week (Monday first), month or `total` containing `now`."""
    t = datetime.fromtimestamp(now, UTC)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end
    if period == "total":
        return datetime(1970, 1, 1, tzinfo=UTC), FOREVER
    raise ValueError(f"unknown period {period!r}")


def window_id(period: str, now: float) -> str:
    """A stable name for the window, used in state keys: 2026-11-23, 2026-W48, 2026-11, all."""
    start, _ = period_bounds(period, now)
    if period == "day":
        return start.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return start.strftime("%Y-%m")
    return "all"


def resets_at(period: str, now: float) -> str:
    _, end = period_bounds(period, now)
    return "never" if end == FOREVER else end.strftime("%Y-%m-%d %H:%M UTC")

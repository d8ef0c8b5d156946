"""The request log keeps every field of every record, whatever the write pattern."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path

from gateway.accounting.request_log import RequestLog, RequestRecord, read_records


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite")
    rec = RequestRecord(
        "rg-1", 1700000000.5, "chat", True, api_key_id="key-1", route="auto", model="m",
        endpoint="http://e/v1", prompt_tokens=11, completion_tokens=22, usage_exact=False,
        cost_usd=0.125, latency_ms=4.5, ttft_ms=1.5, status=499, error="client disconnected",
        fallbacks=["a", "b"], extra={"predictions": {"m": {"quality": 0.5}}},
    )  # fmt: skip
    log.write(rec)
    assert log.flush()
    log.close()
    (row,) = read_records(tmp_path / "r.sqlite")
    expected = asdict(rec) | {"stream": 1, "usage_exact": 0}
    assert row == expected


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite", window_s=0.01)

    def writer(t: int) -> None:
        for i in range(500):
            log.write(RequestRecord(f"rg-{t}-{i}", float(i), "chat", False, cost_usd=0.001))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.flush()
    log.close()
    rows = read_records(tmp_path / "r.sqlite")
    assert len(rows) == 2000 == len({r["request_id"] for r in rows})
    assert round(sum(r["cost_usd"] for r in rows), 9) == 2.0


def test_an_older_log_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the first release's table: no team, no prompt
        db.execute(
            "CREATE TABLE requests (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, api_key_id "
            "TEXT, endpoint_kind TEXT NOT NULL, route TEXT, model TEXT, endpoint TEXT, stream "
            "INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens "
            "INTEGER NOT NULL DEFAULT 0, usage_exact INTEGER NOT NULL DEFAULT 1, cost_usd REAL "
            "NOT NULL DEFAULT 0, latency_ms REAL, ttft_ms REAL, status INTEGER NOT NULL, error "
            "TEXT, fallbacks TEXT NOT NULL DEFAULT '[]', extra TEXT NOT NULL DEFAULT '{}')"
        )
        db.execute(
            "INSERT INTO requests (request_id, ts, endpoint_kind, stream, status) "
            "VALUES ('old', 1, 'chat', 0, 200)"
        )
    db.close()
    log = RequestLog(path)
    log.write(
        RequestRecord(
            "new", 2.0, "chat", False, team="red", prompt="what is [digits]?", cached_tokens=3
        )
    )
    assert log.flush()
    log.close()
    old, new = read_records(path)
    assert (old["team"], old["prompt"], old["cached_tokens"]) == (None, None, 0)
    assert (new["team"], new["prompt"], new["cached_tokens"]) == ("red", "what is [digits]?", 3)


async def test_a_durable_log_answers_once_the_row_is_stored(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite", window_s=0.005, durable=True)
    for i in range(3):
        log.write(RequestRecord(f"rg-{i}", float(i), "chat", False))
        assert await log.stored()
        # No flush: stored() returned, so the row is in the file already.
        assert [r["request_id"] for r in read_records(tmp_path / "r.sqlite")][-1] == f"rg-{i}"
    assert await log.stored()  # nothing queued: at once
    log.close()


class StuckSink:
    """A store that hangs (a frozen database) until released."""

    location = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.rows: list[tuple[object, ...]] = []

    def store(self, records: list[tuple[object, ...]], feedback: list[tuple[object, ...]]) -> None:
        self.release.wait(10)
        self.rows += records

    def retry_in(self) -> float | None:
        return None

    def tick(self) -> None:
        pass

    def status(self) -> dict[str, object]:
        return {"store": "stuck"}

    def close(self) -> None:
        pass


async def test_a_hung_store_delays_a_durable_answer_only_up_to_the_timeout() -> None:
    sink = StuckSink()
    log = RequestLog(sink, window_s=0.001, durable=True)
    log.write(RequestRecord("rg-1", 1.0, "chat", False))
    assert await log.stored(timeout=0.2) is False  # answered anyway; the row stays queued
    sink.release.set()
    assert log.flush() and [r[0] for r in sink.rows] == ["rg-1"]
    log.close()

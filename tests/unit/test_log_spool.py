"""The Postgres log's spool file: rows kept in order across reopenings, a torn last line cut
off, one owner at a time; and a Postgres sink that cannot connect spools every row. (No
process: the unreachable Postgres is a closed loopback port. The real server's outages are in
tests/system/test_request_log_postgres.py.)"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.accounting.log_store import (
    LogError,
    Spool,
    SpoolEntry,
    SpoolError,
    default_spool_path,
    open_request_log,
)
from gateway.accounting.log_store.spool import FEEDBACK, REQUEST
from gateway.accounting.request_log import COLUMNS, FeedbackRecord, RequestRecord


def entries(start: int, n: int) -> list[SpoolEntry]:
    return [SpoolEntry(REQUEST, (f"rg-{i}", float(i), "chat", 0, None)) for i in range(start, n)]


def spooled(spool: Spool, size: int = 1000) -> list[SpoolEntry]:
    return [e for batch in spool.batches(size) for e in batch]


def test_rows_come_back_in_order_across_a_reopening(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    spool = Spool(path)
    spool.append(entries(0, 3))
    spool.append([SpoolEntry(FEEDBACK, ("rg-1", "user", "", 0.5, 9.0, None, "ok"))])
    spool.append(entries(3, 5))
    assert spool.depth == 6
    spool.close()
    again = Spool(path)  # as after a crash: the file is all there is
    assert again.depth == 6
    got = spooled(again, size=4)
    assert [e.row[0] for e in got] == ["rg-0", "rg-1", "rg-2", "rg-1", "rg-3", "rg-4"]
    assert got[3] == SpoolEntry(FEEDBACK, ("rg-1", "user", "", 0.5, 9.0, None, "ok"))
    assert [len(b) for b in again.batches(4)] == [4, 2]
    again.clear()
    assert again.depth == 0 and path.read_bytes() == b"" and spooled(again) == []
    again.close()


def test_a_torn_last_line_is_cut_off_and_appends_start_clean(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    spool = Spool(path)
    spool.append(entries(0, 2))
    spool.close()
    with path.open("ab") as f:  # a process that died in the middle of a write
        f.write(b'["r", ["rg-torn", 1.0')
    spool = Spool(path)
    assert spool.depth == 2
    spool.append(entries(2, 3))
    assert [e.row[0] for e in spooled(spool)] == ["rg-0", "rg-1", "rg-2"]
    spool.close()


def test_a_spooled_request_is_found_by_id_last_copy_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(entries(0, 3))
    spool.append([SpoolEntry(FEEDBACK, ("rg-1", "user", "", 0.5, 9.0, None, None))])
    spool.append([SpoolEntry(REQUEST, ("rg-1", 99.0, "chat", 0, None))])
    assert spool.find(REQUEST, "rg-1") == ("rg-1", 99.0, "chat", 0, None)
    assert spool.find(FEEDBACK, "rg-1") == ("rg-1", "user", "", 0.5, 9.0, None, None)
    assert spool.find(REQUEST, "rg-9") is None
    spool.close()


def test_a_line_that_is_not_a_row_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    path.write_bytes(b'["r", ["rg-0", 1.0]]\nnot json\n["r", ["rg-1", 2.0]]\n')
    spool = Spool(path)
    assert [e.row[0] for e in spooled(spool)] == ["rg-0", "rg-1"]
    spool.close()


def test_one_process_owns_a_spool(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    first = Spool(path)
    with pytest.raises(SpoolError, match="another process holds this log spool"):
        Spool(path)
    first.close()
    Spool(path).close()  # free again once closed


def test_the_default_spool_sits_beside_the_state_file_one_per_replica(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    assert default_spool_path(state, None) == tmp_path / "routegate-log-spool.jsonl"
    assert (
        default_spool_path(state, "host-1:8080")
        == tmp_path / "routegate-log-spool-host-1_8080.jsonl"
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket closes


def test_an_unreachable_postgres_spools_every_row_and_a_restart_keeps_them(
    tmp_path: Path,
) -> None:
    url = f"postgresql://routegate@127.0.0.1:{closed_port()}/log"
    path = tmp_path / "spool.jsonl"
    log = open_request_log(url, replica="r1", spool_path=path, window_s=0.01)
    for i in range(20):
        log.write(RequestRecord(f"rg-{i}", float(i), "chat", False, cost_usd=0.01))
    log.write_feedback(FeedbackRecord("rg-3", "user", 1.0, 30.0))
    assert log.flush()
    status = log.status()
    assert status["store"] == "postgres" and status["connected"] is False
    assert status["spooled_total"] == 21 and status["spool_depth"] == 21
    assert "127.0.0.1" in status["last_error"]
    found = log.sink.find_spooled("rg-7")  # type: ignore[attr-defined]
    assert found is not None and found["request_id"] == "rg-7" and found["replica"] == "r1"
    assert found["fallbacks"] == [] and found["extra"] == {} and found["cost_usd"] == 0.01
    log.close()
    again = Spool(path)  # what the next start-up replays
    got = spooled(again)
    assert [e.row[0] for e in got] == [f"rg-{i}" for i in range(20)] + ["rg-3"]
    assert got[0].row[COLUMNS.index("replica")] == "r1"  # each column in its place
    assert got[0].row[-1] == 0  # cached_tokens, the newest column, last
    assert got[-1].kind == FEEDBACK
    again.close()


def test_a_malformed_url_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="not a usable Postgres URL"):
        open_request_log("postgresql://u@h:1/db?nosuchoption=1", spool_path=tmp_path / "s")


def test_a_second_process_on_the_same_spool_takes_one_of_its_own(tmp_path: Path) -> None:
    url = f"postgresql://routegate@127.0.0.1:{closed_port()}/log"
    path = tmp_path / "spool.jsonl"
    first = open_request_log(url, spool_path=path, window_s=0.01)
    second = open_request_log(url, spool_path=path, window_s=0.01)  # another worker, say
    try:
        assert first.status()["spool"] == str(path)
        assert second.status()["spool"] == str(tmp_path / f"spool.{os.getpid()}.jsonl")
        second.write(RequestRecord("rg-2", 2.0, "chat", False))
        assert second.flush() and second.status()["spool_depth"] == 1
        assert first.status()["spool_depth"] == 0
    finally:
        first.close()
        second.close()

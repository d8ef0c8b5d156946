"""Several writers on one SQLite request log, as `routegate serve --workers N` runs them: each
its own connection and writer thread; none may lose a row to the other's lock."""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.accounting.request_log import RequestLog, RequestRecord, read_records


def test_concurrent_writers_lose_no_row(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    logs = [RequestLog(path, batch=64, window_s=0.001) for _ in range(3)]
    per_writer = 1500

    def write(n: int, log: RequestLog) -> None:
        for i in range(per_writer):
            log.write(RequestRecord(f"w{n}-{i}", float(i), "chat", False, status=200))

    threads = [threading.Thread(target=write, args=(n, log)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        assert log.flush(timeout=60)
        log.close()
    ids = {r["request_id"] for r in read_records(path)}
    assert len(ids) == 3 * per_writer

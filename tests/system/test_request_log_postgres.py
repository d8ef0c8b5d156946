"""The request log on a real Postgres beside the SQLite default: the same log behaviour on
both stores; the readers (report, dashboard, policy simulation, training records, learned
plans) agree between them; an outage spools rows that are replayed once each when Postgres
returns, also by the next process after a crash; and `routegate serve --log postgresql://...`
keeps every answered request exactly once through an outage and a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.accounting.log_records import records_from_log
from gateway.accounting.log_store import Spool, SpoolEntry, open_reader, open_request_log
from gateway.accounting.log_store.spool import FEEDBACK, REQUEST
from gateway.accounting.request_log import (
    COLUMNS,
    FeedbackRecord,
    RequestLog,
    RequestRecord,
    SqliteSink,
)
from gateway.admission.learned_plan import read_shape
from gateway.dashboard.data import request_stats
from gateway.report.build import build_report
from gateway.report.policy_simulation import read_log_rows, simulate_log
from policies.loader import example_policy_path, load_policy
from tests.support.gateway import GatewayProcess
from tests.support.postgres_server import PostgresServer
from tests.support.upstream import Upstream

STORES = ["sqlite", "postgres"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty log location on each store: a SQLite path or a Postgres URL."""
    if request.param == "sqlite":
        return str(tmp_path / "requests.sqlite")
    return str(request.getfixturevalue("postgres_url"))


def open_log(location: str, tmp_path: Path, **kwargs: Any) -> RequestLog:
    return open_request_log(location, spool_path=tmp_path / "spool.jsonl", **kwargs)


def rows_of(location: str) -> list[dict[str, Any]]:
    return [row for batch in open_reader(location).batches() for row in batch]


@pytest.fixture
def running(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, for a test that stops it: started again whatever happens."""
    yield postgres_server
    if postgres_server.proc is None or postgres_server.proc.poll() is not None:
        postgres_server.start()


# -- the same behaviour on either store ---------------------------------------------------------


def test_round_trip_keeps_every_field(store: str, tmp_path: Path) -> None:
    log = open_log(store, tmp_path, replica="r1")
    rec = RequestRecord(
        "rg-1", 1700000000.5, "chat", True, api_key_id="key-1", route="auto", model="m",
        endpoint="http://e/v1", prompt_tokens=11, completion_tokens=22, usage_exact=False,
        cost_usd=0.125, latency_ms=4.5, ttft_ms=1.5, status=499, error="client disconnected",
        fallbacks=["a", "b"], extra={"predictions": {"m": {"quality": 0.5}}}, team="red",
        prompt="what is [digits]?", api="messages", cached_tokens=8,
    )  # fmt: skip
    log.write(rec)
    assert log.flush()
    log.close()
    (row,) = rows_of(store)
    assert row == asdict(rec) | {"stream": 1, "usage_exact": 0, "replica": "r1"}
    assert open_reader(store).find("rg-1") == row
    assert open_reader(store).find("rg-none") is None


def test_concurrent_writers_lose_nothing(store: str, tmp_path: Path) -> None:
    log = open_log(store, tmp_path, window_s=0.01)

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
    rows = rows_of(store)
    assert len(rows) == 2000 == len({r["request_id"] for r in rows})
    assert round(sum(r["cost_usd"] for r in rows), 9) == 2.0
    assert open_reader(store).count() == 2000
    assert open_reader(store).count(since=100.0, until=200.0) == 400


def test_a_request_id_is_stored_once(store: str, tmp_path: Path) -> None:
    log = open_log(store, tmp_path)
    log.write(RequestRecord("rg-1", 1.0, "chat", False, cost_usd=0.5))
    assert log.flush()
    log.write(RequestRecord("rg-1", 1.0, "chat", False, cost_usd=0.5))  # a replay, say
    assert log.flush()
    log.close()
    assert [r["request_id"] for r in rows_of(store)] == ["rg-1"]


def test_feedback_replaces_its_row(store: str, tmp_path: Path) -> None:
    log = open_log(store, tmp_path)
    log.write(RequestRecord("rg-1", 1.0, "chat", False, model="m"))
    log.write_feedback(FeedbackRecord("rg-1", "user", 0.2, 2.0, "m", "key-1", "meh"))
    log.write_feedback(FeedbackRecord("rg-1", "judge", 0.9, 3.0, "m"))
    assert log.flush()
    log.write_feedback(FeedbackRecord("rg-1", "user", 1.0, 4.0, "m", "key-1", "good after all"))
    assert log.flush()
    log.close()
    got = {(f["source"], f["score"], f["comment"]) for f in open_reader(store).feedback()}
    assert got == {("user", 1.0, "good after all"), ("judge", 0.9, None)}


def test_an_empty_or_missing_log_reads_as_no_traffic(store: str, tmp_path: Path) -> None:
    reader = open_reader(store)
    assert reader.find("rg-1") is None
    assert reader.shape("route", "r", 0.0, 10.0, 4) == []
    assert reader.traffic(0.0, 1.0, 10).cells == []


# -- the readers agree between the stores --------------------------------------------------------


def traffic(now: float) -> list[tuple[RequestRecord, FeedbackRecord | None]]:
    """A mixed hour of requests: routes, models, keys, APIs, errors, cache hits, replicas."""
    out = []
    for i in range(240):
        model = ("tiny-small", "tiny-large", "gpt-4o-mini")[i % 3]
        rec = RequestRecord(
            f"rg-{i:04d}", now - 3600 + i * 15 + 0.25, "chat", i % 4 == 0,
            api_key_id=f"key-{i % 5}", route=("auto", "cheap", None)[i % 3], model=model,
            prompt_tokens=10 + i, completion_tokens=3 + i % 17, cost_usd=1e-6 * (i + 1) * 3,
            latency_ms=20.0 + i % 50, ttft_ms=5.0, status=500 if i % 23 == 0 else 200,
            extra={"cache": {"hit": i % 7 == 0, "saved_usd": 0.001}} if i % 2 else {},
            team=("red", "blue")[i % 2], prompt=f"question {i}", api=("chat", "messages")[i % 2],
            replica=f"r{i % 3}",
        )  # fmt: skip
        fb = (
            FeedbackRecord(rec.request_id, "user", (i % 10) / 10, rec.ts + 1, model)
            if i % 4 == 1
            else None
        )
        out.append((rec, fb))
    return out


def rounded(value: Any) -> Any:
    """Floats to 12 significant digits, all the way down (sums added in another order)."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def test_every_reader_agrees_between_sqlite_and_postgres(postgres_url: str, tmp_path: Path) -> None:
    now = time.time()
    sqlite = str(tmp_path / "requests.sqlite")
    for location in (sqlite, postgres_url):
        log = open_log(location, tmp_path)
        for rec, fb in traffic(now):
            log.write(RequestRecord(**asdict(rec)))
            if fb is not None:
                log.write_feedback(fb)
        assert log.flush()
        log.close()

    assert rows_of(sqlite) == rows_of(postgres_url)
    assert len(rows_of(postgres_url)) == 240
    policy = load_policy(example_policy_path())
    for by in ("route", "model", "key", "team", "api", "hour", "arm"):
        a = build_report(Path(sqlite), policy, "p", by=by).as_dict()
        b = build_report(postgres_url, policy, "p", by=by).as_dict()
        assert a.pop("log") == sqlite and b.pop("log") == postgres_url
        assert a == b, by
    a_stats, b_stats = request_stats(sqlite, 3600, now), request_stats(postgres_url, 3600, now)
    assert rounded(a_stats) == rounded(b_stats)  # SQL sums: in each database's own order
    assert [r["replica"] for r in b_stats["replicas"]] == ["r0", "r1", "r2"]
    assert sum(r["requests"] for r in b_stats["replicas"]) == 240
    sim_a = simulate_log(policy, "p", read_log_rows(sqlite)).as_dict()
    sim_b = simulate_log(policy, "p", read_log_rows(postgres_url)).as_dict()
    assert sim_a == sim_b
    rec_a, rec_b = records_from_log(sqlite), records_from_log(postgres_url)
    assert rec_a.jsonl() == rec_b.jsonl() and rec_a.records
    for column, owner, requests in (("route", "auto", 80), ("api_key_id", "key-1", 48)):
        shape = (column, owner, now - 3600, now, 24)
        assert rounded(read_shape(sqlite, *shape)) == rounded(read_shape(postgres_url, *shape))
        assert sum(read_shape(postgres_url, *shape)[1]) == requests


# -- outages -----------------------------------------------------------------------------------


def wait_for(check: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def test_an_outage_spools_rows_and_replays_each_once(
    running: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    log = open_log(postgres_url, tmp_path, window_s=0.01)
    ids = iter(range(10**6))

    def burst(n: int) -> None:
        for _ in range(n):
            i = next(ids)
            log.write(RequestRecord(f"rg-{i:05d}", 1000.0 + i, "chat", False, cost_usd=0.01))
            time.sleep(0.002)

    burst(100)
    assert log.flush()
    running.stop()
    burst(150)  # Postgres is away: these go to the spool
    log.write_feedback(FeedbackRecord("rg-00120", "user", 1.0, 5000.0))
    assert log.flush()
    status = log.status()
    assert status["connected"] is False and status["spool_depth"] == 151
    assert status["spooled_total"] >= 151
    assert Path(status["spool"]).stat().st_size > 0
    running.start()
    burst(50)  # arriving while the spool replays: behind it, in order
    assert log.flush()
    wait_for(lambda: log.status()["spool_depth"] == 0, what="the spool to empty")
    status = log.status()
    assert status["replayed_total"] == status["spooled_total"] and status["connected"]
    log.close()
    rows = rows_of(postgres_url)
    assert [r["request_id"] for r in rows] == [f"rg-{i:05d}" for i in range(300)]
    assert [f["request_id"] for f in open_reader(postgres_url).feedback()] == ["rg-00120"]
    assert Path(status["spool"]).stat().st_size == 0


def test_a_spool_left_by_a_crash_is_replayed_at_start_up(postgres_url: str, tmp_path: Path) -> None:
    log = open_log(postgres_url, tmp_path)  # the schema, and one row already stored
    log.write(RequestRecord("rg-0", 1.0, "chat", False, cost_usd=0.01))
    assert log.flush()
    log.close()
    row = lambda i: RequestRecord(f"rg-{i}", float(i + 1), "chat", False, cost_usd=0.01).row()  # noqa: E731
    spool = Spool(tmp_path / "spool.jsonl")
    # rg-0 again: the crash came after Postgres took a replay and before the truncation.
    spool.append([SpoolEntry(REQUEST, row(i)) for i in range(5)])
    spool.append([SpoolEntry(FEEDBACK, FeedbackRecord("rg-3", "user", 0.5, 9.0).row())])
    # A row spooled by the version before the cached_tokens column: it lacks that last one.
    spool.append([SpoolEntry(REQUEST, row(7)[:-1])])
    spool.close()
    # And a spool of another process that died (a worker's), beside ours.
    orphan = Spool(tmp_path / "spool.4242.jsonl")
    orphan.append([SpoolEntry(REQUEST, row(i)) for i in range(4, 7)])
    orphan.close()
    log = open_log(postgres_url, tmp_path)  # replays before taking new rows
    assert log.status()["spool_depth"] == 0 and log.status()["replayed_total"] == 10
    log.close()
    stored = rows_of(postgres_url)
    assert [r["request_id"] for r in stored] == [f"rg-{i}" for i in range(8)]
    assert stored[-1]["cached_tokens"] == 0
    assert (tmp_path / "spool.jsonl").read_bytes() == b""
    assert (tmp_path / "spool.4242.jsonl").read_bytes() == b""


def test_migrations_are_versioned_and_applied_once(postgres_url: str, tmp_path: Path) -> None:
    for _ in range(2):  # a second start finds nothing to apply
        open_log(postgres_url, tmp_path).close()
    with psycopg.connect(postgres_url) as conn:
        applied = [
            r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY 1")
        ]
    assert applied == ["0001.requests-and-feedback", "0002.replica", "0003.cached-tokens"]


def test_replicas_starting_together_migrate_once(postgres_url: str, tmp_path: Path) -> None:
    logs: list[RequestLog] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            logs.append(open_request_log(postgres_url, spool_path=tmp_path / f"s{i}.jsonl"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, log in enumerate(logs):
        assert log.status()["connected"], log.status()
        log.write(RequestRecord(f"rg-{i}", float(i), "chat", False))
        assert log.flush()
        log.close()
    assert open_reader(postgres_url).count() == 4


# -- the gateway on Postgres --------------------------------------------------------------------

POLICY = """
version: 1
defaults: {{timeout_s: 5, retries: 1, health_interval_s: 0.5}}
models:
  fast:
    provider: vllm
    endpoints: [{url}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [fast]}}
"""
FAST_COST = 7 * 1.0e-6 + 5 * 2.0e-6  # the test upstream reports 7 prompt + 5 completion tokens


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("pg").start()
    yield up
    up.stop()


def ask(gw: GatewayProcess, stream: bool = False) -> str:
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    resp = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-routegate-request-id"]


def ready(gw: GatewayProcess) -> dict[str, Any]:
    resp = httpx.get(gw.url + "/readyz", timeout=5)
    assert resp.status_code == 200, resp.text  # spooling is degraded, not down
    return resp.json()


def metric(gw: GatewayProcess, name: str) -> float:
    for line in httpx.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def report_json(log: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "--log", log, "--format", "json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_serve_on_postgres_keeps_every_answer_once_through_an_outage_and_a_restart(
    running: PostgresServer, postgres_url: str, upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=upstream.base_url))
    spool = tmp_path / "spool.jsonl"
    args = ["--replica", "r1", "--log-spool", str(spool)]
    gw = GatewayProcess(policy, tmp_path, log=postgres_url, args=args).start()
    answered: list[str] = []
    try:
        answered += [ask(gw, stream=i % 2 == 1) for i in range(10)]
        wait_for(lambda: open_reader(postgres_url).count() == 10, what="10 rows in Postgres")
        body = ready(gw)
        assert body["request_log"]["store"] == "postgres"
        assert body["request_log"]["spool_depth"] == 0

        running.stop()  # mid-traffic: every request is still answered
        answered += [ask(gw, stream=i % 2 == 1) for i in range(15)]
        wait_for(lambda: ready(gw)["request_log"]["spool_depth"] == 15, what="15 spooled rows")
        assert metric(gw, "routegate_request_log_spool_depth") == 15
        assert metric(gw, "routegate_request_log_spooled_rows_total") == 15

        running.start()
        answered += [ask(gw) for _ in range(5)]
        wait_for(lambda: ready(gw)["request_log"]["spool_depth"] == 0, what="the replay")
        log_status = ready(gw)["request_log"]
        # The 15, and any of the 5 that came before the writer's next try: behind them.
        assert 15 <= log_status["spooled_total"] == log_status["replayed_total"] <= 20
        spooled = log_status["spooled_total"]
        assert metric(gw, "routegate_request_log_replayed_rows_total") == spooled
        wait_for(lambda: open_reader(postgres_url).count() == 30, what="30 rows in Postgres")

        # Away again, and the gateway stops with rows in its spool: the next start replays them.
        running.stop()
        answered += [ask(gw) for _ in range(7)]
        wait_for(lambda: ready(gw)["request_log"]["spool_depth"] == 7, what="7 spooled rows")
        assert ready(gw)["request_log"]["spooled_total"] == spooled + 7
        # Feedback on an answer whose row waits in the spool: found there, and spooled too.
        fb = httpx.post(gw.url + "/v1/feedback", json={"request_id": answered[-1], "score": 0.25})
        assert fb.status_code == 200, fb.text
        missing = httpx.post(gw.url + "/v1/feedback", json={"request_id": "rg-nope", "score": 1})
        assert missing.status_code == 503  # Postgres away: it may exist there, so not a 404
        wait_for(lambda: ready(gw)["request_log"]["spool_depth"] == 8, what="the spooled score")
    finally:
        gw.stop()
    assert len(spool.read_bytes().splitlines()) == 8
    running.start()
    gw = GatewayProcess(policy, tmp_path, log=postgres_url, args=args).start()
    try:
        wait_for(lambda: ready(gw)["request_log"]["spool_depth"] == 0, what="the start-up replay")
    finally:
        gw.stop()
    rows = rows_of(postgres_url)
    assert sorted(r["request_id"] for r in rows) == sorted(answered)  # each once, none lost
    assert {r["replica"] for r in rows} == {"r1"}
    assert spool.read_bytes() == b""
    assert [(f["request_id"], f["score"]) for f in open_reader(postgres_url).feedback()] == [
        (answered[-1], 0.25)
    ]

    # The report reads the same from Postgres as from a SQLite copy of the same rows, and its
    # total is the upstream's usage priced by the policy.
    copy = tmp_path / "copy.sqlite"
    sink = SqliteSink(copy)
    encoded = [
        {**r, "fallbacks": json.dumps(r["fallbacks"]), "extra": json.dumps(r["extra"])}
        for r in rows
    ]
    sink.store([tuple(r[c] for c in COLUMNS) for r in encoded], [])
    sink.close()
    pg, lite = report_json(postgres_url), report_json(str(copy))
    assert pg.pop("log") == postgres_url and lite.pop("log") == str(copy)
    assert pg == lite
    assert pg["total"]["requests"] == 37
    assert round(pg["total"]["cost_usd"], 2) == round(37 * FAST_COST, 2)
    assert pg["total"]["cost_usd"] == pytest.approx(37 * FAST_COST, rel=1e-9)


def test_a_durable_gateway_killed_right_after_answering_loses_no_row(
    postgres_url: str, upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=upstream.base_url))
    args = ["--replica", "r9", "--log-durable", "--log-spool", str(tmp_path / "spool.jsonl")]
    gw = GatewayProcess(policy, tmp_path, log=postgres_url, args=args).start()
    answered: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(n):
            request_id = ask(gw, stream=i % 2 == 1)
            with lock:
                answered.append(request_id)

    try:
        threads = [threading.Thread(target=client, args=(10,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gw.signal(signal.SIGKILL)  # at once: no shutdown, no flush, no last replay
        gw.stop()
    assert len(answered) == 40
    assert sorted(r["request_id"] for r in rows_of(postgres_url)) == sorted(answered)

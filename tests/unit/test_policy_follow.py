"""Policy across replicas, in-process (gateway/reloader.py's shared mode): PolicyHolders that
share one store stand for replicas. A published version is loaded by every one, a replica that
rejects it keeps its previous version and says so in the store, a replica started later loads
the latest, and a text the publishing replica rejects publishes nothing. Real processes on a
real redis-server: tests/system/test_policy_fleet.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.metrics import Metrics
from gateway.reloader import POLL_S, PolicyHolder
from gateway.runtime import policy_version
from gateway.state import MemoryState, State
from policies.loader import PolicyError
from tests.support.fake_backend import FakeBackends
from tests.support.inprocess import in_process_gateway

POLICY = """
version: 1
models:
  alpha:
    provider: vllm
    endpoints: [http://alpha.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  beta:
    provider: vllm
    endpoints: [http://beta.invalid/v1]
    pricing: {input_per_1m: 3.0, output_per_1m: 6.0}
routes:
  main: {models: [alpha]}
"""
EDITED = POLICY.replace("main: {models: [alpha]}", "main: {models: [beta]}")
# A third model: valid everywhere, but replica "b"'s backend for it cannot start.
WITH_GAMMA = EDITED.replace(
    "routes:",
    "  gamma:\n    provider: vllm\n    endpoints: [http://gamma.invalid/v1]\n"
    "    pricing: {input_per_1m: 1.0, output_per_1m: 1.0}\nroutes:",
)


class GammaFails(FakeBackends):
    """This replica cannot start model gamma (say, its host is not reachable from here)."""

    def __call__(self, name: str, config: Any) -> Any:
        if name == "gamma":
            raise RuntimeError("gamma cannot start on this replica")
        return super().__call__(name, config)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[State, Any]]:
    """(the shared store, replica(name, fakes=None) -> a started, following PolicyHolder)."""
    store = MemoryState()
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient())

        async def replica(name: str, fakes: FakeBackends | None = None) -> PolicyHolder:
            folder = tmp_path / name
            folder.mkdir()
            (folder / "policy.yaml").write_text(POLICY)
            holder = PolicyHolder(
                folder / "policy.yaml", client, Metrics(), fakes or FakeBackends(), replica=name
            )
            stack.push_async_callback(holder.aclose)
            await holder.load()
            holder.state = store
            await holder.follow(store)
            return holder

        yield store, replica
    await store.aclose()


async def test_a_published_version_is_loaded_by_every_replica(fleet: tuple[State, Any]) -> None:
    store, replica = fleet
    a, b = await replica("a"), await replica("b")
    assert (a.source, a.policy_id, b.source, b.policy_id) == ("file", None, "file", None)
    published = await a.publish(EDITED, "ana", "beta for main")
    assert published.id == 1 and published.version == policy_version(EDITED)
    assert a.current is not None and a.current.version == published.version
    assert (a.source, a.policy_id) == ("shared", 1)
    await b.check_shared()  # what its poller does every POLL_S
    assert b.current is not None and b.current.version == published.version
    assert (b.source, b.policy_id, b.text) == ("shared", 1, EDITED)
    reports = await store.policy_reports(1)
    assert [(r.replica, r.ok, r.serving_id) for r in reports] == [("a", True, 1), ("b", True, 1)]
    latest = await store.policy_get(1)
    assert latest is not None and (latest.author, latest.note) == ("ana", "beta for main")


async def test_the_poller_loads_a_new_version_within_two_polls(fleet: tuple[State, Any]) -> None:
    _store, replica = fleet
    a, b = await replica("a"), await replica("b")
    await a.publish(EDITED, "ana", "")
    started = time.monotonic()
    while b.policy_id != 1 and time.monotonic() - started < 5:
        await asyncio.sleep(0.02)
    took = time.monotonic() - started
    assert b.policy_id == 1 and took < 2 * POLL_S + 0.5, took


async def test_a_replica_that_rejects_keeps_its_version_and_says_so(
    fleet: tuple[State, Any],
) -> None:
    store, replica = fleet
    a, b = await replica("a"), await replica("b", GammaFails())
    await a.publish(EDITED, "ana", "")
    await b.check_shared()
    serving = b.current
    assert serving is not None and b.policy_id == 1
    await a.publish(WITH_GAMMA, "ana", "add gamma")
    await b.check_shared()
    assert b.current is serving and b.policy_id == 1  # not half-applied: v1 keeps serving
    assert "gamma cannot start" in str(b.last_error)
    assert a.policy_id == 2
    outcome = {r.replica: r for r in await store.policy_reports(2)}
    assert outcome["a"].ok and outcome["a"].serving_id == 2
    assert not outcome["b"].ok and "gamma cannot start" in (outcome["b"].error or "")
    assert outcome["b"].serving_id == 1 and outcome["b"].serving_version == serving.version
    now = {r.replica: r.serving_id for r in await store.policy_replicas()}
    assert now == {"a": 2, "b": 1}
    await b.check_shared()  # a rejected version is not retried every poll
    assert b.current is serving
    # A file edit does not split the fleet: the store stays the source (a reload re-checks it).
    b.path.write_text(POLICY)
    assert await b.reload() is False
    assert b.current is serving


async def test_a_replica_started_later_loads_the_latest_version(fleet: tuple[State, Any]) -> None:
    _store, replica = fleet
    a = await replica("a")
    await a.publish(EDITED, "ana", "")
    await a.publish(WITH_GAMMA, "ana", "")
    late = await replica("late")  # its file says POLICY; the store says v2
    assert late.policy_id == 2 and late.current is not None
    assert late.current.version == policy_version(WITH_GAMMA)


async def test_a_text_the_publisher_rejects_publishes_nothing(fleet: tuple[State, Any]) -> None:
    store, replica = fleet
    a = await replica("a", GammaFails())
    serving = a.current
    with pytest.raises(PolicyError, match="gamma cannot start"):
        await a.publish(WITH_GAMMA, "ana", "")
    assert await store.policy_latest_id() == 0
    assert a.current is serving and a.source == "file"


async def test_the_memory_store_keeps_the_file_as_the_source(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path) as gw:
        assert not gw.holder.following
        ready = (await gw.client.get("/readyz")).json()
    assert ready["policy_source"] == "file" and ready["policy_id"] is None
    assert ready["replica"]  # the host name unless `serve --replica` names it


def test_cli_apply_refuses_the_memory_store_and_names_bad_lines(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    file = tmp_path / "policy.yaml"
    file.write_text(POLICY)  # state.url defaults to memory
    result = CliRunner().invoke(app, ["policy", "apply", str(file), "--author", "ana"])
    assert result.exit_code == 1
    assert "state.url is 'memory'" in result.output and "the source" in result.output
    file.write_text(POLICY.replace("[alpha]}", "[gamma]}"))
    result = CliRunner().invoke(app, ["policy", "apply", str(file), "--author", "ana"])
    assert result.exit_code == 1 and f"{file}:" in result.output
    assert "routes.main.models" in result.output


async def test_the_policy_page_publishes_when_the_store_is_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", "master")
    auth = {"authorization": "Bearer master"}
    async with in_process_gateway(POLICY, tmp_path) as gw:
        store = gw.holder.state
        assert store is not None
        await gw.holder.follow(store)  # what the app does for a redis:// store
        resp = await gw.client.post(
            "/dashboard/policy/apply", json={"text": EDITED, "who": "ana"}, headers=auth
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["policy_id"], body["policy_source"]) == (1, "shared")
        assert body["version"] == policy_version(EDITED) and "shared v1" in body["note"]
        assert gw.settings.policy_path.read_text() == POLICY  # the file is not the source now
        assert (await gw.chat("main", key="master")).headers["x-routegate-model"] == "beta"
        view = (await gw.client.get("/dashboard/policy/replicas.json", headers=auth)).json()
        assert view["source"] == "shared" and view["latest"]["author"] == "ana"
        assert [(r["replica"], r["ok"], r["serving_id"]) for r in view["reports"]] == [
            (gw.holder.replica, True, 1)
        ]
        bad = await gw.client.post(  # rejected here: nothing is published
            "/dashboard/policy/apply",
            json={"text": POLICY.replace("[alpha]}", "[gamma]}"), "who": "ana"},
            headers=auth,
        )
        assert bad.status_code == 400 and await store.policy_latest_id() == 1
        page = (await gw.client.get("/dashboard/policy", headers=auth)).text
        assert 'id="policy-id">v1<' in page and 'data-replica="' in page
        ready = (await gw.client.get("/readyz", headers=auth)).json()
        assert (ready["policy_id"], ready["policy_source"]) == (1, "shared")

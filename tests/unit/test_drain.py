"""The drain's cut (gateway/drain.py) on a stream's chunk wait, and the refusal of workers on
the embedded state store (gateway/cli/workers.py). In-process: no server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.backends.base import CallLimits, UpstreamError
from gateway.cli.workers import memory_store_refusal
from gateway.drain import Drain, DrainConfig
from gateway.pipeline.respond import _within
from policies.loader import load_policy


async def _stalled() -> AsyncIterator[dict[str, Any]]:
    yield {"n": 1}
    await asyncio.sleep(3600)  # an upstream that stops sending
    yield {"n": 2}


async def test_the_cut_ends_a_stalled_stream_at_once_as_drained() -> None:
    drain = Drain(DrainConfig(timeout_s=2))
    chunks = _within(_stalled(), CallLimits(timeout_s=600, retries=0), time.monotonic(), drain)
    assert await anext(chunks) == {"n": 1}
    asyncio.get_running_loop().call_later(0.05, drain.cut)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as exc:
        await anext(chunks)
    assert time.monotonic() - started < 1
    assert (exc.value.status, exc.value.code) == (503, "drained")
    assert str(exc.value) == "503 drained: the gateway shut down: cut at the drain timeout of 2 s"
    assert drain.waits == set()  # no wait left registered


async def test_a_stream_after_the_cut_ends_before_its_next_chunk() -> None:
    drain = Drain()
    drain.begin()
    drain.cut()
    chunks = _within(_stalled(), CallLimits(timeout_s=600, retries=0), time.monotonic(), drain)
    with pytest.raises(UpstreamError, match="drained"):
        await anext(chunks)


def test_the_grace_keeps_the_listener_open_until_it_is_over() -> None:
    drain = Drain(DrainConfig(grace_s=0.2))
    assert not drain.draining and not drain.listener_due()
    drain.begin()
    assert drain.draining and not drain.listener_due()
    time.sleep(0.25)
    assert drain.listener_due()


@pytest.mark.parametrize(
    ("state", "refused"),
    [("", True), ("state: {url: memory}\n", True), ('state: {url: "redis://h:6379/0"}\n', False)],
)
def test_workers_need_a_shared_state_store(tmp_path: Path, state: str, refused: bool) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\n" + state + "models:\n  m:\n    provider: vllm\n"
        "    endpoints: [http://127.0.0.1:1/v1]\n    pricing: {input_per_1m: 1, output_per_1m: 1}\n"
        "routes:\n  r: {models: [m]}\n"
    )
    loaded = load_policy(policy)
    assert memory_store_refusal(loaded, policy, 1) is None
    message = memory_store_refusal(loaded, policy, 3)
    if not refused:
        assert message is None
        return
    assert message is not None
    where = f"{policy}:2:9" if state else f"{policy}:1:1"
    assert message.startswith(f"{where} state.url: --workers 3 needs a shared state store")
    assert "exceed a budget 3-fold" in message and "state.url: redis://" in message

"""The unit tier runs in-process only: its `state` is a MemoryState, and starting a process
(`routegate serve`, redis-server, vLLM, Chromium, any subprocess) fails the test. Tests that
need one belong in tests/system or tests/integration."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import httpx
import pytest

from gateway.state import MemoryState, State


@pytest.fixture
async def state() -> AsyncIterator[State]:
    """A fresh, empty in-process State (the same tests run on redis in tests/system)."""
    store = MemoryState()
    try:
        yield store
    finally:
        await store.aclose()


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise AssertionError(
        "a unit test started a process: move it to tests/system (README: the test tiers)"
    )


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # subprocess and asyncio's subprocesses go through Popen; multiprocessing forks.
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse)
    monkeypatch.setattr(os, "fork", _refuse)
    monkeypatch.setattr(os, "posix_spawn", _refuse)
    monkeypatch.setattr(os, "posix_spawnp", _refuse)


# -- two fake upstreams on loopback, and the gateway's own upstream client (pool tests) -------
from gateway.backends.http_client import new_upstream_client  # noqa: E402
from tests.support.upstream import Upstream  # noqa: E402


@pytest.fixture
def ups() -> Iterator[list[Upstream]]:
    started = [Upstream("a").start(), Upstream("b").start()]
    yield started
    for up in started:
        up.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_upstream_client() as c:  # the gateway's own client and transport
        yield c

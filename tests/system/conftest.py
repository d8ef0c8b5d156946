"""The system tier: real processes (`routegate serve`, redis-server, Chromium, test upstreams in
their own process). Its `state` is a RedisState on the session's redis-server, so the unit tier's
State-contract tests rerun here on redis (tests/support/contract.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.state import State, open_state

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.system)


@pytest.fixture
async def state(redis_url: str) -> AsyncIterator[State]:
    """A fresh RedisState. Tests share one server, each under its own key prefix, so they never
    see each other's keys."""
    store = await open_state(redis_url, prefix=f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield store
    finally:
        await store.aclose()

"""Reads each endpoint's /metrics on a short interval, beside the health check, into
`Endpoint.engine` (engine_state.py says what is read).

An endpoint with no vLLM /metrics (a remote or other OpenAI server: 404, or a page with no
vLLM name) keeps an empty snapshot and is asked again only every `ABSENT_RETRY_S`, with one log
line when that starts, so a pool of such servers costs nothing and logs nothing each poll.
An unreachable one has an empty snapshot too (the health check says why): a scorer must not
steer by figures older than one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

from gateway.backends.vllm_pool.endpoints import Endpoint
from gateway.backends.vllm_pool.engine_state import (
    NAMES,
    EngineState,
    MalformedMetrics,
    NotVllmMetrics,
    parse_engine_state,
)

log = logging.getLogger("routegate.vllm")

ABSENT_RETRY_S = 60.0  # a server without vLLM metrics is asked again this often
_EMPTY = EngineState()
ALL_NAMES = tuple(name for names in NAMES.values() for name in names)


def wanted_lines(text: str, prefixes: tuple[str, ...]) -> str:
    """Only the lines of the families read (and their # TYPE / # HELP): a vLLM page is
    mostly histogram buckets, and the parser is pure Python on the event loop (a demo
    server's 57 kB page: 14 ms whole, 1 ms filtered, on the 2-core box)."""
    keep = []
    for line in text.splitlines():
        key = line[7:] if line.startswith(("# TYPE ", "# HELP ")) else line
        if key.startswith(prefixes):
            keep.append(line)
    return "\n".join(keep) + "\n"


class EnginePoller:
    """The /metrics reads of one model's endpoints."""

    def __init__(
        self,
        name: str,
        endpoints: list[Endpoint],
        client: httpx.AsyncClient,
        *,
        interval_s: float,
        timeout_s: float,
    ):
        self.name = name
        self.endpoints = endpoints
        self._client = client
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._due: dict[str, float] = {}  # base_url -> monotonic time of its next read
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.read_all()
        self._task = asyncio.create_task(self._loop(), name=f"engine-metrics:{self.name}")

    async def aclose(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def read_all(self) -> None:
        now = time.monotonic()
        due = [e for e in self.endpoints if self._due.get(e.base_url, 0.0) <= now]
        await asyncio.gather(*(self.read(e) for e in due))

    async def read(self, endpoint: Endpoint) -> None:
        # Ours in flight when vLLM drew the page: somewhere between the send and the answer;
        # the smaller count, so requests of ours that ended meanwhile count as others' at worst.
        before = endpoint.outstanding
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._client.get(endpoint.metrics_url, timeout=self._timeout_s)
        except Exception:  # down or frozen: the health check handles it; no figures meanwhile
            self._set(endpoint, "unreachable", _EMPTY)
            return
        if resp.status_code != 200:
            status = "unreachable" if resp.status_code >= 500 else "absent"
            self._set(endpoint, status, _EMPTY, f"HTTP {resp.status_code}")
            return
        try:
            text = wanted_lines(resp.text, ALL_NAMES)
            state = parse_engine_state(text, time.time(), endpoint.engine)
        except NotVllmMetrics as exc:
            # A page that parses but names nothing of vLLM's: another server, not a fault.
            status = "malformed" if isinstance(exc, MalformedMetrics) else "absent"
            self._set(endpoint, status, _EMPTY, str(exc))
            return
        except Exception as exc:  # whatever a hostile page does to the parser: the loop lives on
            self._set(endpoint, "malformed", _EMPTY, repr(exc))
            return
        endpoint.own_at_read = min(before, endpoint.outstanding)
        self._set(endpoint, "ok", state)

    def _set(self, endpoint: Endpoint, status: str, state: EngineState, why: str = "") -> None:
        if status != endpoint.engine_status:
            level = logging.DEBUG if status in ("ok", "unreachable") else logging.INFO
            if status == "ok" and endpoint.engine_status != "unread":
                level = logging.INFO
            log.log(
                level, "endpoint %s of %s: /metrics %s%s", endpoint.base_url, self.name,
                status, f" ({why})" if why else "",
            )  # fmt: skip
        endpoint.engine_status, endpoint.engine = status, state
        if status in ("absent", "malformed"):
            self._due[endpoint.base_url] = time.monotonic() + ABSENT_RETRY_S
        else:
            self._due.pop(endpoint.base_url, None)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.read_all()

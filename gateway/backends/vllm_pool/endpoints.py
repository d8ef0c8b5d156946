"""The endpoints of a vLLM pool: health probes, ejection of failing ones, and the order to try.

See the package docstring for the rules; requests themselves are in pool.py and stream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from gateway.backends.base import UpstreamCall, UpstreamError
from gateway.backends.vllm_pool.engine_state import EngineState

log = logging.getLogger("routegate.vllm")

T = TypeVar("T")


class Endpoint:
    __slots__ = (
        "base_url",
        "check",
        "down_until",
        "ejections",
        "engine",
        "engine_status",
        "failures",
        "health_url",
        "healthy",
        "metrics_url",
        "outstanding",
        "own_at_read",
        "probe_failures",
    )

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        # vLLM serves /health at the server root, beside /v1.
        root = self.base_url.removesuffix("/v1")
        self.health_url = f"{root}/health"
        self.metrics_url = f"{root}/metrics"
        self.outstanding = 0
        self.healthy = True  # optimistic until probes say otherwise
        self.probe_failures = 0  # failed health probes in a row
        self.down_until = 0.0  # ejected until then
        self.failures = 0  # failed calls in a row
        self.ejections = 0  # ejections in a row (no successful call between): the backoff
        self.check: asyncio.Task[bool] | None = None  # a liveness probe that calls share
        # The server's own load, from its /metrics (engine_poll.py); empty until read.
        self.engine = EngineState()
        self.engine_status = "unread"  # unread | ok | absent | malformed | unreachable
        # This process's outstanding count when `engine` was read: the part of vLLM's running
        # + waiting that was ours then, so the scheduler can swap it for the live count.
        self.own_at_read = 0

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.down_until


@dataclass
class Frozen(UpstreamError):
    """No byte, and no answer to /health either: the endpoint is ejected at once."""


@dataclass
class Overran(UpstreamError):
    """Out of time on an endpoint that still answers /health: not the endpoint's fault."""


def _overran(name: str, call: UpstreamCall) -> Overran:
    return Overran(504, f"{name} timed out after {call.timeout_s:g} s", "upstream_timeout")


class _Watch:
    """The deadlines of one exchange, as a timer: each wait ends after `first_byte_timeout_s`
    or at the deadline, whichever is first; after a wait a liveness probe runs (the exchange
    goes on meanwhile) unless the deadline has passed, and a probe that passes starts the
    next wait. Out of time (Overran), or a probe that fails (Frozen): `verdict` is set and
    `timeout` fires, which cancels the exchange in its task and raises TimeoutError there."""

    __slots__ = ("_call", "_deadline", "_done", "_endpoint", "_health", "_loop", "_probe",
                 "_task", "_timer", "timeout", "verdict")  # fmt: skip

    def __init__(self, health: EndpointHealth, endpoint: Endpoint, call: UpstreamCall):
        self._health, self._endpoint, self._call = health, endpoint, call
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._deadline = self._loop.time() + call.timeout_s
        self._done = False
        self._probe: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.timeout = asyncio.timeout(None)  # the caller enters it, then calls start()
        self.verdict: BaseException | None = None

    def start(self) -> None:
        self._wait()

    def _wait(self) -> None:
        left = self._deadline - self._loop.time()
        if left <= 0:
            self._fire(_overran(self._health.name, self._call))
            return
        step = self._call.first_byte_timeout_s
        self._timer = self._loop.call_later(min(left, step or left), self._waited)

    def _waited(self) -> None:
        self._timer = None
        if self._done:
            return
        if self._call.first_byte_timeout_s and self._loop.time() < self._deadline:
            self._probe = asyncio.ensure_future(self._health.alive(self._endpoint))
            self._probe.add_done_callback(self._probed)
        else:
            self._wait()

    def _probed(self, probe: asyncio.Future[bool]) -> None:
        self._probe = None
        if self._done:
            return
        if probe.cancelled():  # the shared probe was cancelled under the call: so is the call
            if self._task is not None:
                self._task.cancel()
            return
        failure = probe.exception()
        if failure is not None:
            self._fire(failure)
        elif not probe.result():
            step, name = self._call.first_byte_timeout_s or 0, self._health.name
            self._fire(
                Frozen(
                    504,
                    f"{name}: {self._endpoint.base_url} sent nothing for {step:g} s and did "
                    f"not answer its health check within {self._health.health_timeout_s:g} s",
                    "upstream_timeout",
                )
            )
        else:
            self._wait()

    def _fire(self, verdict: BaseException) -> None:
        self.verdict = verdict
        self.timeout.reschedule(self._loop.time())

    def stop(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._probe is not None:
            self._probe.cancel()  # the probe's own task is shielded: other calls share it


class EndpointHealth:
    """Which of a model's endpoints are usable, kept current by probes and call outcomes."""

    def __init__(
        self,
        name: str,
        endpoints: list[Endpoint],
        client: httpx.AsyncClient,
        *,
        health_interval_s: float,
        cooldown_s: float,
        health_timeout_s: float,
        unhealthy_after: int,
        eject_after: int,
    ):
        self.name = name
        self.endpoints = endpoints
        self._client = client
        self._health_interval_s = health_interval_s
        self._cooldown_s = cooldown_s
        self.health_timeout_s = health_timeout_s
        self._unhealthy_after = unhealthy_after
        self._eject_after = eject_after
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.probe_all()
        self._task = asyncio.create_task(self._loop(), name=f"health:{self.name}")

    async def aclose(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def healthy(self) -> bool:
        now = time.monotonic()
        return any(e.usable(now) for e in self.endpoints)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(e) for e in self.endpoints))

    async def probe(self, endpoint: Endpoint) -> bool:
        try:
            # The wall-clock bound also stops a /health that drips its answer byte by byte.
            async with asyncio.timeout(self.health_timeout_s):
                resp = await self._client.get(endpoint.health_url, timeout=self.health_timeout_s)
            ok = resp.status_code == 200
        except Exception:  # whatever went wrong, the probe failed; the loop must not die of it
            ok = False
        if ok:
            if not endpoint.healthy:
                log.info("endpoint %s of %s is back", endpoint.base_url, self.name)
            endpoint.healthy, endpoint.probe_failures = True, 0
            # A passing probe also ends an ejection early, as Envoy does by default; the call
            # count stays, so one more failure ejects it again, for twice as long.
            endpoint.down_until = 0.0
            return True
        endpoint.probe_failures += 1
        if endpoint.healthy and endpoint.probe_failures >= self._unhealthy_after:
            log.warning(
                "endpoint %s of %s failed %d health checks in a row: out of use until one passes",
                endpoint.base_url, self.name, endpoint.probe_failures,
            )  # fmt: skip
            endpoint.healthy = False
        return False

    async def alive(self, endpoint: Endpoint) -> bool:
        """A liveness probe for calls waiting on `endpoint`; calls waiting together share one."""
        if endpoint.check is None or endpoint.check.done():
            endpoint.check = asyncio.ensure_future(self.probe(endpoint))
        return await asyncio.shield(endpoint.check)

    async def watched(self, endpoint: Endpoint, call: UpstreamCall, wait: Awaitable[T]) -> T:
        """`wait` (an exchange up to its first byte, or a whole answer) under the call's
        deadlines: `timeout_s` in all, and a liveness probe each `first_byte_timeout_s`.

        `wait` runs in the caller's task with a timer beside it (`_Watch`), not in a task of
        its own: a task and an `asyncio.wait` per call cost more than the rest of this module
        on a fast upstream, and the rules are the same."""
        if call.timeout_s <= 0:
            if inspect.iscoroutine(wait):
                wait.close()
            raise _overran(self.name, call)
        watch = _Watch(self, endpoint, call)
        try:
            async with watch.timeout:
                watch.start()
                return await wait
        except TimeoutError:
            if watch.verdict is not None and watch.timeout.expired():
                raise watch.verdict from None
            raise  # the exchange's own
        finally:
            watch.stop()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self.probe_all()

    def retry_after_s(self) -> float:
        """When a client refused for want of an endpoint may try again: the first cooling
        endpoint's return, or, with none cooling (all failing probes), the next probe."""
        now = time.monotonic()
        cooling = [e.down_until - now for e in self.endpoints if e.down_until > now]
        return min(cooling) if cooling else self._health_interval_s

    def order(self) -> list[Endpoint]:
        """Usable endpoints by fewest outstanding (ties shuffled), then the cooling ones."""
        if len(self.endpoints) == 1:  # what the rest gives one endpoint (shuffle draws nothing)
            return self.endpoints[:]
        now = time.monotonic()
        eps = self.endpoints[:]
        random.shuffle(eps)
        usable = sorted((e for e in eps if e.usable(now)), key=lambda e: e.outstanding)
        # Cooling endpoints come last, earliest-recovering first: better than failing outright.
        cooling = sorted((e for e in eps if not e.usable(now)), key=lambda e: e.down_until)
        return usable + cooling

    def failed(self, endpoint: Endpoint, eject: bool = False) -> None:
        endpoint.failures += 1
        if not eject and endpoint.failures < self._eject_after:
            return
        endpoint.ejections += 1
        # Back off longer after repeated ejections, capped at 8x the cooldown.
        cooldown = self._cooldown_s * min(2 ** (endpoint.ejections - 1), 8)
        endpoint.down_until = time.monotonic() + cooldown
        log.warning(
            "endpoint %s of %s ejected for %g s after %d failed calls in a row",
            endpoint.base_url, self.name, cooldown, endpoint.failures,
        )  # fmt: skip

    def note(self, endpoint: Endpoint, err: UpstreamError | None) -> None:
        """Count a call's outcome towards ejection: only what says the endpoint is at fault."""
        if err is None:
            endpoint.failures = endpoint.ejections = 0
        elif isinstance(err, Frozen):
            self.failed(endpoint, eject=True)
        elif err.retryable and err.status != 429 and not isinstance(err, Overran):
            self.failed(endpoint)

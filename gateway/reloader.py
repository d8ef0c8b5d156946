"""Keeps the serving policy current: reload on file change or SIGHUP.

A bad edit is rejected with the validator's messages and the old policy keeps serving. The old
runtime's health checks stop at once; requests that started on it keep their reference and
finish on it (its backends work without them, and the HTTP client is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
from watchfiles import awatch

from gateway.metrics import Metrics
from gateway.runtime import BackendFactory, Runtime, build_runtime, load_learned_routers
from gateway.state import State
from policies.loader import PolicyError, Problem, parse_policy, policy_warnings, read_policy_text

log = logging.getLogger("routegate.policy")


class PolicyHolder:
    def __init__(
        self,
        path: Path,
        client: httpx.AsyncClient,
        metrics: Metrics,
        backend_factory: BackendFactory | None = None,
    ):
        self.path = path
        self._client = client
        self._backend_factory = backend_factory
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.current: Runtime | None = None
        # The shared store, once opened (after the first policy names it): each new runtime's
        # online layers learn in it.
        self.state: State | None = None
        self.last_error: PolicyError | None = None

    async def load(self) -> Runtime:
        """Read, validate and start the policy file; raise PolicyError and keep the old one."""
        async with self._lock:
            try:
                runtime = await self._build()
            except PolicyError as exc:
                self.last_error = exc
                self._metrics.policy_reloads.labels("rejected").inc()
                raise
            old, self.current, self.last_error = self.current, runtime, None
            self._metrics.policy_reloads.labels("applied").inc()
            if old is not None:
                # Requests still running on the old runtime keep working: closing it stops only
                # its health checks, and the HTTP client is shared.
                self._spawn(old.aclose())
            log.info("policy %s version %s is serving", self.path, runtime.version)
            return runtime

    async def _build(self) -> Runtime:
        """The new runtime, started; anything that stops it is a PolicyError, so the watcher
        lives on and the old policy keeps serving."""
        runtime: Runtime | None = None
        try:
            text = await asyncio.to_thread(read_policy_text, self.path)
            # Off the event loop: a large policy must not stall requests while it is parsed.
            policy = await asyncio.to_thread(parse_policy, text, str(self.path))
            warnings = await asyncio.to_thread(policy_warnings, policy, text, str(self.path))
            for warning in warnings:
                log.warning("%s", warning.as_warning())
            learned = await asyncio.to_thread(load_learned_routers, policy, str(self.path))
            runtime = build_runtime(
                policy, text, str(self.path), self._client, learned, self._backend_factory
            )
            if self.state is not None:
                runtime.bind_state(self.state)
            await runtime.start()
            return runtime
        except PolicyError:
            raise
        except Exception as exc:  # an undecodable file, a backend that cannot start, ...
            if runtime is not None:
                await runtime.aclose()
            problem = Problem(str(self.path), 1, 1, "(policy)", f"cannot load: {exc!r}")
            raise PolicyError([problem]) from exc

    async def reload(self) -> bool:
        try:
            await self.load()
            return True
        except PolicyError as exc:
            log.error("policy reload rejected, the previous policy keeps serving:\n%s", exc)
            return False

    def watch(self) -> None:
        """Reload on SIGHUP and when the file changes."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        self._spawn(self._watch_file())

    async def _watch_file(self) -> None:
        # Watch the folder, as editors often replace the file rather than write into it, but
        # react to the policy file only (the request log may live in the same folder).
        target = str(self.path.resolve())
        async for _ in awatch(
            self.path.parent,
            debounce=300,
            recursive=False,
            watch_filter=lambda _change, changed: str(Path(changed).resolve()) == target,
        ):
            await self.reload()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.current is not None:
            await self.current.aclose()

"""Keeps the serving policy current: reload on file change or SIGHUP, or follow the shared store.

A bad edit is rejected with the validator's messages and the old policy keeps serving. The old
runtime's health checks stop at once; requests that started on it keep their reference and
finish on it (its backends work without them, and the HTTP client is shared).

Two sources. "file" (one instance, the in-process store): the policy file is the truth. "shared"
(a Redis state store, several replicas): once a policy was published there (`routegate policy
apply`, the policy page), every replica polls for new versions every `POLL_S` and loads each one,
recording its outcome per version in the store (`State.policy_report`). A replica that rejects a
version keeps serving its previous one and says so; a replica started later loads the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal

import httpx
from watchfiles import awatch

from gateway.metrics import Metrics
from gateway.runtime import BackendFactory, Runtime, build_runtime, load_learned_routers
from gateway.state import PolicyRecord, PolicyReport, State, StateUnavailable
from policies.loader import PolicyError, Problem, parse_policy, policy_warnings, read_policy_text

log = logging.getLogger("routegate.policy")

# How often a replica asks the shared store for a newer policy: one small GET, so a new version
# serves everywhere within POLL_S plus its load time (the 5 s promise in the README).
POLL_S = 1.0
PolicySource = Literal["file", "shared"]


class PolicyHolder:
    def __init__(
        self,
        path: Path,
        client: httpx.AsyncClient,
        metrics: Metrics,
        backend_factory: BackendFactory | None = None,
        replica: str = "",
    ):
        self.path = path
        self.replica = replica or socket.gethostname()
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
        # The text of the serving runtime, and the published record it came from (None: the file).
        self.text: str | None = None
        self.record: PolicyRecord | None = None
        # Shared mode (`follow`): the store that publishes policies, and the newest id handled.
        self._shared: State | None = None
        self._seen_id = 0
        self._unsent: PolicyReport | None = None  # an outcome the store was down for

    @property
    def source(self) -> PolicySource:
        return "shared" if self.record is not None else "file"

    @property
    def following(self) -> bool:
        """True once `follow` made the shared store the place to publish to."""
        return self._shared is not None

    @property
    def policy_id(self) -> int | None:
        """The store's number of the serving version; None while the file is the source."""
        return self.record.id if self.record is not None else None

    async def load(self) -> Runtime:
        """Read, validate and start the policy file; raise PolicyError and keep the old one."""
        async with self._lock:
            return self._install(*await self._checked_build(None), None)

    async def _checked_build(self, text: str | None) -> tuple[Runtime, str]:
        try:
            return await self._build(text)
        except PolicyError as exc:
            self.last_error = exc
            self._metrics.policy_reloads.labels("rejected").inc()
            raise

    def _install(self, runtime: Runtime, text: str, record: PolicyRecord | None) -> Runtime:
        old, self.current, self.last_error = self.current, runtime, None
        self.text, self.record = text, record
        self._metrics.policy_reloads.labels("applied").inc()
        if old is not None:
            # Requests still running on the old runtime keep working: closing it stops only
            # its health checks, and the HTTP client is shared.
            self._spawn(old.aclose())
        where = f"shared v{record.id}" if record else str(self.path)
        log.info("policy %s version %s is serving", where, runtime.version)
        return runtime

    async def _build(self, text: str | None) -> tuple[Runtime, str]:
        """The new runtime from `text` (None: the file), started; anything that stops it is a
        PolicyError, so the watcher lives on and the old policy keeps serving. A published text
        is read as if it were the file: relative paths in it start at this replica's folder."""
        runtime: Runtime | None = None
        try:
            if text is None:
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
            return runtime, text
        except PolicyError:
            raise
        except Exception as exc:  # an undecodable file, a backend that cannot start, ...
            if runtime is not None:
                await runtime.aclose()
            problem = Problem(str(self.path), 1, 1, "(policy)", f"cannot load: {exc!r}")
            raise PolicyError([problem]) from exc

    async def reload(self) -> bool:
        if self._shared is not None and self._seen_id > 0:
            # The store is the source: a file edit would split the fleet. SIGHUP retries the
            # latest published version (say, once a file it needs is in place).
            log.warning("the shared store is the policy source: checking it, not %s", self.path)
            return await self.retry_shared()
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

    # -- the shared source -----------------------------------------------------------------

    async def follow(self, state: State) -> None:
        """Take policies from `state` from now on: load the latest published one (if any and
        newer than the file), then poll for new ones. A store that is down only delays this."""
        self._shared = state
        try:
            await self.check_shared()
        except StateUnavailable as exc:
            log.warning("cannot read the published policy yet, the file serves: %s", exc)
        self._spawn(self._poll())

    async def publish(self, text: str, author: str, note: str) -> PolicyRecord:
        """Start `text` here, publish it, then serve it: every replica follows. A text this
        replica rejects (PolicyError) or a store that is down (StateUnavailable) publishes and
        changes nothing."""
        assert self._shared is not None, "publish needs follow() first"
        async with self._lock:
            runtime, text = await self._checked_build(text)
            draft = PolicyRecord(0, text, runtime.version, author, time.time(), note)
            try:
                policy_id = await self._shared.policy_publish(draft)
            except BaseException:
                await runtime.aclose()
                raise
            record = PolicyRecord(policy_id, text, runtime.version, author, draft.ts, note)
            self._seen_id = max(self._seen_id, policy_id)
            self._install(runtime, text, record)
            await self._report(policy_id, None)
            return record

    async def retry_shared(self) -> bool:
        """Load the latest published version again, even if it was rejected before."""
        async with self._lock:
            self._seen_id = 0
        try:
            await self.check_shared()
        except StateUnavailable as exc:
            log.error("cannot read the published policy: %s", exc)
            return False
        return self.last_error is None

    async def check_shared(self) -> None:
        """Load the latest published version if it is newer than the last one handled."""
        assert self._shared is not None
        async with self._lock:
            latest = await self._shared.policy_latest_id()
            if latest < self._seen_id:
                # The count went back: the store lost its data (a Redis restart without
                # persistence). Numbering starts again, so must this replica's.
                log.warning(
                    "the shared store's policy count went back to %s: it was emptied", latest
                )
                self._seen_id = 0
            if latest <= self._seen_id:
                return
            record = await self._shared.policy_get(latest)
            self._seen_id = latest
            if record is None:
                return
            error: str | None = None
            if self.current is not None and self.current.version == record.version:
                self.record = record  # the same text serves already (say, from the file)
                self.last_error = None
                log.info("policy shared v%s is serving (unchanged)", record.id)
            else:
                try:
                    self._install(*await self._checked_build(record.text), record)
                except PolicyError as exc:
                    error = str(exc)
                    log.error(
                        "published policy v%s rejected, version %s keeps serving:\n%s",
                        record.id, self.current.version if self.current else "-", exc,
                    )  # fmt: skip
            await self._report(record.id, error)

    async def _report(self, policy_id: int, error: str | None) -> None:
        assert self._shared is not None
        self._unsent = PolicyReport(
            self.replica, policy_id, error is None, error, time.time(), self.policy_id,
            self.current.version if self.current else "",
        )  # fmt: skip
        await self._send_report()

    async def _send_report(self) -> None:
        if self._unsent is None or self._shared is None:
            return
        try:
            await self._shared.policy_report(self._unsent)
            self._unsent = None
        except StateUnavailable as exc:  # sent again on the next poll
            log.warning("cannot record policy v%s's outcome yet: %s", self._unsent.id, exc)

    async def _poll(self) -> None:
        down = False
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._send_report()
                await self.check_shared()
                down = False
            except StateUnavailable as exc:
                if not down:  # once per outage, not once a second
                    log.warning("cannot poll the shared store for a new policy: %s", exc)
                down = True
            except Exception:  # the poller must outlive any one bad round
                log.exception("policy poll failed")

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

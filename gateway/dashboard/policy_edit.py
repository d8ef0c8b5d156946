"""Validate, apply and roll back policy text from the dashboard.

Apply goes through the gateway's own reloader: the text is validated, written over the policy
file atomically, and the file watcher reloads it; apply returns once the new Runtime serves
(or the reloader rejected it). Without a watcher (`--no-watch`) apply asks the holder directly.

With a shared store (several replicas) the file is not written: the holder starts the text, then
publishes it in the store, and every replica loads it from there (gateway/reloader.py).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.dashboard.history import PolicyHistory, PolicyVersion
from gateway.reloader import PolicyHolder
from gateway.runtime import Runtime, policy_version
from policies.loader import PolicyError, Problem, parse_policy

T = TypeVar("T")

# How long apply waits for the file watcher (debounce 300 ms, plus learned-router loading)
# before reloading by itself.
WATCH_WAIT_S = 20.0
# Policy texts parsed at once, each in a worker thread: a flood of validations queues here
# instead of taking every thread (and the GIL) from the rest of the gateway.
PARSE_SLOTS = 2


def write_atomic(path: Path, text: str) -> None:
    """Readers and the watcher see the old file or the new one, never half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rejection(text: str, source: str) -> PolicyError | None:
    """Why `text` cannot serve (a PolicyTooLarge past the caps), or None if it can."""
    try:
        parse_policy(text, source)
    except PolicyError as exc:
        return exc
    return None


def validate(text: str, source: str) -> list[Problem]:
    found = rejection(text, source)
    return found.problems if found else []


class PolicyEditor:
    def __init__(self, history: PolicyHistory, watching: bool):
        self.history = history
        self.watching = watching
        # One apply at a time, and history writes never interleave with one.
        self._lock = asyncio.Lock()
        self._parse_slots = asyncio.Semaphore(PARSE_SLOTS)

    async def rejection(self, text: str, source: str) -> PolicyError | None:
        """`rejection` off the event loop: a large or hostile text never stalls the rest."""
        return await self.run_parsing(rejection, text, source)

    async def run_parsing(self, fn: Callable[..., T], *args: Any) -> T:
        """Any other policy parsing (diffs), under the same slots and off the loop."""
        async with self._parse_slots:
            return await asyncio.to_thread(fn, *args)

    async def sync(self, holder: PolicyHolder) -> None:
        """Record the serving version if history does not know it yet (the start-up policy, or
        an edit of the file outside the dashboard)."""
        async with self._lock:
            await self._sync(holder)

    async def _sync(self, holder: PolicyHolder) -> None:
        runtime = holder.current
        if runtime is None:
            return
        latest = await asyncio.to_thread(self.history.latest)
        if latest is not None and latest.version == runtime.version:
            return
        if holder.record is not None:  # published by another replica or the CLI
            record = holder.record
            await asyncio.to_thread(
                self.history.add, record.text, record.version, record.author, "",
                f"shared v{record.id}" + (f": {record.note}" if record.note else ""), record.ts,
            )  # fmt: skip
            return
        try:
            text = await asyncio.to_thread(holder.path.read_text, encoding="utf-8")
        except OSError:
            return
        if policy_version(text) == runtime.version:  # else the file moved on: record it later
            await asyncio.to_thread(
                self.history.add, text, runtime.version, "file", "", "loaded from file",
                runtime.loaded_at,
            )  # fmt: skip

    async def current_text(self, holder: PolicyHolder) -> str:
        """The text of the serving policy."""
        await self.sync(holder)
        latest = await asyncio.to_thread(self.history.latest)
        runtime = holder.current
        if latest is not None and runtime is not None and latest.version == runtime.version:
            return latest.text
        if holder.text is not None:
            return holder.text
        return await asyncio.to_thread(holder.path.read_text, encoding="utf-8")

    async def apply(
        self, holder: PolicyHolder, text: str, who: str, client: str, note: str
    ) -> PolicyVersion:
        """Make `text` the serving policy; PolicyError (nothing changed) if it cannot be."""
        # The reloader reads the file with universal newlines: hash what it will read, or the
        # version never matches and apply waits out WATCH_WAIT_S for a policy already serving.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        found = await self.rejection(text, str(holder.path))
        if found is not None:
            raise found
        if holder.following:
            async with self._lock:
                await self._sync(holder)
                record = await holder.publish(text, who, note)
                return await asyncio.to_thread(
                    self.history.add, text, record.version, who, client,
                    f"{note} (shared v{record.id})", record.ts,
                )  # fmt: skip
        async with self._lock:
            await self._sync(holder)
            old_runtime, old_error = holder.current, holder.last_error
            old_text = await asyncio.to_thread(holder.path.read_text, encoding="utf-8")
            await asyncio.to_thread(write_atomic, holder.path, text)
            try:
                runtime = await self._wait_live(
                    holder, old_runtime, old_error, policy_version(text)
                )
            except BaseException:
                # Put the serving text back, so the file says what serves (whatever failed).
                await asyncio.to_thread(write_atomic, holder.path, old_text)
                raise
            return await asyncio.to_thread(
                self.history.add, text, runtime.version, who, client, note, runtime.loaded_at
            )

    async def _wait_live(
        self,
        holder: PolicyHolder,
        old: Runtime | None,
        old_error: PolicyError | None,
        version: str,
    ) -> Runtime:
        if self.watching:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WATCH_WAIT_S
            while loop.time() < deadline:
                current = holder.current
                if current is not None and current is not old and current.version == version:
                    return current
                if holder.last_error is not None and holder.last_error is not old_error:
                    raise holder.last_error
                await asyncio.sleep(0.05)
        # No watcher, or it missed the change: reload through the holder ourselves.
        return await holder.load()

    async def rollback(
        self, holder: PolicyHolder, version_id: int, who: str, client: str
    ) -> PolicyVersion:
        old = await asyncio.to_thread(self.history.get, version_id)
        if old is None:
            raise KeyError(version_id)
        return await self.apply(holder, old.text, who, client, f"rollback to v{version_id}")

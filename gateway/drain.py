"""Graceful drain: what a process does between SIGTERM and its exit, as state the app reads.

The order, for load balancers (gateway/draining_server.py runs it):
1. `begin()`: `/readyz` answers 503 "draining" while the listener still accepts for
   `grace_s` (a Kubernetes preStop / endpoint-removal window; 0 for a lone process);
2. the listener closes and idle keep-alive connections with it (uvicorn's shutdown);
3. in-flight requests and streams run on, up to `timeout_s`;
4. `cut()`: every stream still waiting on its upstream is ended at once, in-band, and charged
   for what was sent, through the same settle path as a client disconnect
   (gateway/pipeline/respond.py); what is left after that is cancelled by uvicorn and still
   settled (gateway/pipeline/handler.py);
5. the app's lifespan ends: the request log is flushed and closed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

DRAINED = "drained"  # the error code, and the start of the request log's `error`


@dataclass(frozen=True, slots=True)
class DrainConfig:
    grace_s: float = 0.0  # readyz says draining while new requests are still accepted
    timeout_s: float = 30.0  # then in-flight work may run this long before it is cut


@dataclass(slots=True)
class Drain:
    """One process's drain state. Used on its event loop only (and its flags set from the
    signal handler, which runs on that same thread)."""

    config: DrainConfig = field(default_factory=DrainConfig)
    began_at: float | None = None  # time.monotonic() of the signal
    cut_at: float | None = None  # when the cut happened
    # The stream waits in progress (gateway/pipeline/respond.py): their timeouts are moved
    # to now by `cut()`, so a stream stalled upstream ends at the deadline too.
    waits: set[asyncio.Timeout] = field(default_factory=set)

    @property
    def draining(self) -> bool:
        return self.began_at is not None

    @property
    def cut_done(self) -> bool:
        return self.cut_at is not None

    def begin(self, grace_s: float | None = None) -> None:
        if self.began_at is None:
            self.began_at = time.monotonic()
            if grace_s is not None:
                self.config = DrainConfig(grace_s, self.config.timeout_s)

    def listener_due(self) -> bool:
        """Whether the grace is over: time to stop accepting."""
        return self.began_at is not None and time.monotonic() >= self.began_at + self.config.grace_s

    def cut(self) -> None:
        """The drain timeout is over: end every stream now."""
        if self.cut_at is not None:
            return
        self.cut_at = time.monotonic()
        loop_time = asyncio.get_running_loop().time()
        for wait in list(self.waits):
            if not wait.expired():
                wait.reschedule(loop_time)

    def cut_message(self) -> str:
        return f"the gateway shut down: cut at the drain timeout of {self.config.timeout_s:g} s"

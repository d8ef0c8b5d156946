"""uvicorn's Server with the gateway's drain order (gateway/drain.py) on SIGTERM and SIGINT.

What uvicorn does by itself (uvicorn/server.py, 0.54): a signal sets `should_exit`; the main
loop sees it within 0.1 s; `shutdown()` closes the listener, closes idle connections, waits up
to `timeout_graceful_shutdown` for the rest, cancels what is left, then runs the lifespan
shutdown. After `serve()` it raises the captured signal again, so a SIGTERM'd process dies of
SIGTERM (exit -15), not 0.

This subclass only moves its hooks, it does not replace the sequence:
- `handle_exit` starts the drain (`/readyz` 503) and does not capture the signal, so the
  process exits 0 once drained;
- `on_tick` sets `should_exit` only when the grace is over: the listener keeps accepting until
  then, while load balancers take the replica out;
- `shutdown` arms the cut at the drain timeout, then runs uvicorn's own shutdown, whose
  `timeout_graceful_shutdown` is the drain timeout plus `CUT_SETTLE_S`, the time the cut streams
  get to settle and send their last event before uvicorn cancels what still runs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn

from gateway.drain import Drain

log = logging.getLogger("routegate")

CUT_SETTLE_S = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, *, worker: bool = False) -> None:
        # uvicorn's own timeout: the drain's, plus the settling of what the cut ended.
        # (uvicorn types it int; it only goes to asyncio.wait_for, which takes any float.)
        config.timeout_graceful_shutdown = drain.config.timeout_s + CUT_SETTLE_S  # type: ignore[assignment]
        super().__init__(config)
        self.drain = drain
        self._worker = worker  # one of several processes: the supervisor sends the signals

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining:
            # A second Ctrl+C at a lone process: stop waiting (uvicorn's force exit). A worker
            # also gets the terminal's SIGINT beside the supervisor's SIGTERM: not a second ask.
            if sig == signal.SIGINT and not self._worker:
                self.should_exit = self.force_exit = True
            return
        if sig == signal.SIGINT and self._worker:
            return  # the supervisor turns the terminal's Ctrl+C into SIGTERM for each worker
        # Ctrl+C at a terminal needs no load balancer's grace.
        self.drain.begin(grace_s=0.0 if sig == signal.SIGINT else None)
        log.info(
            "draining (signal %d): readyz 503 now, listener closes in %g s, cut at %g s after",
            sig,
            self.drain.config.grace_s,
            self.drain.config.timeout_s,
        )

    async def on_tick(self, counter: int) -> bool:
        if not self.should_exit and self.drain.listener_due():
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin()  # also when uvicorn ends for a reason of its own (max requests)
        loop = asyncio.get_running_loop()
        cut = loop.call_later(self.drain.config.timeout_s, self._cut)
        try:
            await super().shutdown(sockets)
        finally:
            cut.cancel()

    def _cut(self) -> None:
        if self.server_state.tasks:
            log.warning(
                "drain timeout of %g s is over: cutting %d request(s)",
                self.drain.config.timeout_s,
                len(self.server_state.tasks),
            )
        self.drain.cut()

"""How `routegate serve` runs: one process, or a supervisor and N worker processes on one port.

uvicorn's own multi-worker mode (uvicorn.supervisors.Multiprocess) runs plain `uvicorn.Server`
in each worker from an import string; the gateway's workers need its `DrainingServer`, its
header-guarded protocol class (made per process from the limits) and an app built with the
process's `Drain`. So each worker is spawned here with a `ServeSpec` (plain, picklable
settings) and builds all three itself, on the socket the supervisor bound once, exactly as
uvicorn's supervisor hands sockets to its workers.

Across workers:
- keys, budgets, rate windows and pacing must be in a shared store (`state.url: redis://`):
  `memory_store_refusal` says why the embedded store is refused;
- the request log is one SQLite file in WAL mode, each worker with its own writer thread
  (gateway/accounting/request_log.py waits on the file lock rather than drop a batch), or one
  Postgres database, each worker with its own spool file (`_as_worker`);
- metrics use prometheus_client's multiprocess mode: each worker writes its values to files
  in PROMETHEUS_MULTIPROC_DIR and /metrics, from any worker, sums them (gateway/metrics.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from gateway.accounting.log_store import default_spool_path
from gateway.app import Settings, create_app
from gateway.drain import Drain, DrainConfig
from gateway.draining_server import CUT_SETTLE_S, DrainingServer
from gateway.http_server import ServerLimits, guarded_protocol
from gateway.metrics import MULTIPROC_DIR_ENV
from policies.loader import Problem
from policies.schema import Policy

log = logging.getLogger("routegate")

STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class ServeSpec:
    """Everything a serving process needs, picklable: it is sent to spawned workers."""

    settings: Settings
    limits: ServerLimits
    drain: DrainConfig
    host: str
    port: int
    log_level: str
    access_log: bool
    keep_alive_timeout: int
    forwarded_allow_ips: str


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=_LOG_FORMAT)
    for noisy in ("httpx", "watchfiles", "LiteLLM", "yoyo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_server(spec: ServeSpec, sockets: list[socket.socket] | None = None) -> int:
    """Serve until drained; the exit status. With `sockets`, this is one of several workers."""
    import uvicorn

    drain = Drain(spec.drain)
    config = uvicorn.Config(
        create_app(spec.settings, drain=drain),
        host=spec.host,
        port=spec.port,
        loop="uvloop",
        # httptools, with the header limits and timeout uvicorn lacks (gateway/http_server.py).
        http=guarded_protocol(spec.limits),
        timeout_keep_alive=spec.keep_alive_timeout,
        access_log=spec.access_log,
        log_level=spec.log_level,
        proxy_headers=bool(spec.forwarded_allow_ips),
        forwarded_allow_ips=spec.forwarded_allow_ips or None,
    )
    server = DrainingServer(config, drain, worker=sockets is not None)
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl+C
        server.run(sockets=sockets)
    return 0 if server.started else STARTUP_FAILURE


def run_single(spec: ServeSpec) -> int:
    """`--workers 1`: this process serves. A PROMETHEUS_MULTIPROC_DIR set by the caller still
    puts prometheus_client in multiprocess mode, so it is emptied first, as for N workers."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        _prepare_metrics_dir()
    return run_server(spec)


def _worker_main(spec: ServeSpec, sock: socket.socket, index: int) -> None:
    """A spawned worker's entry point (`index`: its place among the N, kept by a restart)."""
    configure_logging(spec.log_level)
    status = run_server(_as_worker(spec, index), [sock])
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())  # its live gauges go; its counters stay
    sys.exit(status)


def _as_worker(spec: ServeSpec, index: int) -> ServeSpec:
    """Worker `index`'s own spool file (a Postgres log's rows waiting for it to come back): N
    processes must not append to and replay one file; a worker restarted in the same place
    finds what its predecessor left there."""
    s = spec.settings
    given = s.log_spool_path
    spool = (
        given.with_name(f"{given.stem}-w{index}{given.suffix}")
        if given is not None
        else default_spool_path(s.state_path, f"{s.replica}-w{index}")
    )
    return dataclasses.replace(spec, settings=dataclasses.replace(s, log_spool_path=spool))


def memory_store_refusal(policy: Policy, policy_path: Path, workers: int) -> str | None:
    """Why N workers cannot run on this policy's state store, or None when they can."""
    url = policy.state.url.strip()
    if workers <= 1 or url.startswith(("redis://", "rediss://", "unix://")):
        return None
    problem = Problem(
        str(policy_path),
        *_line_of_state_url(policy_path),
        "state.url",
        f"--workers {workers} needs a shared state store, but state.url is {url!r}, the "
        "embedded store: each worker would hold its own keys, budgets and rate windows, so "
        f"spend could exceed a budget {workers}-fold. Set state.url: redis://HOST:6379/0 "
        "(docs/budgets.md), or serve with --workers 1.",
    )
    return str(problem)


def _line_of_state_url(path: Path) -> tuple[int, int]:
    """Where state.url is in the file (1-based line, column): the `state` key, or 1:1."""
    from ruamel.yaml import YAML

    try:
        tree = YAML().load(path.read_text())
        state = tree.get("state")
        if state is not None and hasattr(state, "lc") and "url" in state:
            line, col = state.lc.key("url")
        else:
            line, col = tree.lc.key("state") if "state" in tree else (0, 0)
        return line + 1, col + 1
    except Exception:  # the policy was validated already; a position is only a nicety
        return 1, 1


class Supervisor:
    """Binds the port once, runs N spawned workers on it, restarts one that dies, and passes
    SIGTERM (and Ctrl+C, as SIGTERM) and SIGHUP on to every worker."""

    def __init__(self, spec: ServeSpec, workers: int) -> None:
        self._spec = spec
        self._n = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._signals: list[int] = []

    def run(self) -> int:
        import uvicorn

        own_dir = _prepare_metrics_dir()
        sock = uvicorn.Config("gateway.app:create_app", host=self._spec.host, port=self._spec.port)
        bound = sock.bind_socket()
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            self._procs = [self._start(bound, i) for i in range(self._n)]
            log.info("supervisor %d: workers %s", os.getpid(), [p.pid for p in self._procs])
            status = self._watch(bound)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bound.close()
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
        return status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _start(self, sock: socket.socket, index: int) -> multiprocessing.process.BaseProcess:
        proc = self._ctx.Process(target=_worker_main, args=(self._spec, sock, index), daemon=False)
        proc.start()
        return proc

    def _watch(self, sock: socket.socket) -> int:
        while True:
            while self._signals:
                sig = self._signals.pop(0)
                if sig == signal.SIGHUP:
                    self._send(signal.SIGHUP)  # each worker reloads its policy
                else:
                    return self._stop()
            for i, proc in enumerate(self._procs):
                if proc.exitcode is None:
                    continue
                if proc.exitcode == STARTUP_FAILURE:
                    log.error("worker %d failed to start; stopping the others", proc.pid)
                    self._stop()
                    return 1
                log.error("worker %d died (exit %s); starting another", proc.pid, proc.exitcode)
                _mark_dead(proc.pid)
                self._procs[i] = self._start(sock, i)
            time.sleep(0.2)

    def _send(self, sig: int) -> None:
        for proc in self._procs:
            if proc.exitcode is None and proc.pid is not None:
                os.kill(proc.pid, sig)

    def _stop(self) -> int:
        """Drain every worker; 0 when all of them drained and exited cleanly."""
        self._send(signal.SIGTERM)
        d = self._spec.drain
        deadline = time.monotonic() + d.grace_s + d.timeout_s + CUT_SETTLE_S + 10
        for proc in self._procs:
            proc.join(max(deadline - time.monotonic(), 0))
            if proc.exitcode is None:
                log.error("worker %d did not drain in time: killed", proc.pid)
                proc.kill()
                proc.join()
        return 0 if all(p.exitcode == 0 for p in self._procs) else 1


def _prepare_metrics_dir() -> Path | None:
    """The multiprocess metrics directory, emptied (values of an earlier run would be added
    in); one of our own, removed at exit, unless PROMETHEUS_MULTIPROC_DIR names one."""
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
        return None
    path = Path(tempfile.mkdtemp(prefix="routegate-metrics-"))
    os.environ[MULTIPROC_DIR_ENV] = str(path)  # inherited by the spawned workers
    return path


def _mark_dead(pid: int | None) -> None:
    if pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

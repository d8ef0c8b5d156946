"""A real, throw-away `redis-server` for the tests: a free port, a temp dir, no persistence.

The tests never use a fake Redis: the Lua scripts are the thing under test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class RedisServerError(RuntimeError):
    pass


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _log_tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


def start_redis_server(
    workdir: Path, timeout: float = 10.0, attempts: int = 3, port: int | None = None
) -> RedisServer:
    """Start redis-server on a free port with its files in `workdir`; return once it answers
    PING. Retries on a new port if another process took the chosen one meanwhile. `port`:
    exactly that one (a restart where the old server was), no retries on another."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError(
            "redis-server is not installed: run `bash deploy/setup.sh` "
            "(or `apt-get install redis-server`); the Redis state tests need a real server"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    wanted = port
    for attempt in range(attempts if wanted is None else 1):
        port = _free_port() if wanted is None else wanted
        log_path = workdir / f"redis-{port}.log"
        cmd = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _pings(port):
                return RedisServer(port, proc, log_path)
            time.sleep(0.05)
        stop_redis_server(RedisServer(port, proc, log_path))
        last_error = (
            f"attempt {attempt + 1}: redis-server on port {port} "
            f"{'exited with ' + str(proc.returncode) if proc.returncode else 'did not answer'}"
            f"\n{_log_tail(log_path)}"
        )
    raise RedisServerError(f"could not start redis-server:\n{last_error}")


def stop_redis_server(server: RedisServer) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)

"""A test upstream in its own process, so a test can freeze it (SIGSTOP) as an operator or the
kernel freezes a vLLM server: its socket still accepts TCP connections, nothing answers.

`python -m tests.support.upstream_process PORT NAME` runs one `Upstream` until killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from tests.support.upstream import Upstream, free_port


class UpstreamProcess:
    def __init__(self, name: str = "up"):
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 20) -> UpstreamProcess:
        cmd = [sys.executable, "-m", "tests.support.upstream_process", str(self.port), self.name]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.stats()
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("upstream process did not start")

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=2).json()

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.proc.kill()
        self.proc.wait(timeout=10)


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    Upstream(name, port=port).start()
    threading.Event().wait()  # serve until killed


if __name__ == "__main__":
    main()

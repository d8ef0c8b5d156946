"""Run the real `routegate serve` command as a subprocess, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.accounting.request_log import read_records
from tests.support.upstream import free_port


class GatewayProcess:
    def __init__(
        self,
        policy: Path,
        workdir: Path,
        env: dict[str, str] | None = None,
        *,
        log: str | None = None,
        args: list[str] | None = None,
    ):
        """`log`: a request log other than workdir/requests.sqlite (a Postgres URL); `args`:
        more `routegate serve` options."""
        self.policy = policy
        self.port = free_port()
        self.log_path = workdir / "requests.sqlite"
        self.log = log or str(self.log_path)
        self._args = args or []
        self.state_path = workdir / "state.sqlite"
        self.stderr_path = workdir / "gateway.log"
        self._env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(
        self, method: str, path: str, json: object = None, key: str | None = None
    ) -> httpx.Response:
        """A request to the admin API, with the master key this gateway was started with."""
        key = key or self._env["ROUTEGATE_MASTER_KEY"]
        headers = {"authorization": f"Bearer {key}"}
        return httpx.request(method, self.url + path, json=json, headers=headers, timeout=30)

    def admin_json(self, method: str, path: str, json: object = None) -> dict:
        """An admin request that must succeed; its JSON body."""
        resp = self.admin(method, path, json)
        assert resp.status_code < 300, resp.text
        return resp.json()

    def new_key(self, **spec: object) -> tuple[str, str]:
        """A new API key (team "t" unless `spec` names one): its id and secret."""
        body = self.admin_json("POST", "/admin/keys", {"team": "t", **spec})
        return body["id"], body["secret"]

    def start(self, timeout: float = 60) -> GatewayProcess:
        cmd = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--policy",
            str(self.policy),
            "--port",
            str(self.port),
            "--log",
            self.log,
            "--state-file",
            str(self.state_path),
            *self._args,
        ]
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=self._env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not start:\n{self.output()}")

    def record(self, request_id: str, timeout: float = 5) -> dict:
        """The request log row of a request (the writer thread batches, so poll briefly)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for row in read_records(self.log_path):
                if row["request_id"] == request_id:
                    return row
            time.sleep(0.05)
        raise AssertionError(f"no request log row for {request_id}")

    def output(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

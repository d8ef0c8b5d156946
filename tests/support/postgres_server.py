"""A real, throw-away Postgres for the tests: initdb in a temp dir, trust auth, a free loopback
port, no fsync. Tests never fake Postgres: the SQL, the migrations and the reconnects are the
thing under test.

The binaries come from PATH or from Debian's /usr/lib/postgresql/*/bin (deploy/setup.sh
installs the `postgresql` package where neither has them). Postgres refuses to run as root:
as root (CI), the server runs as an unprivileged user (`postgres` where the package made one,
else `nobody`), in a temp dir that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROLE = "routegate"  # the superuser initdb makes; trust auth, no password


class PostgresServerError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    raise PostgresServerError(
        f"{name} is not installed: run `bash deploy/setup.sh` (Debian: apt-get install "
        "postgresql); the Postgres request-log tests need a real server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The user to run Postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresServerError("running as root, and neither a postgres nor a nobody user exists")


@dataclass
class PostgresServer:
    """One server; `stop()` and `start()` again on the same port and data (an outage)."""

    root: Path  # the temp dir: data/, the socket, the log
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def _popen(self, cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        user = _run_as()
        extra = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid}
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.root)}
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, **extra, **kwargs)  # type: ignore[call-overload,no-any-return]

    def init(self) -> None:
        cmd = [
            find_binary("initdb"), "-D", str(self.data_dir), "-U", ROLE, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        ]  # fmt: skip
        with (self.root / "initdb.log").open("wb") as out:
            proc = self._popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            if proc.wait(timeout=120) != 0:
                raise PostgresServerError(
                    f"initdb failed:\n{(self.root / 'initdb.log').read_text(errors='replace')}"
                )

    def start(self, timeout: float = 30.0) -> PostgresServer:
        cmd = [
            find_binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-h", "127.0.0.1", "-k", str(self.root),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        try:
            self.proc = self._popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostgresServerError(f"postgres exited {self.proc.returncode}:\n{self.tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return self
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise PostgresServerError(f"postgres did not answer in {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are cut off, as in an outage."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def create_database(self, name: str) -> str:
        """A fresh database; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres_server() -> PostgresServer:
    """initdb and start a server in a new temp dir (outside pytest's, which only root can
    enter: the server may run as another user)."""
    root = Path(tempfile.mkdtemp(prefix="routegate-pg-"))
    user = _run_as()
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(root)
    try:
        server.init()
        server.start()
    except BaseException:
        server.cleanup()
        raise
    return server

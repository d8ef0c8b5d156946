"""The real image: built from deploy/Dockerfile, run with `docker run --network host` (loopback
only, never a bridge network) in front of bench/fast_upstream.py on the host. It must become
ready and healthy, answer a completion through the policy mounted at /etc/routegate/policy.yaml,
take its master key from the environment, run as its unprivileged user, and carry no compiler.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.postgres_server import start_postgres_server
from tests.support.redis_server import start_redis_server, stop_redis_server
from tests.support.upstream import free_port

ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "container-test-master-key"
POLICY = """\
version: 1
defaults: {{timeout_s: 10, retries: 0, health_interval_s: 1}}
models:
  fast:
    provider: vllm
    endpoints: [http://127.0.0.1:{port}/v1]
    served_name: fast
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap:
    models: [fast]
"""


@dataclass(slots=True, frozen=True)
class Container:
    name: str
    url: str


def docker(*args: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "fast_upstream did not start"
                time.sleep(0.1)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def container(
    image: str, upstream: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text(POLICY.format(port=upstream))
    policy.chmod(0o644)  # read by the image's uid 10001 through the bind mount
    port = free_port()
    name = f"routegate-test-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    docker(
        "run", "-d", "--name", name,
        "--network", "host",  # the host's loopback; this tier never uses a bridge network
        "-v", f"{policy}:/etc/routegate/policy.yaml:ro",
        "-e", f"ROUTEGATE_MASTER_KEY={MASTER_KEY}",
        "-e", f"ROUTEGATE_READYZ_URL={url}/readyz",
        image,
        # After the image's ENTRYPOINT: the last --host/--port given wins.
        "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip
    try:
        yield Container(name, url)
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        print(logs.stdout[-4000:], logs.stderr[-4000:])
        docker("rm", "-f", name, check=False)


def wait_ready(container: Container, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = docker("inspect", "-f", "{{.State.Status}}", container.name)
        assert state == "running", f"container {state}:\n{docker('logs', container.name)}"
        try:
            if httpx.get(container.url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"/readyz not 200 after {timeout}s:\n{docker('logs', container.name)}")


def test_ready_and_answers_a_completion(container: Container) -> None:
    print(f"ready after {wait_ready(container):.1f}s")
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    refused = httpx.post(container.url + "/v1/chat/completions", json=body, timeout=10)
    assert refused.status_code == 401, refused.text  # the master key came from the environment
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    r = httpx.post(container.url + "/v1/chat/completions", json=body, headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-routegate-model"] == "fast"
    assert float(r.headers["x-routegate-cost-usd"]) > 0
    assert r.json()["choices"][0]["message"]["content"]
    ready = httpx.get(container.url + "/readyz", headers=auth, timeout=5).json()
    assert ready["healthy_models"] == ["fast"]


def test_healthcheck_reports_healthy(container: Container) -> None:
    wait_ready(container)
    deadline = time.monotonic() + 60  # the HEALTHCHECK runs every 15 s
    while (status := docker("inspect", "-f", "{{.State.Health.Status}}", container.name)) != (
        "healthy"
    ):
        assert status == "starting" and time.monotonic() < deadline, status
        time.sleep(1)
    log = json.loads(docker("inspect", "-f", "{{json .State.Health.Log}}", container.name))
    assert log[-1]["ExitCode"] == 0


def test_runs_unprivileged_without_compilers(container: Container) -> None:
    assert docker("exec", container.name, "id", "-u") == "10001"
    found = docker(
        "exec", container.name, "sh", "-c", "command -v gcc cc c++ make || true", check=False
    )
    assert found == "", f"compilers in the final image: {found}"
    # The request log and state live in the image's volume, owned by that user.
    listing = docker("exec", container.name, "ls", "-n", "/var/lib/routegate")
    assert "requests.sqlite" in listing and " 10001 10001 " in listing, listing


def test_default_policy_is_valid(image: str) -> None:
    # The bundled example, its learned route's router at the image's /opt/routegate/routers.
    out = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "routegate", image,
        "policy", "validate", "/etc/routegate/policy.yaml",
    )  # fmt: skip
    assert out.endswith("ok (4 models, 6 routes)"), out


def test_compose_fleet_policy_is_valid_in_the_image(image: str) -> None:
    # deploy/policies/fleet.yaml names the image's router folder, so only the image can check it.
    fleet = ROOT / "deploy" / "policies" / "fleet.yaml"
    out = docker(
        "run", "--rm", "--network", "none", "-v", f"{fleet}:/etc/routegate/policy.yaml:ro",
        "--entrypoint", "routegate", image, "policy", "validate", "/etc/routegate/policy.yaml",
    )  # fmt: skip
    assert out.endswith("ok (4 models, 6 routes)"), out


def test_fleet_replica_on_redis_and_postgres_survives_a_docker_stop(
    image: str, upstream: int, tmp_path: Path
) -> None:
    """A replica as compose and Kubernetes run it: two workers on a real redis-server (state)
    and a real Postgres (the request log: the image's driver and the wheel's migrations), its
    name from the environment; SIGTERM (docker stop) drains and flushes every row."""
    server = start_postgres_server()
    redis = start_redis_server(tmp_path / "redis")
    try:
        url = server.create_database("routegate")
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(port=upstream) + f"state: {{url: '{redis.url}'}}\n")
        policy.chmod(0o644)
        port = free_port()
        name = f"routegate-test-pg-{uuid.uuid4().hex[:8]}"
        docker(
            "run", "-d", "--name", name, "--network", "host",
            "-v", f"{policy}:/etc/routegate/policy.yaml:ro",
            "-e", "ROUTEGATE_REPLICA=image-test", "-e", f"ROUTEGATE_READYZ_URL=http://127.0.0.1:{port}/readyz",
            image, "--host", "127.0.0.1", "--port", str(port), "--log", url,
            "--state-file", "/var/lib/routegate/state.sqlite", "--drain-timeout", "5",
            "--workers", "2",
        )  # fmt: skip
        try:
            box = Container(name, f"http://127.0.0.1:{port}")
            wait_ready(box)
            body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}
            ids = []
            for _ in range(6):
                r = httpx.post(box.url + "/v1/chat/completions", json=body, timeout=10)
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-routegate-request-id"])
            docker("stop", "-t", "30", name, timeout=60)
            assert docker("inspect", "-f", "{{.State.ExitCode}}", name) == "0"
        finally:
            print(docker("logs", name, check=False)[-3000:])
            docker("rm", "-f", name, check=False)
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT request_id, replica, status FROM requests").fetchall()
        assert sorted(rows) == sorted((i, "image-test", 200) for i in ids)
    finally:
        stop_redis_server(redis)
        server.cleanup()

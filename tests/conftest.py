"""Session fixtures for the system and integration tiers: tiny demo models, real vLLM servers
serving them, and a real redis-server.

Each is started once per test session (vLLM: ~15-30 s on 2 cores), and only when a test asks
for it, so unit-test runs pay nothing.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Light imports only (httpx); torch/transformers/vllm load inside the fixtures that need them.
from gateway.demo.vllm_servers import (
    VllmServer,
    VllmServerError,
    free_port,
    start_servers,
    stop_servers,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def distinct_ports(n: int) -> list[int]:
    """n free ports, distinct even if the OS hands one out twice."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """name -> folder of the tiny demo models, built once and cached across sessions."""
    if importlib.util.find_spec("transformers") is None:
        pytest.fail("transformers is not installed: run `bash deploy/setup.sh`", pytrace=False)
    from gateway.demo.tiny_models import build_tiny_models

    # Cached under var/ (git-ignored): the build is deterministic, so later sessions reuse it.
    out = Path(os.environ.get("ROUTEGATE_TEST_MODELS", REPO_ROOT / "var" / "test-models"))
    return build_tiny_models(out)


@pytest.fixture(scope="session")
def vllm_server_handles(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[VllmServer]]:
    """The running servers (tiny-small, tiny-large), for tests needing more than URLs (log
    paths, ports, RSS). Shared by the whole session, so tests must not stop them."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: run `bash deploy/setup.sh`", pytrace=False)

    ports = distinct_ports(len(tiny_models))
    specs = [
        (name, folder, port)
        for (name, folder), port in zip(tiny_models.items(), ports, strict=True)
    ]
    log_dir = tmp_path_factory.mktemp("vllm-logs")
    timeout = float(os.environ.get("ROUTEGATE_VLLM_TIMEOUT", "240"))
    try:
        servers = start_servers(specs, log_dir, timeout=timeout)
    except VllmServerError as exc:  # the message carries each failing server's log tail
        pytest.fail(f"could not start the vLLM test servers:\n{exc}", pytrace=False)
    try:
        yield servers
    finally:
        stop_servers(servers)


@pytest.fixture(scope="session")
def vllm_servers(request: pytest.FixtureRequest) -> dict[str, str]:
    """Served model name -> base URL (`http://127.0.0.1:PORT/v1`) of the real vLLM servers.

    ROUTEGATE_TEST_VLLM="tiny-small=URL,tiny-large=URL" reuses servers already running (started
    with `python -m gateway.demo.vllm_servers`), so a developer pays the start-up once."""
    given = os.environ.get("ROUTEGATE_TEST_VLLM")
    if given:
        return dict(pair.split("=", 1) for pair in given.split(","))
    handles: list[VllmServer] = request.getfixturevalue("vllm_server_handles")
    return {s.name: s.base_url for s in handles}


@pytest.fixture(scope="session")
def real_vllm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Served name -> base URL of the REAL demo pair on vLLM: SmolLM2-135M-Instruct as
    `smollm2-135m` and Gemma 3 270M as `gemma3-270m` (gateway/demo/real_models.py), prepared
    once under var/models and started once per session, only when a test asks for them.
    ROUTEGATE_TEST_VLLM_REAL="smollm2-135m=URL,gemma3-270m=URL" reuses running servers."""
    given = os.environ.get("ROUTEGATE_TEST_VLLM_REAL")
    if given:
        yield dict(pair.split("=", 1) for pair in given.split(","))
        return
    from gateway.demo.real_models import RealModelError
    from gateway.demo.vllm_servers import demo_model_folders

    models = Path(os.environ.get("ROUTEGATE_DEMO_MODELS", REPO_ROOT / "var" / "models"))
    try:
        folders = demo_model_folders(models)
    except RealModelError as exc:
        pytest.fail(f"could not prepare the real demo models:\n{exc}", pytrace=False)
    ports = distinct_ports(len(folders))
    specs = [
        (name, folder, port) for (name, folder), port in zip(folders.items(), ports, strict=True)
    ]
    timeout = float(os.environ.get("ROUTEGATE_VLLM_TIMEOUT", "240")) + 240  # a larger model
    try:
        servers = start_servers(specs, tmp_path_factory.mktemp("vllm-real-logs"), timeout)
    except VllmServerError as exc:
        pytest.fail(f"could not start the real demo models:\n{exc}", pytrace=False)
    try:
        yield {s.name: s.base_url for s in servers}
    finally:
        stop_servers(servers)


@pytest.fixture(scope="session")
def vllm_embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real vLLM pooling server serving all-MiniLM-L6-v2 as `minilm`, started
    once per session (only when a test asks for it). ROUTEGATE_TEST_VLLM_EMBED=URL reuses one
    already running."""
    given = os.environ.get("ROUTEGATE_TEST_VLLM_EMBED")
    if given:
        yield given
        return
    from gateway.demo.vllm_servers import embedding_server, launch

    server = embedding_server(free_port(), tmp_path_factory.mktemp("vllm-embed-logs"))
    timeout = float(os.environ.get("ROUTEGATE_VLLM_TIMEOUT", "240"))
    try:
        launch([server], timeout=timeout)
    except VllmServerError as exc:
        pytest.fail(f"could not start the vLLM embedding server:\n{exc}", pytrace=False)
    try:
        yield server.base_url
    finally:
        stop_servers([server])


# -- a real redis-server, for the system tier ----------------------------------------------------
# Imported here rather than at the top so this section stays one appended block. The `state`
# fixture lives per tier: tests/unit/conftest.py (MemoryState), tests/system/conftest.py (redis).
from tests.support.redis_server import (  # noqa: E402
    RedisServerError,
    start_redis_server,
    stop_redis_server,
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real redis-server started once per session (only when a test asks for it)."""
    try:
        server = start_redis_server(tmp_path_factory.mktemp("redis"))
    except RedisServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        stop_redis_server(server)


# -- a real Postgres, for the system tier ---------------------------------------------------------
# Imported here rather than at the top so this section stays one appended block.
from tests.support.postgres_server import (  # noqa: E402
    PostgresServer,
    PostgresServerError,
    start_postgres_server,
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real Postgres started once per session (only when a test asks for it). Tests that
    stop it must start it again before they end (see test_request_log_postgres.py)."""
    try:
        server = start_postgres_server()
    except PostgresServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server (one per test)."""
    import uuid

    if postgres_server.proc is None or postgres_server.proc.poll() is not None:
        postgres_server.start()  # a test before this one left it stopped
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")

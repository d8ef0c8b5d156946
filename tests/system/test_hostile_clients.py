"""Hostile clients against the real `routegate serve` process: oversized and endless bodies,
header floods, slowloris, wrong field types and absurd integers each get a clear OpenAI-shaped
4xx (never a 500, a reset or a held socket), and an unexpected failure is a JSON 500."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

MASTER = "master-hostile-key"
MAX_BODY = 1024 * 1024  # the policy's defaults.max_request_bytes
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MESSAGES = [{"role": "user", "content": "hello"}]

POLICY = """
version: 1
defaults: {{timeout_s: 5, retries: 0, health_interval_s: 0.5, max_request_bytes: {max_body}}}
models:
  fast:
    provider: vllm
    endpoints: [{a}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
    fallbacks: [strong]
  strong:
    provider: vllm
    endpoints: [{b}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  remote:
    provider: litellm
    model: openai/remote-served
    api_base: {c}
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
    fallbacks: [strong]
routes:
  cheap: {{models: [fast, strong]}}
  remote-first: {{models: [remote, strong]}}
"""

LIMITS_ENV = {
    "ROUTEGATE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "ROUTEGATE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    ups = {name: Upstream(name).start() for name in ("a", "b", "c")}
    yield ups
    for up in ups.values():
        up.stop()


def _start(ups: dict[str, Upstream], work: Path, env: dict[str, str]) -> GatewayProcess:
    policy = work / "policy.yaml"
    policy.write_text(
        POLICY.format(
            max_body=MAX_BODY, a=ups["a"].base_url, b=ups["b"].base_url, c=ups["c"].base_url
        )
    )
    return GatewayProcess(policy, work, env={**LIMITS_ENV, **env}).start()


@pytest.fixture(scope="module")
def gateway(
    upstreams: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """An open gateway: no master key, no virtual keys."""
    gw = _start(upstreams, tmp_path_factory.mktemp("open"), {})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def master_gateway(
    upstreams: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """With a master key, and a policy history that cannot be opened (a folder stands where
    its SQLite file should be): a real failure no handler expects."""
    work = tmp_path_factory.mktemp("master")
    (work / "routegate-policy-history.sqlite").mkdir()
    gw = _start(upstreams, work, {"ROUTEGATE_MASTER_KEY": MASTER})
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _healthy(upstreams: dict[str, Upstream]) -> Iterator[None]:
    for up in upstreams.values():
        up.mode = "ok"
    yield
    for up in upstreams.values():
        up.mode = "ok"


MASTER_AUTH = {"authorization": f"Bearer {MASTER}"}


def assert_openai_error(resp: httpx.Response | dict[str, Any], status: int) -> dict[str, Any]:
    if isinstance(resp, httpx.Response):
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        body = resp.json()
    else:
        body = resp
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


# -- raw HTTP -----------------------------------------------------------------------------------


def connect(gw: GatewayProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def readable(sock: socket.socket, wait: float = 0) -> bool:
    return bool(select.select([sock], [], [], wait)[0])


def proc_status(gw: GatewayProcess, field: str) -> int:
    """A /proc/PID/status memory field of the gateway process, in KiB."""
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def send_chunked(
    gw: GatewayProcess, path: str, total: int, headers: dict[str, str] | None = None
) -> tuple[int, tuple[int, dict[str, str], bytes]]:
    """Stream up to `total` bytes as a chunked body, stopping as soon as the gateway answers;
    (bytes sent, the answer)."""
    sock = connect(gw)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: application/json\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    sock.sendall(head.encode() + b"\r\n")
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    try:
        while sent < total and not readable(sock):
            sock.sendall(frame)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway answered and closed while we were still sending
    try:
        return sent, read_response(sock)
    finally:
        sock.close()


def test_a_chunked_oversized_chat_body_is_413_while_reading_with_bounded_memory(
    gateway: GatewayProcess,
) -> None:
    peak_before = proc_status(gateway, "VmHWM")
    sent, (status, headers, body) = send_chunked(gateway, "/v1/chat/completions", 256 << 20)
    assert status == 413, body
    err = assert_openai_error(orjson.loads(body), 413)
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    assert sent < 64 << 20, f"the gateway read {sent >> 20} MB before answering"
    growth_mb = (proc_status(gateway, "VmHWM") - peak_before) / 1024
    assert growth_mb < 48, f"peak memory grew {growth_mb:.0f} MB"
    # Still one request log row per request.
    assert gateway.record(headers["x-routegate-request-id"])["status"] == 413


@pytest.mark.parametrize(
    "path",
    ["/dashboard/login", "/admin/keys", "/dashboard/policy/validate", "/dashboard/policy/apply"],
)
def test_every_endpoint_has_a_body_limit(master_gateway: GatewayProcess, path: str) -> None:
    peak_before = proc_status(master_gateway, "VmHWM")
    sent, (status, _, body) = send_chunked(master_gateway, path, 64 << 20, MASTER_AUTH)
    assert status == 413, body
    assert assert_openai_error(orjson.loads(body), 413)["code"] == "request_too_large"
    assert sent < 32 << 20
    assert (proc_status(master_gateway, "VmHWM") - peak_before) / 1024 < 32


def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    master_gateway: GatewayProcess,
) -> None:
    sock = connect(master_gateway, timeout=5)
    sock.sendall(
        b"POST /admin/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + MASTER.encode() + b"\r\nContent-Length: 100000000\r\n\r\n"
    )
    status, _, body = read_response(sock)
    sock.close()
    assert status == 413 and orjson.loads(body)["error"]["code"] == "request_too_large"


def test_five_thousand_headers_are_refused(gateway: GatewayProcess) -> None:
    sock = connect(gateway)
    lines = "".join(f"X-Flood-{i}: v\r\n" for i in range(5000))
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 431, body
    assert assert_openai_error(orjson.loads(body), 431)["code"] == "too_many_headers"
    assert headers["connection"] == "close"


def test_a_one_megabyte_header_is_refused(gateway: GatewayProcess) -> None:
    peak_before = proc_status(gateway, "VmHWM")
    sock = connect(gateway)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        )
    status, _, body = read_response(sock)
    sock.close()
    assert status == 431, body
    assert assert_openai_error(orjson.loads(body), 431)["code"] == "headers_too_large"
    assert (proc_status(gateway, "VmHWM") - peak_before) / 1024 < 16


def closed_within(sock: socket.socket, seconds: float, drip: bytes | None) -> float | None:
    """Seconds until the gateway closed the connection (dripping `drip` every 0.5 s), or None
    if it was still open after `seconds`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if readable(sock, 0.5):
            try:
                while sock.recv(65536):  # a 408 answer, then the close
                    pass
            except ConnectionResetError:
                pass
            return time.monotonic() - t0
        if drip is not None:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0
    return None


def test_slowloris_headers_are_cut_off_after_the_header_timeout(gateway: GatewayProcess) -> None:
    sock = connect(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    took = closed_within(sock, 15, b"X-Slow: 1\r\n")
    sock.close()
    assert took is not None and took < HEADER_TIMEOUT_S + 2, took


def test_a_silent_connection_is_closed_after_the_header_timeout(gateway: GatewayProcess) -> None:
    sock = connect(gateway)
    took = closed_within(sock, 15, None)
    sock.close()
    assert took is not None and took < HEADER_TIMEOUT_S + 2, took


def test_a_stalled_body_is_408_after_the_body_timeout(gateway: GatewayProcess) -> None:
    sock = connect(gateway, timeout=15)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    t0 = time.monotonic()
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 408, body
    assert time.monotonic() - t0 < BODY_TIMEOUT_S + 3
    assert assert_openai_error(orjson.loads(body), 408)["code"] == "request_timeout"
    assert gateway.record(headers["x-routegate-request-id"])["status"] == 408


def test_keep_alive_connections_still_serve_requests_with_pauses(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT_S + 0.5)  # longer than the header timeout, not keep-alive
        body = {"model": "cheap", "messages": MESSAGES}
        assert client.post("/v1/chat/completions", json=body).status_code == 200


# -- wrong types in the OpenAI fields the gateway knows ------------------------------------------

CHAT = {"model": "cheap", "messages": MESSAGES}
COMPLETION = {"model": "cheap", "prompt": "hi"}


@pytest.mark.parametrize(
    ("endpoint", "payload", "param"),
    [
        ("chat", {**CHAT, "response_format": 1.5}, "response_format"),
        ("chat", {**CHAT, "response_format": {"type": "yaml"}}, "response_format.type"),
        ("chat", {**CHAT, "tools": 1.5}, "tools"),
        ("chat", {**CHAT, "tools": [{"type": "function"}]}, "tools[0].function"),
        ("chat", {**CHAT, "tool_choice": 1.5}, "tool_choice"),
        ("chat", {**CHAT, "functions": "f"}, "functions"),
        ("chat", {**CHAT, "logit_bias": [1]}, "logit_bias"),
        ("chat", {**CHAT, "seed": "x"}, "seed"),
        ("chat", {**CHAT, "presence_penalty": "x"}, "presence_penalty"),
        ("chat", {**CHAT, "frequency_penalty": 3}, "frequency_penalty"),
        ("chat", {**CHAT, "user": 1}, "user"),
        ("chat", {**CHAT, "logprobs": "x"}, "logprobs"),
        ("chat", {**CHAT, "top_logprobs": "x"}, "top_logprobs"),
        ("chat", {**CHAT, "parallel_tool_calls": "x"}, "parallel_tool_calls"),
        ("chat", {**CHAT, "metadata": 1}, "metadata"),
        ("chat", {**CHAT, "stop": 1}, "stop"),
        ("chat", {**CHAT, "stream_options": 1}, "stream_options"),
        ("chat", {**CHAT, "messages": [{"role": "user", "content": 1.5}]}, "messages[0].content"),
        ("completions", {**COMPLETION, "prompt": []}, "prompt"),
        ("completions", {**COMPLETION, "echo": "x"}, "echo"),
        ("completions", {**COMPLETION, "suffix": 1}, "suffix"),
        ("completions", {**COMPLETION, "best_of": "x"}, "best_of"),
        ("completions", {**COMPLETION, "logit_bias": 1.5}, "logit_bias"),
        ("completions", {**COMPLETION, "seed": 1.5}, "seed"),
    ],
)
def test_a_wrong_type_in_a_known_field_is_a_400_before_any_model_is_called(
    gateway: GatewayProcess,
    upstreams: dict[str, Upstream],
    endpoint: str,
    payload: dict[str, Any],
    param: str,
) -> None:
    hits = {name: up.hits for name, up in upstreams.items()}
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    resp = httpx.post(gateway.url + path, json=payload)
    err = assert_openai_error(resp, 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert {name: up.hits for name, up in upstreams.items()} == hits


def test_a_wrong_type_on_a_remote_route_is_400_not_a_failover(
    gateway: GatewayProcess, upstreams: dict[str, Upstream]
) -> None:
    hits = {name: up.hits for name, up in upstreams.items()}
    body = {"model": "remote-first", "messages": MESSAGES, "response_format": 1.5}
    resp = httpx.post(gateway.url + "/v1/chat/completions", json=body)
    assert assert_openai_error(resp, 400)["param"] == "response_format"
    assert "x-routegate-fallbacks" not in resp.headers
    assert {name: up.hits for name, up in upstreams.items()} == hits


@pytest.mark.parametrize("route", ["cheap", "remote-first"])
def test_an_upstream_400_is_the_clients_error_and_never_fails_over(
    gateway: GatewayProcess, upstreams: dict[str, Upstream], route: str
) -> None:
    first = upstreams["a" if route == "cheap" else "c"]
    first.mode = "400"
    strong_hits, first_hits = upstreams["b"].hits, first.hits
    resp = httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": route, "messages": MESSAGES}
    )
    err = assert_openai_error(resp, 400)
    assert err["param"] == "max_tokens"
    assert first.hits == first_hits + 1
    assert upstreams["b"].hits == strong_hits  # the fallback model was not called


def test_valid_known_fields_still_pass_through(
    gateway: GatewayProcess, upstreams: dict[str, Upstream]
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {
        **CHAT,
        "model": "strong",
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "logit_bias": {"50256": -100},
        "seed": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "user": "u1",
        "logprobs": True,
        "top_logprobs": 2,
        "parallel_tool_calls": False,
        "metadata": {"k": "v"},
        "stop": ["x"],
        "top_k": 3,  # vLLM's own fields still pass untouched
    }
    resp = httpx.post(gateway.url + "/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    sent = upstreams["b"].bodies[-1]
    assert {k: v for k, v in sent.items() if k != "model"} == {
        k: v for k, v in body.items() if k != "model"
    }
    done = httpx.post(
        gateway.url + "/v1/completions",
        json={**COMPLETION, "prompt": [[1, 2]], "echo": True, "suffix": "s", "best_of": 1},
    )
    assert done.status_code == 200, done.text


# -- integers past what SQLite holds, and the last-resort handler ---------------------------------


def test_huge_integers_are_400_naming_the_field(master_gateway: GatewayProcess) -> None:
    url = master_gateway.url
    resp = httpx.get(url + "/dashboard/policy/versions/99999999999999999999", headers=MASTER_AUTH)
    assert assert_openai_error(resp, 400)["param"] == "version_id"
    resp = httpx.post(
        url + "/dashboard/policy/rollback",
        json={"id": 10**20, "who": "mallory"},
        headers=MASTER_AUTH,
    )
    assert assert_openai_error(resp, 400)["param"] == "id"
    for field in ("tpm", "rpm"):
        resp = httpx.post(
            url + "/admin/keys", json={"team": "t", field: 10**20}, headers=MASTER_AUTH
        )
        assert assert_openai_error(resp, 400)["param"] == field
    resp = httpx.post(
        url + "/admin/keys",
        content=b'{"team": "t", "budget_usd": 1e400}',
        headers={**MASTER_AUTH, "content-type": "application/json"},
    )
    assert assert_openai_error(resp, 400)["param"] == "budget_usd"


def test_a_rejected_apply_is_openai_shaped(master_gateway: GatewayProcess) -> None:
    resp = httpx.post(
        master_gateway.url + "/dashboard/policy/apply",
        json={"text": "version: 1\nmodels: 3\n", "who": "mallory"},
        headers=MASTER_AUTH,
    )
    err = assert_openai_error(resp, 400)
    assert err["type"] == "invalid_request_error"
    assert resp.json()["problems"][0]["field"] == "models"


def test_an_unexpected_failure_is_an_openai_shaped_json_500(
    master_gateway: GatewayProcess,
) -> None:
    resp = httpx.get(master_gateway.url + "/dashboard/policy/history.json", headers=MASTER_AUTH)
    err = assert_openai_error(resp, 500)
    assert err["type"] == "api_error" and err["code"] == "internal_error"
    assert "Traceback" not in resp.text
    # The process lives on and keeps answering.
    assert httpx.get(master_gateway.url + "/healthz").status_code == 200

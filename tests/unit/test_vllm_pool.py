"""Endpoint choice and retry rules of the vLLM pool, over real HTTP to test upstreams."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.backends.base import UpstreamCall, UpstreamError
from gateway.backends.vllm_pool import VllmPool
from policies.schema import VllmModel
from tests.support.upstream import Upstream, free_port

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def pool(
    urls: list[str], client: httpx.AsyncClient, cooldown_s: float = 30, eject_after: int = 1
) -> VllmPool:
    cfg = VllmModel(
        provider="vllm", endpoints=urls, pricing={"input_per_1m": 1, "output_per_1m": 1}
    )
    # One failed call ejects, unless a test says otherwise: the rules below count single calls.
    return VllmPool(
        "m", cfg, client, health_interval_s=60, cooldown_s=cooldown_s, eject_after=eject_after
    )


def call(retries: int = 1, timeout_s: float = 5) -> UpstreamCall:
    return UpstreamCall("chat", BODY, timeout_s, retries)


async def test_concurrent_requests_spread_by_outstanding(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    for up in ups:
        up.mode, up.delay_s = "slow", 0.3
    p = pool([u.base_url for u in ups], client)
    for _ in range(3):
        await asyncio.gather(*(p.complete(call()) for _ in range(4)))
    # Fewest-outstanding choice puts exactly two of each wave of four on each endpoint.
    assert [u.hits for u in ups] == [6, 6]


async def test_connect_error_retries_on_next_endpoint_and_cools_down(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    p = pool([dead, ups[0].base_url], client)
    # Ties are shuffled, so over 20 requests the dead endpoint is picked first at least once
    # (all but certainly); that attempt moves on to the live one.
    answers = [await p.complete(call()) for _ in range(20)]
    assert all(a.endpoint == ups[0].base_url for a in answers)
    assert ups[0].hits == 20
    # The dead endpoint was tried exactly once: afterwards it is cooling down, tried last.
    assert p.endpoints[0].failures == 1


async def test_5xx_retries_elsewhere_but_4xx_does_not(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    ups[0].mode = "500"
    p = pool([u.base_url for u in ups], client)
    # Ties are shuffled: call until the failing endpoint has been picked once (20 calls miss it
    # one time in a million), then it is cooled down and never picked again.
    for _ in range(20):
        assert (await p.complete(call())).endpoint == ups[1].base_url
        if ups[0].hits:
            break
    for _ in range(4):
        assert (await p.complete(call())).endpoint == ups[1].base_url
    assert ups[0].hits == 1  # failed once, then cooled down

    ups[0].mode = ups[1].mode = "400"
    p2 = pool([u.base_url for u in ups], client)
    before = ups[0].hits + ups[1].hits
    with pytest.raises(UpstreamError) as exc:
        await p2.complete(call())
    assert exc.value.status == 400 and not exc.value.retryable and exc.value.param == "max_tokens"
    assert ups[0].hits + ups[1].hits == before + 1


async def test_retries_are_bounded(ups: list[Upstream], client: httpx.AsyncClient) -> None:
    for up in ups:
        up.mode = "500"
    p = pool([u.base_url for u in ups], client)
    with pytest.raises(UpstreamError) as exc:
        await p.complete(call(retries=0))
    assert exc.value.status == 502 and exc.value.retryable
    assert ups[0].hits + ups[1].hits == 1


async def test_timeout_is_504(ups: list[Upstream], client: httpx.AsyncClient) -> None:
    ups[0].mode, ups[0].delay_s = "slow", 2
    p = pool([ups[0].base_url], client)
    with pytest.raises(UpstreamError) as exc:
        await p.complete(call(retries=0, timeout_s=0.3))
    assert exc.value.status == 504


async def test_health_probe_marks_down_and_back_up(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    p = pool([ups[0].base_url], client, cooldown_s=0)
    await p.probe_all()
    assert p.healthy()
    ups[0].mode = "unhealthy"
    await p.probe_all()
    assert p.healthy()  # one failed probe is not enough (unhealthy_after: 2)
    await p.probe_all()
    assert not p.healthy()
    # Still tried as a last resort rather than refusing outright.
    ups[0].mode = "ok"
    assert (await p.complete(call())).endpoint == ups[0].base_url
    await p.probe_all()
    assert p.healthy()


async def test_stream_opens_on_a_working_endpoint(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    ups[0].mode = "500"
    p = pool([u.base_url for u in ups], client)
    for _ in range(3):
        stream = await p.open_stream(UpstreamCall("chat", {**BODY, "stream": True}, 5, 1))
        chunks = [c async for c in stream]
        assert stream.endpoint == ups[1].base_url
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
        assert stream.usage.completion_tokens == 5 and stream.usage.exact
    assert all(p.endpoints[i].outstanding == 0 for i in range(2))
    sent = ups[1].bodies[-1]
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


@pytest.mark.parametrize("status", ["401", "404"])
async def test_gateway_side_faults_move_on_as_502(
    ups: list[Upstream], client: httpx.AsyncClient, status: str
) -> None:
    # A wrong key or served name at one endpoint is the gateway's fault, not the client's.
    ups[0].mode = status
    p = pool([ups[0].base_url], client)
    with pytest.raises(UpstreamError) as exc:
        await p.complete(call(retries=0))
    assert exc.value.status == 502 and exc.value.retryable
    assert f"refused the gateway ({status})" in exc.value.message


async def test_ejection_takes_failed_calls_in_a_row_but_not_a_long_request(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    ups[0].mode = "500"
    p = pool([ups[0].base_url], client, eject_after=3)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await p.complete(call(retries=0))
        assert p.healthy()  # not yet: two failures in a row
    with pytest.raises(UpstreamError):
        await p.complete(call(retries=0))
    assert not p.healthy()  # the third ejects it

    # A live endpoint that runs past timeout_s answers /health: the request was too long for
    # the timeout, the server is fine, and no client can eject servers that way.
    ups[1].mode, ups[1].delay_s = "slow", 2
    p2 = pool([ups[1].base_url], client, eject_after=1)
    timed = UpstreamCall("chat", BODY, 0.5, 0, first_byte_timeout_s=0.2)
    for _ in range(2):
        with pytest.raises(UpstreamError) as exc:
            await p2.complete(timed)
        assert exc.value.status == 504
    assert p2.healthy() and p2.endpoints[0].failures == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_no_endpoint_connecting_is_a_plain_503_with_a_retry_time(
    client: httpx.AsyncClient, stream: bool
) -> None:
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    p = pool(dead, client, cooldown_s=12)
    with pytest.raises(UpstreamError) as exc:
        await (p.open_stream(call()) if stream else p.complete(call()))
    err = exc.value
    assert (err.status, err.code) == (503, "upstream_unavailable")
    # The client's words name the model only; hosts, ports and the transport's repr are the
    # request log's (`detail`, `attempts`).
    assert err.message == "model 'm': could not connect to its endpoint(s)"
    assert "127.0.0.1" not in err.message and "Error" not in err.message
    assert err.detail is not None and err.detail.startswith("unreachable: ")
    assert sorted(err.attempts) == sorted(dead)
    # Both are ejected for the cooldown: the first to come back is when to retry.
    assert 11 < (err.retry_after_s or 0) <= 12


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_calls_headers_reach_the_upstream(
    ups: list[Upstream], client: httpx.AsyncClient, stream: bool
) -> None:
    # The trace context of a traced call (gateway/backends/traced.py), on the direct lane too.
    p = pool([ups[0].base_url], client)
    body = {**BODY, "stream": True} if stream else BODY
    traced = UpstreamCall("chat", body, 5, 0, headers={"traceparent": TRACEPARENT})
    if stream:
        s = await p.open_stream(traced)
        _ = [chunk async for chunk in s]
        await s.aclose()
    else:
        await p.complete(traced)
        await p.complete(call())  # untraced: no header
    assert ups[0].headers[0]["traceparent"] == TRACEPARENT
    assert ups[0].headers[0]["content-type"] == "application/json"
    assert all("traceparent" not in h for h in ups[0].headers[1:])


async def test_cached_prompt_tokens_are_read_whole_and_streamed(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    # As vLLM reports them with --enable-prompt-tokens-details.
    details = {"cached_tokens": 4}
    ups[0].usage_report = {
        "prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12,
        "prompt_tokens_details": details,
    }  # fmt: skip
    p = pool([ups[0].base_url], client)
    done = await p.complete(call())
    assert done.usage.cached_tokens == 4 and done.usage.exact
    assert done.body["usage"]["prompt_tokens_details"] == details
    stream = await p.open_stream(UpstreamCall("chat", {**BODY, "stream": True}, 5, 0))
    chunks = [c async for c in stream]
    assert chunks[-1]["usage"]["prompt_tokens_details"] == details
    assert stream.usage.cached_tokens == 4 and stream.usage.exact


class ClosingKeepAlive:
    """An HTTP/1.1 upstream whose keep-alive runs out while a request is on its way: a request
    that arrives on a connection idle for `keepalive_s` or more is reset unread, as uvicorn
    (vLLM's server) does when its 5 s keep-alive timer fires late on a busy loop. Raw sockets,
    because no server library lets a test choose that moment."""

    ANSWER = (
        b'{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    )

    def __init__(self, keepalive_s: float):
        self.keepalive_s = keepalive_s
        self.connections = self.resets = 0

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *_: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while head := await reader.readuntil(b"\r\n\r\n"):
            if loop.time() - idle_since >= self.keepalive_s:
                self.resets += 1
                writer.transport.abort()  # closed with the request unread: a reset
                return
            length = next(
                int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length")
            )  # fmt: skip
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + b"content-length: %d\r\n\r\n" % len(self.ANSWER)
                + self.ANSWER
            )
            await writer.drain()
            idle_since = loop.time()


async def test_an_idle_connection_is_dropped_before_vllms_keepalive_closes_it(
    client: httpx.AsyncClient,
) -> None:
    # A connection idle 4.5 s is one vLLM may be closing that moment; it is not reused, so
    # the call after the pause opens a new one instead of being reset into a 503.
    upstream = ClosingKeepAlive(keepalive_s=4.5)
    async with upstream as url:
        p = VllmPool(
            "m",
            VllmModel(
                provider="vllm", endpoints=[url], pricing={"input_per_1m": 1, "output_per_1m": 1}
            ),
            client,
            health_interval_s=600,
        )
        first = await p.complete(call(retries=0))
        await asyncio.sleep(4.7)
        second = await p.complete(call(retries=0))
        await p.aclose()
    assert first.body["choices"][0]["message"]["content"] == "ok"
    assert second.body["choices"][0]["message"]["content"] == "ok"
    assert upstream.resets == 0 and upstream.connections >= 2

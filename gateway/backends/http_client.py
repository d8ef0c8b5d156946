"""The one HTTP client every upstream call shares, and the direct lane its hot call takes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

# An idle connection is dropped after this long, before the upstream's own keep-alive runs
# out: vLLM (uvicorn) closes idle connections after 5 s. At an equal 5 s, a request sent on a
# connection the server is closing that moment is reset and answered 503; on a loaded box
# that moment lasts long enough to hit (16 resets in 200 reuses against a GIL-starved
# uvicorn, none at 4 s).
KEEPALIVE_S = 4.0


def new_upstream_client() -> httpx.AsyncClient:
    """Pooled keep-alive connections under httpx's interface.

    The transport is aiohttp's connection pool: httpcore's checks every idle connection with a
    syscall on each request, which cost 4x the throughput and 15x the p99 at 64 concurrent
    (bench/gateway_overhead.py).
    """
    limits = httpx.Limits(
        max_connections=2000, max_keepalive_connections=512, keepalive_expiry=KEEPALIVE_S
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits), timeout=httpx.Timeout(120.0, connect=5.0)
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole upstream answer: its status and its body, decoded."""

    status_code: int
    content: bytes


class JsonPost:
    """POSTs of a JSON body to one URL through `client`, read whole: a completion call.

    When the client would hand the request to its aiohttp transport anyway (the gateway's own
    client, no proxy for this URL, no auth, hooks or cookies of its own), the request goes to
    that transport's aiohttp session directly, with what httpx would have sent: the same
    headers, timeouts and options, aiohttp's errors mapped to the same httpx errors, httpx's
    log line. That skips httpx's URL parsing, request and response models and cookie
    extraction, about a third of a proxied request's CPU (docs/bench.md). Any other client
    (a proxy from the environment, a test's transport) goes through `client.post` as before.
    """

    __slots__ = ("_client", "_headers", "_log", "_timeouts", "_transport", "_url", "_yarl")
    _json = {"content-type": "application/json"}  # noqa: RUF012 - read only

    def __init__(self, client: httpx.AsyncClient, url: str):
        self._client = client
        self._url = url
        self._yarl = yarl.URL(url)  # what aiohttp would parse the string into, once
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}  # by connect timeout
        self._log = logging.getLogger("httpx")  # httpx's own request log, as it would write
        transport = client._transport_for_url(httpx.URL(url))
        plain = client.auth is None and not any(client.event_hooks.values())
        self._transport = transport if isinstance(transport, AiohttpTransport) and plain else None
        # httpx's headers for this request but the length, in its order and spelling.
        built = client.build_request("POST", url, content=b"", headers=self._json)
        self._headers = [(k, v) for k, v in built.headers.multi_items() if k != "content-length"]

    async def __call__(
        self, payload: bytes, connect_timeout_s: float, extra: dict[str, str] | None = None
    ) -> Answer:
        """`extra`: headers of this call (the trace context), sent after the usual ones."""
        # Reads are bounded by the caller (EndpointHealth.watched), connects here.
        transport, client = self._transport, self._client
        if transport is None or client.is_closed or client.cookies:
            resp = await client.post(
                self._url,
                content=payload,
                headers={**self._json, **extra} if extra else self._json,
                timeout=httpx.Timeout(None, connect=connect_timeout_s),
            )
            return Answer(resp.status_code, resp.content)
        return await self._direct(transport, payload, connect_timeout_s, extra)

    async def _direct(
        self,
        transport: AiohttpTransport,
        payload: bytes,
        connect_timeout_s: float,
        extra: dict[str, str] | None,
    ) -> Answer:
        if not isinstance(transport.client, aiohttp.ClientSession):
            transport.client = transport.get_client()  # as the transport does on first use
        session = transport.client
        headers = [*self._headers, ("content-length", str(len(payload)))]
        if extra:
            headers.extend(extra.items())
        # What AiohttpTransport.handle_async_request passes for this request.
        timeout = self._timeouts.get(connect_timeout_s)
        if timeout is None:
            timeout = self._timeouts[connect_timeout_s] = aiohttp.ClientTimeout(
                sock_connect=connect_timeout_s, sock_read=None, connect=None
            )
        try:
            async with session.request(
                "POST",
                self._yarl,
                headers=headers,
                data=payload or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=timeout,
                server_hostname=None,
                proxy=None,
                proxy_auth=None,
                proxy_headers=None,
            ) as resp:
                raw = await resp.read()
                status, reason, raw_headers = resp.status, resp.reason, resp.raw_headers
        except Exception:
            # httpx's error for aiohttp's, by the transport's own mapping (entered on the way
            # out, rather than around every call: a generator per request).
            with map_aiohttp_exceptions():
                raise
        log = self._log
        if log.isEnabledFor(logging.INFO):
            log.info(
                'HTTP Request: %s %s "%s %d %s"', "POST", self._url, "HTTP/1.1", status, reason
            )
        names = {name.lower() for name, _ in raw_headers}
        if b"set-cookie" in names or b"content-encoding" in names:
            # Rare from an upstream, and httpx's to handle as before: its cookie jar keeps the
            # cookie (the client sends it from then on, so its calls go through httpx), its
            # decoders decode the body.
            request = httpx.Request("POST", self._url)
            answer = httpx.Response(
                status, headers=raw_headers, stream=httpx.ByteStream(raw), request=request
            )
            self._client.cookies.extract_cookies(answer)
            return Answer(status, await answer.aread())
        return Answer(status, raw)

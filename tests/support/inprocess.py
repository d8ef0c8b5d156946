"""The whole gateway app in-process: `create_app` with fake backends, its lifespan run, and an
httpx client (or the openai SDK) on `httpx.ASGITransport`. No socket, no process."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
from fastapi import FastAPI

from gateway.accounting.request_log import read_records
from gateway.app import Settings, create_app
from gateway.reloader import PolicyHolder
from gateway.runtime import BackendFactory
from gateway.tracing import Tracing
from tests.support.fake_backend import FakeBackends

BASE_URL = "http://gateway.test"


@dataclass(slots=True)
class InProcessGateway:
    app: FastAPI
    client: httpx.AsyncClient
    fakes: FakeBackends
    settings: Settings

    @property
    def holder(self) -> PolicyHolder:
        return self.app.state.holder

    async def chat(
        self, model: str, content: str = "hello", key: str | None = None, **fields: Any
    ) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], **fields}
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def record(self, request_id: str) -> dict[str, Any]:
        """The request log row of a request (the log's writer thread is flushed first)."""
        request_log = self.app.state.services.request_log
        await asyncio.to_thread(request_log.flush)
        for row in read_records(self.settings.log_path):
            if row["request_id"] == request_id:
                return row
        raise AssertionError(f"no request log row for {request_id}")

    def openai(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        """The official SDK, talking to the in-process app."""
        return openai.AsyncOpenAI(
            base_url=BASE_URL + "/v1",
            api_key=api_key,
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app)),
        )

    def anthropic(self, api_key: str = "unused") -> anthropic.AsyncAnthropic:
        """The official Anthropic SDK, talking to the in-process app (it is built on httpx2)."""
        return anthropic.AsyncAnthropic(
            base_url=BASE_URL,
            api_key=api_key,
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app)),
        )


@asynccontextmanager
async def in_process_gateway(
    policy: str,
    workdir: Path,
    fakes: FakeBackends | None = None,
    watch: bool = False,
    tracing: Tracing | None = None,
    backend_factory: BackendFactory | None = None,
) -> AsyncIterator[InProcessGateway]:
    """The app serving `policy` (YAML text, written to workdir/policy.yaml), started.
    `tracing`: spans through a provider of the test's (tracing is off otherwise).
    `backend_factory`: real backends instead of `fakes` (e.g. a VllmPool on a fake upstream)."""
    path = workdir / "policy.yaml"
    path.write_text(policy)
    fakes = fakes if fakes is not None else FakeBackends()
    settings = Settings(
        policy_path=path,
        log_path=workdir / "requests.sqlite",
        state_path=workdir / "state.sqlite",
        watch_policy=watch,
        backend_factory=backend_factory or fakes,
        tracing=tracing if tracing is not None else Tracing(),
    )
    app = create_app(settings)
    async with AsyncExitStack() as stack:
        with _startup_without_gc():
            await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url=BASE_URL)
        )
        yield InProcessGateway(app, client, fakes, settings)


@contextmanager
def _startup_without_gc() -> Iterator[None]:
    """The lifespan's full collection and heap freeze keep a server's p99 flat; in a test session
    the collection costs 0.2-0.5 s a start and the freeze would keep every test's garbage."""
    collect, freeze = gc.collect, gc.freeze
    gc.collect, gc.freeze = (lambda generation=2: 0), (lambda: None)  # type: ignore[assignment]
    try:
        yield
    finally:
        gc.collect, gc.freeze = collect, freeze

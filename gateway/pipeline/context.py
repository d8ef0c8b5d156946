"""One request's state as it passes the phases: what each phase found, for the next."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.accounting.charge import Accounting
from gateway.accounting.request_log import RequestLog, RequestNotes, RequestRecord
from gateway.admission.access import Access
from gateway.admission.price_multiplier import Pacers
from gateway.backends.base import Kind
from gateway.cache.response_cache import CachedAnswer, ResponseCache
from gateway.dialects import Dialect
from gateway.drain import Drain
from gateway.feedback.service import FeedbackService
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.state import VirtualKey
from gateway.tracing import RequestSpan, Tracing
from policies.schema import RouteConfig

log = logging.getLogger("routegate.pipeline")


class RequestIds:
    """Request ids: "rg-" and 12 bytes of the OS's CSPRNG in hex (what secrets.token_hex(12)
    gives), the bytes read 4 KiB at a time: one getrandom() per 341 requests instead of one
    each, a syscall that cost about 4 % of a proxied request. Used on one event loop (the
    app's, made after any fork of workers), so no two processes share a pool."""

    __slots__ = ("_at", "_pool")
    _SIZE = 12
    _READ = 4092  # 341 ids

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at + self._SIZE > len(self._pool):
            self._pool, at = os.urandom(self._READ), 0
        self._at = at + self._SIZE
        return "rg-" + self._pool[at : at + self._SIZE].hex()


@dataclass(slots=True)
class Services:
    """What the pipeline needs besides the policy: access checks, records and metrics."""

    request_log: RequestLog
    metrics: Metrics
    access: Access
    pacers: Pacers
    feedback: FeedbackService  # explicit and implicit feedback, and learning from it
    ids: RequestIds = field(default_factory=RequestIds)
    drain: Drain = field(default_factory=Drain)  # the process's shutdown, which streams heed
    tracing: Tracing = field(default_factory=Tracing)  # off unless OTEL_* configure it


@dataclass(slots=True)
class CacheUse:
    """A cacheable request on a route with a response cache: its key, and the hit if any."""

    cache: ResponseCache
    key: str
    hit: CachedAnswer | None = None

    async def store(self, body: dict[str, Any], model: str, cost: float) -> None:
        # A cache that cannot store must not fail an answer that was already paid for.
        try:
            await self.cache.put(self.key, body, model, cost, time.time())
        except Exception:
            log.exception("storing an answer in the %s cache failed", self.cache.route)


@dataclass(slots=True)
class RequestContext:
    """One request, from arrival to its request log row. `record` is the row and `notes`
    what headers and metrics read back; `account` writes both, once; the rest is filled in
    by the phases, in order."""

    kind: Kind
    runtime: Runtime  # the policy in force when the request arrived, for all of it
    services: Services
    record: RequestRecord
    notes: RequestNotes
    account: Accounting
    t0: float  # time.perf_counter() at arrival: latency and time to first token
    dialect: Dialect | None = None  # the client's API, translated to and from chat (None: OpenAI)
    key: VirtualKey | None = None  # admit: the caller's key (None: anonymous)
    body: dict[str, Any] = field(default_factory=dict)  # admit: the parsed request
    config: RouteConfig | None = None  # admit: the route's policy (None: a model by name)
    cache: CacheUse | None = None  # cache: the route's cache entry for this request
    trace: RequestSpan | None = None  # its SERVER span, when tracing (pipeline/spans.py)


def start(
    kind: Kind, runtime: Runtime, services: Services, dialect: Dialect | None = None
) -> RequestContext:
    """A request that has just arrived: its id, its clock and its (not yet written) row.
    `dialect`: the API the client speaks, where it is not OpenAI's (whose `kind` names it)."""
    t0 = time.perf_counter()
    api = dialect.api if dialect is not None else kind
    record = RequestRecord(services.ids.next(), time.time(), kind, stream=False, api=api)
    notes = RequestNotes()
    account = Accounting(services.request_log, services.metrics, runtime.prices, record, notes, t0)
    return RequestContext(kind, runtime, services, record, notes, account, t0, dialect)

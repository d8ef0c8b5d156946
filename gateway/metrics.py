"""Prometheus metrics, one registry per app so tests and reloads do not collide.

With several workers (`routegate serve --workers N`) prometheus_client runs in its
multiprocess mode: PROMETHEUS_MULTIPROC_DIR is set before the workers start, every value is
kept in a file per worker there, and `exposition()` sums the files, so /metrics from any worker
gives the totals of all. Counters and histograms add up; the one gauge says how to combine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

M = TypeVar("M", Counter, Histogram)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Children(Generic[M]):
    """A metric's child for each label set, looked up once. `labels()` takes a lock, checks and
    converts every value on each call; the child it gives for a label set is the same object
    for the life of the metric (nothing here removes children), so keeping it is the same."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M):
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class EngineFigures(Protocol):
    """What a vLLM endpoint reports of its load (gateway.backends.vllm_pool.EngineState)."""

    @property
    def running(self) -> float | None: ...
    @property
    def waiting(self) -> float | None: ...
    @property
    def kv_usage(self) -> float | None: ...
    @property
    def prefix_hit_rate(self) -> float | None: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("route", "model", "status")
        self.requests = Counter(
            "routegate_requests", "Requests answered", labels, registry=self.registry
        )
        self.errors = Counter(
            "routegate_errors", "Requests that ended in an error", labels, registry=self.registry
        )
        self.latency = Histogram(
            "routegate_request_latency_seconds",
            "Time from request to last byte",
            ("route", "model"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "routegate_time_to_first_token_seconds",
            "Time from request to the first streamed chunk",
            ("route", "model"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "routegate_tokens", "Tokens", ("route", "model", "kind"), registry=self.registry
        )
        self.cost = Counter(
            "routegate_cost_usd", "Spend in USD", ("route", "model"), registry=self.registry
        )
        # By the API the client called (chat, completions, messages, responses, embeddings).
        self.api_requests = Counter(
            "routegate_api_requests",
            "Requests by API",
            ("api", "status"),
            registry=self.registry,
        )
        self.api_cost = Counter(
            "routegate_api_cost_usd", "Spend in USD by API", ("api",), registry=self.registry
        )
        self.fallbacks = Counter(
            "routegate_fallbacks",
            "Models given up on for another",
            ("route", "model"),
            registry=self.registry,
        )
        self.cache = Counter(
            "routegate_cache_lookups",
            "Response cache lookups of cacheable requests, by result (hit, miss)",
            ("route", "result"),
            registry=self.registry,
        )
        self.cache_saved = Counter(
            "routegate_cache_saved_usd",
            "What cache hits would have cost (the answer's original price)",
            ("route",),
            registry=self.registry,
        )
        self.escalations = Counter(
            "routegate_cascade_escalations",
            "Times a cascade asked a stronger model (confidence below the threshold)",
            ("route",),
            registry=self.registry,
        )
        self.switches = Counter(
            "routegate_ead_switches",
            "EAD hand-overs to the large model",
            ("route",),
            registry=self.registry,
        )
        self.anomalies = Counter(
            "routegate_upstream_anomalies",
            "Upstream reports no call can produce (negative, non-number or unbounded usage, "
            "no usage, no choices, a cost above the reservation), by kind; clamped, not trusted",
            ("route", "model", "kind"),
            registry=self.registry,
        )
        self.backend_healthy = Gauge(
            "routegate_backend_healthy",
            "1 if the model has a usable endpoint",
            ("model",),
            registry=self.registry,
            # Set by the worker a scrape reaches, from its own health checks: across workers,
            # the latest value of the live ones.
            multiprocess_mode="livemostrecent",
        )
        self.policy_reloads = Counter(
            "routegate_policy_reloads",
            "Policy reload attempts",
            ("result",),
            registry=self.registry,
        )
        # Which process answered: per worker pid, so N workers' shares can be seen (the other
        # metrics are summed across workers). One label value per worker process.
        self.worker_requests = Counter(
            "routegate_worker_requests",
            "Requests answered, by the worker process (pid) that answered them",
            ("pid",),
            registry=self.registry,
        ).labels(str(os.getpid()))
        # The Postgres request log's spool (gateway/accounting/log_store/postgres.py): rows
        # written to it while Postgres was away, rows replayed from it, rows in it now.
        self.log_spooled_rows = Counter(
            "routegate_request_log_spooled_rows",
            "Request-log rows written to the local spool because Postgres was unreachable",
            registry=self.registry,
        )
        self.log_replayed_rows = Counter(
            "routegate_request_log_replayed_rows",
            "Spooled request-log rows replayed into Postgres",
            registry=self.registry,
        )
        self.log_spool_depth_rows = Gauge(
            "routegate_request_log_spool_depth",
            "Request-log rows waiting in the local spool for Postgres",
            registry=self.registry,
            multiprocess_mode="livesum",  # --workers N: the rows waiting in every worker's spool
        )
        # Each vLLM endpoint's own load, as its /metrics last said, set by the worker a scrape
        # reaches (every worker reads the same servers: the latest value of the live ones).
        endpoint = ("model", "endpoint")
        self.endpoint_running = Gauge(
            "routegate_endpoint_requests_running",
            "Requests in the endpoint's running batch (all its clients), from its /metrics",
            endpoint,
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.endpoint_waiting = Gauge(
            "routegate_endpoint_requests_waiting",
            "Requests queued at the endpoint (all its clients), from its /metrics",
            endpoint,
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.endpoint_kv_usage = Gauge(
            "routegate_endpoint_kv_cache_usage",
            "The endpoint's KV-cache usage, 0..1, from its /metrics",
            endpoint,
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.endpoint_prefix_hit_rate = Gauge(
            "routegate_endpoint_prefix_cache_hit_rate",
            "Prompt tokens served from the endpoint's prefix cache / tokens looked up, since "
            "the server started, from its /metrics",
            endpoint,
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self._endpoint_series: set[tuple[Gauge, str, str]] = set()  # what set_endpoints set
        # What every request counts, by label set (gateway/accounting/charge.py).
        self.requests_of = Children(self.requests)
        self.errors_of = Children(self.errors)
        self.latency_of = Children(self.latency)
        self.ttft_of = Children(self.ttft)
        self.tokens_of = Children(self.tokens)
        self.cost_of = Children(self.cost)
        self.api_requests_of = Children(self.api_requests)
        self.api_cost_of = Children(self.api_cost)
        self.fallbacks_of = Children(self.fallbacks)
        self.cache_of = Children(self.cache)

    # The request log's counters (gateway.accounting.log_store.postgres.LogCounters); called
    # from its writer thread (prometheus_client's metrics take a lock).
    def log_spooled(self, rows: int) -> None:
        self.log_spooled_rows.inc(rows)

    def log_replayed(self, rows: int) -> None:
        self.log_replayed_rows.inc(rows)

    def log_spool_depth(self, rows: int) -> None:
        self.log_spool_depth_rows.set(rows)

    def set_endpoints(self, rows: Iterable[tuple[str, str, EngineFigures]]) -> None:
        """The endpoint gauges, (model, endpoint URL, figures) each, replaced whole: an
        endpoint a reload removed, or one whose figures are unknown now, shows no stale value.
        Removed in one process; with --workers, where a value stays in the worker's file once
        written, set to NaN (no value) instead."""
        gauges = (
            (self.endpoint_running, "running"),
            (self.endpoint_waiting, "waiting"),
            (self.endpoint_kv_usage, "kv_usage"),
            (self.endpoint_prefix_hit_rate, "prefix_hit_rate"),
        )
        multiprocess = bool(os.environ.get(MULTIPROC_DIR_ENV))
        shown: set[tuple[Gauge, str, str]] = set()
        for model, endpoint, figures in rows:
            for gauge, field in gauges:
                value = getattr(figures, field)
                if value is not None:
                    gauge.labels(model, endpoint).set(value)
                    shown.add((gauge, model, endpoint))
        for gone in self._endpoint_series - shown:
            gauge, model, endpoint = gone
            if multiprocess:
                gauge.labels(model, endpoint).set(math.nan)
            else:
                gauge.remove(model, endpoint)
        self._endpoint_series = shown


def exposition(metrics: Metrics) -> tuple[bytes, str]:
    """The /metrics body and its content type: this process's registry, or in multiprocess
    mode every worker's values summed (a fresh registry per scrape, as the mode requires)."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST

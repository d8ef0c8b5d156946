"""`routegate serve`: load a policy and run the gateway under uvicorn."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from policies.loader import PolicyError, example_policy_path, load_policy

err = Console(stderr=True, highlight=False)


def serve(
    policy: Annotated[
        Path | None, typer.Option(help="Policy YAML; the bundled example policy if omitted.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    log: Annotated[
        str,
        typer.Option(
            "--log", help="Request log: a SQLite file, or postgresql://user@host:port/db (shared)."
        ),
    ] = "routegate-requests.sqlite",
    log_spool: Annotated[
        Path | None,
        typer.Option(
            help="Postgres log: where rows wait while Postgres is unreachable (replayed in "
            "order when it returns). Default: routegate-log-spool-REPLICA.jsonl beside "
            "--state-file."
        ),
    ] = None,
    log_durable: Annotated[
        bool,
        typer.Option(
            envvar="ROUTEGATE_LOG_DURABLE",
            help="Answer only once the request's row is committed (or spooled): a process "
            "killed right after answering loses no row. Adds one short batch wait (~5 ms).",
        ),
    ] = False,
    replica: Annotated[
        str | None,
        typer.Option(
            envvar="ROUTEGATE_REPLICA",
            help="This gateway's name among the replicas (the request log's replica column, the "
            "shared store's policy reports, /readyz); default host:port.",
        ),
    ] = None,
    state_file: Annotated[
        Path,
        typer.Option(
            help="Keys, spend, pacing and online learning of the in-process state store "
            "(state.url: memory)."
        ),
    ] = Path("routegate-state.sqlite"),
    policy_history: Annotated[
        Path | None,
        typer.Option(help="SQLite history of applied policy versions; default: beside --log."),
    ] = None,
    watch: Annotated[bool, typer.Option(help="Reload the policy when its file changes.")] = True,
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            help="Proxies (comma-separated IPs, or '*') whose X-Forwarded-For names the client. "
            "Default: none, so a client cannot pick the address its failed logins count to."
        ),
    ] = "",
    header_timeout: Annotated[
        float,
        typer.Option(
            envvar="ROUTEGATE_HEADER_TIMEOUT_S",
            help="Seconds a request line and headers may take to arrive (408 after).",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            envvar="ROUTEGATE_BODY_TIMEOUT_S",
            help="Seconds a request body may take to arrive, from its first read (408 after).",
        ),
    ] = 60.0,
    max_headers: Annotated[
        int, typer.Option(envvar="ROUTEGATE_MAX_HEADERS", help="Request headers allowed (431).")
    ] = 100,
    max_header_bytes: Annotated[
        int,
        typer.Option(
            envvar="ROUTEGATE_MAX_HEADER_BYTES",
            help="Bytes of request line and headers allowed (431).",
        ),
    ] = 32 * 1024,
    keep_alive_timeout: Annotated[
        int,
        typer.Option(
            envvar="ROUTEGATE_KEEP_ALIVE_TIMEOUT_S",
            help="Seconds an idle keep-alive connection stays open. Longer than clients' own "
            "expiry (the OpenAI and Anthropic SDKs drop idle connections after 5 s) and a load "
            "balancer's idle timeout (60 s on AWS), so the gateway is never the side that closes "
            "a connection a request is being sent on.",
        ),
    ] = 65,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="ROUTEGATE_WORKERS",
            help="Processes serving the one port; above 1 needs state.url: redis://...",
        ),
    ] = 1,
    drain_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="ROUTEGATE_DRAIN_TIMEOUT_S",
            help="On SIGTERM, seconds in-flight requests and streams may take once the "
            "listener is closed; then streams are cut (503 drained) and charged for what was sent.",
        ),
    ] = 30.0,
    drain_grace: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="ROUTEGATE_DRAIN_GRACE_S",
            help="On SIGTERM, seconds /readyz answers 503 while new requests are still "
            "accepted (a load balancer's time to stop sending), before the listener closes.",
        ),
    ] = 0.0,
) -> None:
    """Run the gateway: one process, or --workers N on one port."""
    from gateway.app import Settings
    from gateway.cli.workers import (
        ServeSpec,
        Supervisor,
        configure_logging,
        memory_store_refusal,
        run_single,
    )
    from gateway.drain import DrainConfig
    from gateway.http_server import ServerLimits
    from gateway.tracing import check_env as check_tracing_env

    path = policy or example_policy_path()
    try:
        loaded = load_policy(path)  # fail before binding the port, with the validator's messages
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    if refusal := memory_store_refusal(loaded, path, workers):
        typer.echo(refusal, err=True)
        raise typer.Exit(2)
    try:
        check_tracing_env()  # a bad OTEL_* exporter or protocol, named before binding too
    except ValueError as exc:
        typer.echo(f"routegate serve: {exc}", err=True)
        raise typer.Exit(1) from None
    configure_logging(log_level)
    from gateway.accounting.log_store import is_postgres_url, safe_location

    log_url = log if is_postgres_url(log) else None
    replica = replica or f"{socket.gethostname()}:{port}"
    spec = ServeSpec(
        settings=Settings(
            policy_path=path,
            log_path=Path(log) if log_url is None else Settings.log_path,
            log_url=log_url,
            log_spool_path=log_spool,
            log_durable=log_durable,
            replica=replica,
            state_path=state_file,
            watch_policy=watch,
            policy_history_path=policy_history,
            body_timeout_s=body_timeout,
        ),
        limits=ServerLimits(header_timeout, max_headers, max_header_bytes),
        drain=DrainConfig(grace_s=drain_grace, timeout_s=drain_timeout),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        keep_alive_timeout=keep_alive_timeout,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    shape = f"{workers} workers" if workers > 1 else "1 process"
    err.print(
        f"routegate: policy {path} -> http://{host}:{port}/v1  "
        f"(request log: {safe_location(log)}, replica {replica}; {shape})"
    )
    status = Supervisor(spec, workers).run() if workers > 1 else run_single(spec)
    if status:
        raise typer.Exit(status)

"""Where does a Routegate request's CPU go? The gateway runs in this process under cProfile
while `bench/load.py` drives it, and the profile is printed per phase and per function.

    python bench/profile_gateway.py                      # fixed route, concurrency 1 and 64
    python bench/profile_gateway.py --target budget -c 16 --top 40 --sort cumulative
    python bench/profile_gateway.py --save var/bench/profile    # also write .prof files

The setup is `bench/gateway_overhead.py`'s: the same do-nothing upstream and the same policy
(`--target fixed|learned|budget`), the gateway pinned to the first CPU with the upstream and
the load generator on the others. The gateway is built as `routegate serve` builds it (the
app from `create_app`, uvicorn on uvloop with the guarded httptools protocol, access log off)
but served from this process, so the profiler can be switched on in the event loop's thread
just for the load and off after it.

The profiler's clock is the thread's CPU time, so waiting for the network costs nothing and
the figures are CPU per request. Profiling roughly doubles the cost of every Python call, so
absolute figures are inflated: read the shares, and take unprofiled CPU per request from
`bench/gateway_overhead.py`. The request log's writer thread is not in the profile (it runs
beside the event loop, off the request's path); its share is the `other threads` line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop
from gateway_overhead import (
    BENCH,
    ROUTEGATE_TARGETS,
    Server,
    Target,
    cpu_layout,
    create_budget_key,
    free_port,
    routegate_policy,
    wait_ready,
)

# (label, depth, test on (file, function name)): the request's phases, each the cumulative
# CPU of the functions that run it. Depth 0 phases add up to the loop thread's CPU; deeper
# ones are parts of the phase above them (coroutine frames count while they run, not while
# they wait, so awaits do not double count).
Match = Callable[[str, str], bool]


def _fn(path_part: str, *names: str) -> Match:
    return lambda file, name: path_part in file and name in names


@dataclass(frozen=True, slots=True)
class Phase:
    label: str
    depth: int
    match: Match


PHASES = (
    Phase("HTTP server in (httptools parse, uvicorn protocol callbacks)", 0,
          _fn("gateway/http_server", "data_received", "connection_made", "connection_lost")),
    Phase("ASGI app (uvicorn cycle, FastAPI/Starlette, middleware, router)", 0,
          _fn("uvicorn/protocols/http/httptools_impl", "run_asgi")),
    Phase("uvicorn ASGI send (response head, body write)", 1,
          _fn("uvicorn/protocols/http/httptools_impl", "send")),
    Phase("pipeline.handle", 1, _fn("gateway/pipeline/handler", "handle")),
    Phase("admit.identify (key lookup, body read, parse + validate)", 2,
          _fn("gateway/pipeline/admit", "identify")),
    Phase("Access.authenticate", 3, _fn("gateway/admission/access", "authenticate")),
    Phase("Request.body (ASGI receive, body limits)", 3, _fn("starlette/requests", "body")),
    Phase("parse_request (orjson + pydantic)", 3, _fn("gateway/request_schema", "parse_request")),
    Phase("cache.lookup", 2, _fn("gateway/pipeline/cache", "lookup")),
    Phase("route (pacing multiplier, router, upstream calls planned)", 2,
          _fn("gateway/pipeline/route", "route")),
    Phase("admit.reserve (rate limits, budgets)", 2, _fn("gateway/pipeline/admit", "reserve")),
    Phase("run (fallback chain, backend call)", 2, _fn("gateway/pipeline/run", "run")),
    Phase("VllmPool.complete", 3,
          _fn("gateway/backends/vllm_pool/pool", "complete")),
    Phase("JsonPost (the upstream exchange, on aiohttp)", 4,
          _fn("gateway/backends/http_client", "__call__")),
    Phase("respond.answered (JSON, headers)", 3, _fn("gateway/pipeline/respond", "answered")),
    Phase("Accounting.finish (cost, settle, log row, metrics)", 4,
          _fn("gateway/accounting/charge", "finish")),
    Phase("Starlette Response.__call__ (send start + body)", 1,
          _fn("starlette/responses", "__call__")),
    Phase("upstream exchange as a task of its own (httpx; only the code before)", 0,
          _fn("httpx/_client", "post")),
    Phase("upstream client callbacks (aiohttp protocol, request body writer)", 0,
          lambda file, name: ("aiohttp/client_proto" in file and name == "data_received")
          or ("aiohttp/client_reqrep" in file and name == "write_bytes")),
)  # fmt: skip


def phase_table(
    stats: pstats.Stats, requests: int, thread_cpu_s: float
) -> list[tuple[str, int, float, float]]:
    """(label, depth, CPU µs per request, share of the profiled thread's CPU). Phases at depth
    0 are roots: what the loop calls; the rest of the roots (timers, health checks, the
    policy watcher, this script) is one more line, and the loop thread's CPU outside every
    Python function (uvloop's C code between callbacks, and the profiler's own) another."""
    table = stats.stats  # type: ignore[attr-defined]  # (file, line, name) -> (cc, nc, tt, ct, callers)
    total = sum(tt for _cc, _nc, tt, _ct, _callers in table.values())
    whole = max(thread_cpu_s, total)
    out = []
    for phase in PHASES:
        cpu = sum(ct for (f, _l, n), (_cc, _nc, _tt, ct, _c) in table.items() if phase.match(f, n))
        out.append((phase.label, phase.depth, cpu, cpu / whole))
    # Never below 0: a callback the loop also runs inline (aiohttp's body writer) is counted
    # twice above.
    rest = max(0.0, total - sum(cpu for _label, depth, cpu, _share in out if depth == 0))
    out.append(("other Python (timers, health checks, policy watcher, ...)", 0, rest, rest / whole))
    outside = whole - total
    out.append(("outside Python (uvloop C code between callbacks, the profiler)", 0, outside,
                outside / whole))  # fmt: skip
    return [(label, depth, cpu / requests * 1e6, share) for label, depth, cpu, share in out]


def _short(text: str) -> str:
    # pstats prints absolute paths; the site-packages and repository prefixes say nothing.
    for prefix in sorted({p for p in sys.path if p}, key=len, reverse=True):
        text = text.replace(prefix.rstrip("/") + "/", "")
    return text


def roots(stats: pstats.Stats, requests: int, top: int) -> str:
    """Functions nothing profiled called: the loop's callbacks and each task's coroutine."""
    table = stats.stats  # type: ignore[attr-defined]
    found = sorted(((v[3], k) for k, v in table.items() if not v[4]), reverse=True)[:top]
    return "\n".join(
        _short(f"{ct / requests * 1e6:8.0f} µs/req  {file}:{line}({name})")
        for ct, (file, line, name) in found
    )


def top_functions(stats: pstats.Stats, sort: str, top: int) -> str:
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats(top)
    text = _short(buf.getvalue())
    return text[text.find("   ncalls") :] if "   ncalls" in text else text


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


async def _load(
    target: Target, concurrency: int, args: argparse.Namespace, cpus: set[int] | None
) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "load.py"), target.base_url, "--json",
        "-c", str(concurrency), "-d", str(args.duration), "-w", str(args.warmup),
        "--model", target.model, "--api-key", target.api_key,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_pin(cpus),
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load.py failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds so far of every thread of this process, by thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError):
            continue
    return out


async def profile(args: argparse.Namespace, tmp: Path) -> int:
    import uvicorn

    from gateway.app import Settings, create_app
    from gateway.http_server import ServerLimits, guarded_protocol

    server_cpus, other_cpus = cpu_layout(args.pin)
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)  # this thread, and every thread started later
    up_port, port = free_port(), free_port()
    upstream = Server(
        "upstream",
        [sys.executable, str(BENCH / "fast_upstream.py"), "--port", str(up_port)],
        other_cpus,
        tmp / "upstream.log",
    )
    policy = tmp / "policy.yaml"
    policy.write_text(routegate_policy(args.target, up_port))
    if args.target == "budget":
        os.environ["ROUTEGATE_MASTER_KEY"] = "sk-bench-0123456789abcdef0123456789abcdef"
    else:
        os.environ.pop("ROUTEGATE_MASTER_KEY", None)
    app = create_app(
        Settings(
            policy_path=policy,
            log_path=tmp / "requests.sqlite",
            state_path=tmp / "state.sqlite",
        )
    )
    # What `routegate serve` gives uvicorn (gateway/cli/serve.py), the loop aside: it is ours.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=guarded_protocol(ServerLimits()),
        access_log=False,
        proxy_headers=False,  # as serve without --forwarded-allow-ips
        log_level="warning",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    base = f"http://127.0.0.1:{port}"
    target = Target(ROUTEGATE_TARGETS[args.target], f"{base}/v1", f"{base}/readyz", "auto")
    upstream.start()
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.to_thread(
            wait_ready, upstream, f"http://127.0.0.1:{up_port}/health",
            f"http://127.0.0.1:{up_port}/v1/chat/completions", "fast", 10,
        )  # fmt: skip
        await asyncio.to_thread(
            wait_ready, None, target.ready_url, f"{target.base_url}/chat/completions",
            "auto", args.ready_timeout,
        )  # fmt: skip
        if args.target == "budget":
            await asyncio.to_thread(create_budget_key, target)
        loop_tid = threading.get_native_id()
        for c in args.concurrency:
            prof = cProfile.Profile(time.thread_time)
            cpu0, wall0 = _thread_cpu_s(), time.monotonic()
            prof.enable()  # this thread is the event loop's: only it is profiled
            result = await _load(target, c, args, other_cpus)
            prof.disable()
            cpu1, wall1 = _thread_cpu_s(), time.monotonic()
            done = int(result["completed_total"])  # type: ignore[call-overload]
            loop_cpu = cpu1.get(loop_tid, 0) - cpu0.get(loop_tid, 0)
            others = sum(v - cpu0.get(t, 0) for t, v in cpu1.items() if t != loop_tid)
            stats = pstats.Stats(prof)
            print(
                f"\n=== {target.name}, concurrency {c}: {done} requests in {wall1 - wall0:.1f} s "
                f"under the profiler ({result['errors']} errors) ===\n"
                f"event loop thread {loop_cpu / done * 1e6:.0f} µs CPU/request, "
                f"other threads {others / done * 1e6:.0f} µs (profiled: inflated, see --help)\n"
            )
            print(f"{'phase':<84} {'µs/req':>7} {'share':>6}")
            for label, depth, us, share in phase_table(stats, done, loop_cpu):
                print(f"{'  ' * depth + label:<84} {us:7.0f} {share:6.1%}")
            print("\nroots (what the event loop calls), by CPU:")
            print(roots(stats, done, 12))
            print(f"\ntop {args.top} functions by {args.sort}:")
            print(top_functions(stats, args.sort, args.top))
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                path = args.save / f"{target.name}-c{c}.prof"
                stats.dump_stats(path)
                print(f"saved {path} (snakeviz, or python -m pstats)")
    finally:
        server.should_exit = True
        await serving
        upstream.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", choices=sorted(ROUTEGATE_TARGETS), default="fixed")
    ap.add_argument("--concurrency", "-c", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--duration", "-d", type=float, default=5.0, help="seconds measured per level")
    ap.add_argument("--warmup", "-w", type=float, default=1.0, help="seconds run first")
    ap.add_argument(
        "--sort", default="tottime", choices=("tottime", "cumulative", "ncalls"), help="top list"
    )
    ap.add_argument("--top", type=int, default=30, help="functions listed")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU pinning")
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--save", type=Path, default=None, metavar="DIR", help="write .prof files")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routegate-profile-") as tmp:
        return uvloop.run(profile(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())

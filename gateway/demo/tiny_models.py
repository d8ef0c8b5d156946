"""Two tiny, randomly initialised Llama models that real vLLM servers can load on a laptop CPU.

They exist so that the gateway can be demonstrated and integration-tested against genuine vLLM
OpenAI servers (real streaming, real usage, real logprobs) with no network and no weights from
a hub. Their output is gibberish by design; what matters is that everything around it is real.

Both models share one byte-level BPE tokenizer, trained here on Python's own stdlib source text
(always on disk, deterministic for a given Python build), with a small chat template so that
`/v1/chat/completions` works.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Written last into a model folder: its presence means the folder is complete.
MARKER = ".routegate-tiny-model.json"
# Bump when the way models are built changes, so that cached folders are rebuilt.
BUILD_VERSION = 4

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK, *ROLE_TOKENS]
VOCAB_SIZE = 3072

# Every turn is "<|role|>\n{content}<|end|>\n"; a generation prompt opens an assistant turn.
# Content may arrive as a list of OpenAI content parts; only the text parts are kept.
# Tools follow the "pythonic" convention, so vLLM's `pythonic` tool-call parser reads the calls
# (gateway/demo/vllm_servers.py starts the servers with it): the tools are listed as JSON in a
# first system turn, the calls of an assistant turn are a Python list `[name(arg=value, ...)]`,
# and a tool's result comes back in a user turn as <tool_response>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|system|>\\nYou may call these functions:' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\\nTo call them, answer a Python list of calls: [name(arg=value, ...)]<|end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}{{ '<|user|>\\n<tool_response>\\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\\n' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['tool_calls'] %}{{ '[' }}"
    "{% for call in message['tool_calls'] %}"
    "{% set function = call['function'] if call['function'] is defined else call %}"
    "{% if not loop.first %}{{ ', ' }}{% endif %}{{ function['name'] + '(' }}"
    "{% if function['arguments'] is mapping %}"
    "{% for name, value in function['arguments'].items() %}"
    "{% if not loop.first %}{{ ', ' }}{% endif %}{{ name + '=' + (value | tojson) }}"
    "{% endfor %}"
    "{% else %}{{ '**' + function['arguments'] }}{% endif %}"
    "{{ ')' }}"
    "{% endfor %}{{ ']' }}{% endif %}"
    "{% if message['role'] == 'tool' %}{{ '\\n</tool_response>' }}{% endif %}"
    "{{ '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Stdlib modules whose source trains the tokenizer: pure Python, present in every CPython.
CORPUS_MODULES = [
    "argparse", "asyncio.base_events", "collections", "dataclasses", "email.message",
    "functools", "http.client", "inspect", "json.decoder", "logging", "pathlib", "pydoc",
    "statistics", "string", "textwrap", "typing", "unittest.case", "urllib.parse",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class TinySpec:
    name: str
    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    seed: int
    # Std of the output logits: >0 gives the distributions some shape (a bigger model is
    # "more confident"), which makes logprob-based routing demos less flat.
    logit_std: float


# Head size is hidden_size / num_heads = 64 for both: vLLM's CPU attention rejects 16.
SPECS = [
    TinySpec("tiny-small", 128, 2, 2, 256, seed=1234, logit_std=1.5),
    TinySpec("tiny-large", 256, 4, 4, 512, seed=5678, logit_std=2.5),
]
MAX_POSITIONS = 1024


def _corpus() -> list[str]:
    texts: list[str] = []
    for mod_name in CORPUS_MODULES:
        try:
            texts.append(inspect.getsource(importlib.import_module(mod_name)))
        except (ImportError, OSError, TypeError):  # a stripped-down Python: use what is there
            continue
    if not texts:
        raise RuntimeError("no stdlib source text found to train the demo tokenizer on")
    return texts


def build_tokenizer(out_dir: Path) -> None:
    """Train the shared byte-level BPE tokenizer and save it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,  # ids 0..7, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte can be encoded
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Plain prompts (/v1/completions) get a BOS like Llama's; the chat template adds its own.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


def _quiet_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Special tokens, and byte tokens that decode to control characters or broken UTF-8."""
    quiet = {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if "\ufffd" in text or any(ord(c) < 32 and c not in "\n\t" for c in text):
            quiet.add(token_id)
    return sorted(quiet)


def _build_model(spec: TinySpec, tokenizer_dir: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise in CLI/test output

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    quiet_ids = _quiet_token_ids(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,  # lm_head is reshaped below without touching embeddings
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # The final RMSNorm leaves hidden components ~N(0, 1), so this std gives logits of
        # std ~logit_std. "Quiet" tokens get a zero row, hence logit 0, which sits far below
        # the best of ~3k normal logits and, sampled, is e^(-std^2/2) times rarer than an
        # average token: greedy decoding never emits EOS (replies run to max_tokens) nor
        # control bytes / broken UTF-8, and sampling seldom does.
        lm_head = model.lm_head.weight
        lm_head.normal_(0.0, spec.logit_std / spec.hidden_size**0.5)
        lm_head[quiet_ids] = 0.0
    # float32, not bf16: vLLM CPU runs bf16 attention on AMX tiles, and in a VM that has not
    # granted the process AMX state (and with no warm-up run to get it) the first short
    # request dies with SIGILL. fp32 uses plain AVX-512; the files stay tiny either way.
    model.config.dtype = torch.float32
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors comes out 0600; let other users' servers read it


def _fingerprint(spec: TinySpec) -> dict[str, object]:
    digest = hashlib.sha256(
        json.dumps([BUILD_VERSION, CHAT_TEMPLATE, VOCAB_SIZE, CORPUS_MODULES]).encode()
    ).hexdigest()[:16]
    return {"build_version": BUILD_VERSION, "spec": asdict(spec), "recipe": digest}


def is_complete(folder: Path, spec: TinySpec) -> bool:
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()) == _fingerprint(spec)
    except (OSError, ValueError):
        return False


def build_tiny_models(out_dir: Path, force: bool = False) -> dict[str, Path]:
    """Write `tiny-small` and `tiny-large` under out_dir, skipping complete ones.

    Returns model name -> folder. force rebuilds even complete folders.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = {spec.name: out_dir / spec.name for spec in SPECS}
    todo = [s for s in SPECS if force or not is_complete(folders[s.name], s)]
    if not todo:
        return folders

    # Tokenizer training is the slow part (a few seconds); do it once for both models.
    tokenizer_dir = out_dir / ".tokenizer.tmp"
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    build_tokenizer(tokenizer_dir)
    try:
        for spec in todo:
            folder = folders[spec.name]
            # Build beside the target then swap in, so a crash never leaves a half folder
            # that a running vLLM (or a concurrent test session) might pick up.
            tmp = out_dir / f".{spec.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _build_model(spec, tokenizer_dir, tmp)
            (tmp / MARKER).write_text(json.dumps(_fingerprint(spec)))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    finally:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny demo models for vLLM.")
    parser.add_argument("--out", type=Path, default=Path("var/models"), help="target folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    for name, folder in build_tiny_models(args.out, force=args.force).items():
        print(f"{name}\t{folder}")


if __name__ == "__main__":
    main()

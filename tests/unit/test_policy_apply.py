"""Applying a policy edit (gateway/dashboard/policy_edit.py) against a stand-in reloader: the
file is put back whatever the reload raises, and CRLF text is recorded as the reloader reads it.
The policy page in Chromium against a real gateway: tests/system/test_policy_page.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.dashboard.history import PolicyHistory
from gateway.dashboard.policy_edit import PolicyEditor
from gateway.runtime import policy_version
from policies.loader import read_policy_text

POLICY = """version: 1
models:
  alpha:
    provider: vllm
    endpoints: [{a}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  beta:
    provider: vllm
    endpoints: [{b}]
    pricing: {{input_per_1m: 3.0, output_per_1m: 6.0}}
routes:
  cheap: {{models: [alpha]}}
"""


class _Holder:
    """A PolicyHolder stand-in: load() reads the file as the reloader does, or fails."""

    def __init__(self, path: Path, fail: BaseException | None = None):
        self.path, self.fail = path, fail
        self.current: SimpleNamespace | None = None
        self.last_error = None
        self.following, self.record, self.text = False, None, None  # the file is the source

    async def load(self) -> SimpleNamespace:
        if self.fail is not None:
            raise self.fail
        text = read_policy_text(self.path)
        self.current = SimpleNamespace(version=policy_version(text), loaded_at=time.time())
        return self.current


def _editor(tmp_path: Path) -> PolicyEditor:
    return PolicyEditor(PolicyHistory(tmp_path / "history.sqlite"), watching=False)


def test_apply_puts_the_old_text_back_whatever_the_reload_raises(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    original = POLICY.format(a="http://127.0.0.1:9/v1", b="http://127.0.0.1:9/v1")
    path.write_text(original)
    edited = original.replace("cheap: {models: [alpha]}", "cheap: {models: [beta]}")
    holder = _Holder(path, fail=RuntimeError("a backend failed to start"))
    with pytest.raises(RuntimeError):
        asyncio.run(_editor(tmp_path).apply(holder, edited, "alice", "", "apply"))
    assert path.read_text() == original  # the file still says what serves


def test_apply_records_crlf_text_as_the_reloader_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    original = POLICY.format(a="http://127.0.0.1:9/v1", b="http://127.0.0.1:9/v1")
    path.write_text(original)
    edited = original.replace("cheap: {models: [alpha]}", "cheap: {models: [beta]}")
    holder = _Holder(path)
    applied = asyncio.run(
        _editor(tmp_path).apply(holder, edited.replace("\n", "\r\n"), "alice", "", "apply")
    )
    # The version is the hash the watcher waits for; before, CRLF text never matched it.
    assert policy_version(edited.replace("\n", "\r\n")) != applied.version
    assert applied.text == edited and policy_version(applied.text) == applied.version

"""Headless Debian Chromium driven by Playwright, for tests of the HTML pages.

Always the system browser (/usr/bin/chromium, from deploy/setup.sh): Playwright's own browser
download is never used, and the flags keep Chromium off the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = os.environ.get("ROUTEGATE_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Fail (not skip) with the fix when the browser or Playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash deploy/setup.sh`", pytrace=False)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'", pytrace=False)


@contextmanager
def browser_page(viewport: tuple[int, int] = (1280, 1000)) -> Iterator[Page]:
    """A fresh page in a fresh profile (user-data-dir), closed afterwards."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="routegate-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(15_000)
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """Save a full-page PNG in the test's tmp dir, and in $ROUTEGATE_SCREENSHOTS when set."""
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=True)
    extra = os.environ.get("ROUTEGATE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(extra) / name)
    return out

"""Debian's headless Chromium driven by Playwright, for the tests that use the Prefect UI as a user.

Screenshots go to a temporary folder; with ``NIGHTSHIFT_UPDATE_SCREENSHOTS=1`` they replace the
ones in ``docs/`` instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

F = TypeVar("F")

CHROMIUM = os.environ.get("NIGHTSHIFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
#: Headless on a shared CI box: no sandbox (root in containers), no GPU, and nothing that calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"
#: The UI renders on a 2-CPU box next to Ray and vLLM: allow it more than Playwright's 5 s.
UI_TIMEOUT_MS = 30_000

#: Marks for a module of browser tests: skipped, with the reason, where Chromium or Playwright is missing.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium, or set NIGHTSHIFT_CHROMIUM)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="playwright is not installed (pip install -e '.[dev]')"
    ),
]


def browser_test(fn: F) -> F:
    """Mark one test as a browser test (the ``BROWSER_MARKS``), in a module that has others."""
    for mark in BROWSER_MARKS:
        fn = mark(fn)
    return fn


@contextmanager
def chromium() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (Playwright's own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def shots_dir(tmp_path: Path) -> Path:
    """Where screenshots go: docs/ when asked to update them, else a temporary folder (CI stays clean)."""
    if os.environ.get("NIGHTSHIFT_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path


def new_page(browser, width: int = 1400, height: int = 1000):  # noqa: ANN001, ANN201 - Playwright objects
    """A page with the slow-box timeouts, for ``page`` calls and ``expect`` alike."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    return page


def screenshot(page, path: Path, **kw: object) -> None:  # noqa: ANN001 - a Playwright page
    """A screenshot once the page has settled (the run graph animates in; data arrives by polling)."""
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)
    page.screenshot(path=path, **kw)

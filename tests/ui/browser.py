"""Headless Chromium (Debian's ``chromium``) driven by Playwright's Python driver.

``playwright install`` cannot download browsers here, so the driver launches the system's
binary. When it is missing the browser tests fail in CI (``CI=true``: `make test` installs it,
`make browser`) and are skipped elsewhere, saying why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("UI_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000  # generous: the suite runs on a loaded 2-core machine


def missing(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why}: CI must run the browser tests (`make browser` installs them)")
    pytest.skip(f"{why} (`make browser` installs it)")


def chromium() -> str:
    found = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if not found:
        missing(f"no Chromium at {CHROMIUM}")
    return str(found)


@dataclass
class Console:
    """Every console error and uncaught page error a page has shown."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> Any:
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        return page


@contextmanager
def browser(profile: Path) -> Iterator[Any]:
    """A fresh Chromium profile in ``profile``; its browser context for the block."""
    binary = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the Playwright driver is not installed (pip install playwright)")
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=binary,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()

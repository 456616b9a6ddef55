"""A real headless browser for the tests: Debian's ``chromium`` driven by Playwright's Python API.

Installed with apt-get when missing (as root; skipped otherwise). Playwright's own browser download
(``playwright install``) is never used: the browser is launched with ``executable_path``. Tests use the
session-scoped fixture ``browser``: ``from services.chromium import browser  # noqa: F401``.
"""
from __future__ import annotations

import os

import pytest

from services._process import apt_install

CHROMIUM = "/usr/bin/chromium"
#: Root needs --no-sandbox; the rest keeps a headless browser from reaching out to the network.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def ensure_installed() -> None:
    """Install Debian's chromium with apt-get (as root) unless it is there already."""
    if os.access(CHROMIUM, os.X_OK):
        return
    apt_install("chromium", what=f"Chromium ({CHROMIUM})")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (Playwright ``Browser``), closed at the end of the session."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    ensure_installed()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()

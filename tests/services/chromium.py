"""A real headless browser for the tests: Debian's ``chromium`` driven by Playwright's Python API.

Installed with apt-get when missing (as root; skipped otherwise). Playwright's own browser download
(``playwright install``) is never used: the browser is launched with ``executable_path``. Tests use the
session-scoped fixture ``browser``: ``from services.chromium import browser  # noqa: F401``.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

CHROMIUM = "/usr/bin/chromium"
#: Root needs --no-sandbox; the rest keeps a headless browser from reaching out to the network.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def ensure_installed() -> None:
    """Install Debian's chromium with apt-get (as root) unless it is there already."""
    if os.access(CHROMIUM, os.X_OK):
        return
    if os.geteuid() != 0:
        pytest.skip(f"Chromium ({CHROMIUM}) is not installed and installing it needs root: apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for args in (["update"], ["install", "-y", "--no-install-recommends", "chromium"]):
        for attempt in range(10):  # another apt-get may hold the lists lock for a while
            proc = subprocess.run(["apt-get", *lock, *args], env=env, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                break
            if "lock" not in proc.stderr.lower() or attempt == 9:
                raise RuntimeError(f"apt-get {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
            time.sleep(10)


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

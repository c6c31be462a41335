"""A real browser for the browser tests (-m browser): Debian's Chromium, headless, driven by
Playwright for Python. Playwright's own browser downloads come from a CDN this machine cannot
reach, so it runs the system's Chromium (``make system-deps`` installs it); a missing one fails
the test with that reason, never skips it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Error, Page, sync_playwright

# The binary itself: /usr/bin/chromium is Debian's wrapper script, which reads
# /etc/chromium.d and adds flags of its own.
CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
VIEWPORT = {"width": 1400, "height": 900}


def chromium_path() -> str:
    """``MLOPS_CHROMIUM``, else Debian's Chromium. Raises with what to install."""
    configured = os.environ.get("MLOPS_CHROMIUM")
    for path in [configured] if configured else CANDIDATES:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    if found and not configured:
        return found
    raise RuntimeError(
        f"no Chromium at {configured or ' or '.join(CANDIDATES)}: install Debian's chromium "
        "(make system-deps) or set MLOPS_CHROMIUM to a Chromium binary"
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the duration of the block."""
    path = chromium_path()
    with sync_playwright() as playwright:
        try:
            # --no-sandbox: the tests run as root here, where Chromium's sandbox refuses to start.
            browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except Error as exc:
            raise RuntimeError(f"Chromium ({path}) did not start: {exc}") from exc
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser) -> Page:
    """A fresh page (its own context: no cookies or local storage from another test)."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """The whole page as ``folder/name.png``; printed, so the run's log says where it is."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path

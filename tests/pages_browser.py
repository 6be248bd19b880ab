"""Headless Chromium for the page tests (Debian's chromium + chromedriver, driven by Selenium).

The driver's path is given explicitly (Selenium's own driver manager would go to the internet) and
Chromium runs with its background networking off and a fresh profile, so it reaches nothing but
the files and the 127.0.0.1 server a test gives it. ``STIMOPT_SCREENSHOTS=DIR`` saves a full-page
screenshot of each page a test looks at (that is how docs/reports_*.png are made).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1200,900",
]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def skip_reason() -> str | None:
    if chromium_binary() is None or not Path(CHROMEDRIVER).exists():
        return f"needs Debian's chromium and chromium-driver ({CHROMEDRIVER}): apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="stimopt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, url_or_path) -> None:
    url = str(url_or_path)
    driver.get(url if "://" in url else Path(url).resolve().as_uri())


def wait_for(predicate, timeout: float = 30, interval: float = 0.25, message: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def images_loaded(driver, css: str = "img") -> list[dict]:
    """Every image matching css, with whether it loaded (complete and naturalWidth > 0)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(i => "
        "({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}));",
        css,
    )


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("STIMOPT_SCREENSHOTS")
    if not folder:
        return
    for _ in range(3):  # the window grows to the page's height (a full-page picture), then settles
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1200, min(max(int(height) + 140, 600), 6000))
        time.sleep(0.5)
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(Path(folder) / f"{name}.png"))
    driver.set_window_size(1200, 900)

"""The explorer in a real browser: ``streamlit run apps/explorer.py`` on a free localhost port, driven by
Playwright with the system's Chromium; every page is loaded, used, and screenshotted.

Needs the pip package ``playwright`` (no ``playwright install``: the browser is Debian's ``chromium``,
``apt-get install chromium``, or any Chromium named by ``G2INTERP_CHROMIUM``). Skipped without them.
Screenshots go to the test's tmp folder and are copied to ``runs/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.explorer.helpers import APP, REPO, environment
from tests.tiny import free_port

CHROMIUM = os.environ.get("G2INTERP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "runs" / "screenshots"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no browser download needed)"
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set G2INTERP_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(browser, world, tmp_path_factory):
    """The explorer served on localhost by ``streamlit run``; its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, **environment(world), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)]
    cmd += [
        "--server.address",
        "localhost",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer on {url} within 90 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _settle(page) -> None:
    """Wait until the app has finished its run and the page has drawn every element (no skeletons left)."""
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=\"stSkeleton\"], .stale-element').length === 0",
        timeout=TIMEOUT_MS,
    )
    page.wait_for_timeout(300)


def _shot(page, folder: Path, name: str) -> Path:
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]'
    ).first.inner_text()
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _sidebar_page(page, name: str) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
    page.get_by_role("heading", name=name.replace("Evaluations", "SAE evaluations")).first.wait_for(
        timeout=TIMEOUT_MS
    )


def test_every_page_in_a_browser(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.set_default_timeout(TIMEOUT_MS)
    shots = []
    try:
        page.goto(server)
        page.get_by_text("Latent #", exact=False).first.wait_for()
        assert page.locator('[data-testid="stSidebar"]').get_by_text("resid_post", exact=False).count() >= 1
        shots.append(_shot(page, tmp_path, "1_features"))

        latent = page.get_by_label("Latent", exact=True)
        latent.fill("7")
        latent.press("Enter")
        page.get_by_text("Latent #7", exact=True).wait_for()
        assert page.locator("span[title]").count() > 0  # highlighted context tokens
        assert page.locator(".js-plotly-plot").count() >= 2  # histogram and logit effects
        shots.append(_shot(page, tmp_path, "2_features_latent7"))

        _sidebar_page(page, "Text")
        page.get_by_text("CE with SAE").first.wait_for()
        area = page.get_by_role("textbox", name="Text", exact=True)
        area.fill("Hello world, hello browser.")
        area.press("Control+Enter")
        page.get_by_text("Latents on token", exact=False).first.wait_for()
        shots.append(_shot(page, tmp_path, "3_text"))

        _sidebar_page(page, "Moderation")
        page.get_by_role("button", name="Score").click()
        page.get_by_text("Pre-filter (prompt)", exact=False).first.wait_for()
        page.get_by_text("Pushing the score", exact=False).first.wait_for()
        shots.append(_shot(page, tmp_path, "4_moderation"))
        page.get_by_role("button", name="Generate with the filters").click()
        page.get_by_text("Guarded generation").first.wait_for()
        page.locator("text=/Released|Not released/").first.wait_for()
        shots.append(_shot(page, tmp_path, "5_moderation_generation"))

        _sidebar_page(page, "Evaluations")
        page.locator(".js-plotly-plot").nth(3).wait_for()
        shots.append(_shot(page, tmp_path, "6_evaluations"))

        page.goto(f"{server}/?page=Features&latent=5")
        page.get_by_text("Latent #5", exact=True).wait_for()
        shots.append(_shot(page, tmp_path, "7_features_by_url"))
    finally:
        page.close()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, SCREENSHOTS / shot.name)
    assert len(shots) == 7 and all(s.stat().st_size > 10_000 for s in shots)

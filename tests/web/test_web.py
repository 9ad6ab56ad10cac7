"""Acceptance 3 of issue 7 in a real browser: Debian's chromium driven by Playwright.

Upload a clip (with the token the page asks for), see what inspect found, run a preview,
move the before/after slider, run the job to the end, download a playable result; each
step is a screenshot in $WEB_SCREENSHOTS (default: the test's tmp folder)."""
from __future__ import annotations

import os
from pathlib import Path

import av
import pytest

from .conftest import TOKEN

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
JOB_SECONDS = 120


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="the playwright package is missing (pip install playwright)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("WEB_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_restore_a_tape_in_the_browser(stack, tape, browser, shots, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url)
    snap = lambda name: page.screenshot(path=str(shots / f"{name}.png"), full_page=True)  # noqa: E731

    page.locator("#token-section").wait_for(state="visible")
    snap("01-token")
    page.fill("#token", TOKEN)
    page.click("text=Use this token")

    # One chunk's connection drops: the page resumes from where the server says it is.
    dropped = []

    def drop_one_chunk(route):
        if "offset=0" not in route.request.url and not dropped:
            dropped.append(route.request.url)
            return route.abort("connectionreset")
        return route.continue_()

    page.route("**/api/uploads/*?offset=*", drop_one_chunk)
    page.set_input_files("#file", str(tape))
    page.wait_for_selector("#upload-text:has-text('Uploaded')", timeout=60_000)
    assert dropped, "no chunk after the first was sent"
    page.wait_for_selector("#findings li:has-text('Interlaced')", timeout=60_000)
    findings = page.inner_text("#findings")
    assert "top field first" in findings and "4:3" in findings and "sound track" in findings
    snap("02-uploaded-and-inspected")

    page.check("#preset-clean")
    page.fill("#preview-seconds", "1")
    page.click("#preview-button")
    page.locator("#preview-result").wait_for(state="visible", timeout=120_000)
    page.wait_for_function("document.getElementById('after-img').naturalWidth > 0")
    snap("03-preview")
    page.wait_for_function("document.getElementById('preview-video').readyState >= 1")
    page.fill("#wipe", "20")
    assert page.eval_on_selector("#before-img", "e => e.style.clipPath") == "inset(0px 80% 0px 0px)"
    snap("04-slider-moved")

    page.click("#start-button")
    page.locator("#job").wait_for(state="visible")
    snap("05-job-started")
    page.wait_for_selector("#stage-table tbody tr", timeout=JOB_SECONDS * 1000)
    snap("06-job-running")
    page.locator("#download").wait_for(state="visible", timeout=JOB_SECONDS * 1000)
    assert "finished" in page.inner_text("#job-text")
    assert page.locator("#stage-table tbody tr").count() >= 2
    page.wait_for_function("document.getElementById('thumb').naturalWidth > 0")
    snap("07-job-finished")

    page.wait_for_function("document.getElementById('result-video').readyState >= 1"
                           " && document.getElementById('result-video').duration > 0.5")
    with page.expect_download() as download_info:
        page.click("#download-link")
    result = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(result)
    assert result.name == "wedding tape.restored.mp4"
    assert frames_in(result) >= 50

    page.click("#start-button")
    page.wait_for_selector("#job-text:has-text('restoring'), #job-text:has-text('waiting')")
    page.click("#cancel-button")
    page.wait_for_selector("#job-text:has-text('cancelled')", timeout=60_000)
    snap("08-second-job-cancelled")

    page.click("#refresh-jobs")
    page.wait_for_selector("#jobs-table td:has-text('finished')")
    page.wait_for_selector("#jobs-table td:has-text('cancelled')")
    page.set_viewport_size({"width": 390, "height": 844})
    snap("09-phone")
    assert not errors, errors
    page.close()


def frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


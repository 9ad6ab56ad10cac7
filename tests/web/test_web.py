"""Acceptance 3 of issue 7 and 2 of issue 27 in a real browser: Debian's chromium driven
by Playwright.

Upload a clip (with the token the page asks for), see what inspect found, run a preview,
move the before/after slider, run the job to the end, download a playable result, cancel
a second job; a bad upload and a phone-width screen. Each step is a screenshot in
$RESTORATION_ARTEFACTS/web (or $WEB_SCREENSHOTS; default: the test's tmp folder)."""
from __future__ import annotations

import os
from pathlib import Path

import av
import pytest

from orchestrator.pipeline.registry import TASKS

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
    artefacts = os.environ.get("RESTORATION_ARTEFACTS")
    folder = Path(os.environ.get("WEB_SCREENSHOTS") or (Path(artefacts) / "web" if artefacts
                                                       else tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
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
    # The default is the command line's pipeline: every task, so nothing comes back smaller.
    assert page.is_checked("#preset-full")
    assert all(page.is_checked(f"#task-{task}") for task in TASKS)

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
    assert page.is_disabled("#start-button"), "Start must wait for the running job"
    snap("05-job-started")
    page.wait_for_selector("#stage-table tbody tr", timeout=JOB_SECONDS * 1000)
    assert page.is_disabled("#start-button")
    snap("06-job-running")
    page.locator("#download").wait_for(state="visible", timeout=JOB_SECONDS * 1000)
    assert "finished" in page.inner_text("#job-text")
    assert "finished" in page.inner_text("#message") and "started" not in page.inner_text("#message")
    assert page.locator("#stage-table tbody tr").count() >= 2
    assert page.is_enabled("#start-button")
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
    # Cancelled is said everywhere alike: the banner, the job, the list, and Start is back.
    page.wait_for_selector("#message:has-text('cancelled')")
    assert "started" not in page.inner_text("#message")
    assert page.is_hidden("#cancel-button") and page.is_enabled("#start-button")
    snap("08-second-job-cancelled")

    page.click("#refresh-jobs")
    page.wait_for_selector("#jobs-table td:has-text('finished')")
    page.wait_for_selector("#jobs-table td:has-text('cancelled')")
    finished_row = page.locator("#jobs-table tr:has-text('finished')")
    assert finished_row.locator("td", has_text="100%").count() == 1
    assert finished_row.locator("img.job-thumb").count() == 1

    # An old job, shown again after a reload, still has its work per step.
    page.reload()
    page.wait_for_selector("#jobs-table td:has-text('finished')")
    finished_row = page.locator("#jobs-table tr:has-text('finished')")
    finished_row.locator("button").click()
    page.wait_for_selector("#stage-table tbody tr")
    assert page.locator("#stage-table tbody tr").count() >= 2
    # The finished job's picture in the list comes from the job service (its last scene).
    page.wait_for_function("() => [...document.querySelectorAll('#jobs-table img.job-thumb')]"
                           ".some((i) => i.complete && i.naturalWidth > 0)")
    page.set_viewport_size({"width": 390, "height": 844})
    snap("09-phone")
    assert not errors, errors
    page.close()


def test_bad_upload_and_phone_width(stack, tape, browser, shots, tmp_path):
    """A file that is not a video: the page says so in words, without any server path; at
    375 px every control is on screen; the page has an icon."""
    page = browser.new_page(viewport={"width": 375, "height": 812}, is_mobile=True,
                            has_touch=True, device_scale_factor=2)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.add_init_script(f"sessionStorage.setItem('token', '{TOKEN}')")
    page.goto(stack.url)
    snap = lambda name: page.screenshot(path=str(shots / f"{name}.png"), full_page=True)  # noqa: E731
    icon = page.eval_on_selector("link[rel=icon]", "e => e.href")
    assert page.request.get(icon).status == 200

    notes = tmp_path / "notes.mp4"
    notes.write_text("wedding, june 1994\n" * 200)
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#message:has-text('could not read')", timeout=60_000)
    message = page.inner_text("#message")
    assert "notes.mp4" in message
    for leak in (str(stack.uploads), "/tmp", "/root", "/home", ".cache", "uploads/"):
        assert leak not in message, message
    snap("10-phone-bad-upload")

    page.set_input_files("#file", str(tape))
    page.wait_for_selector("#findings li:has-text('Interlaced')", timeout=60_000)
    page.wait_for_selector("#jobs-table tbody tr")
    snap("11-phone-uploaded")
    width = page.evaluate("document.documentElement.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    controls = page.locator("button:visible, .button:visible, input:visible, a[href]:visible, summary:visible")
    assert controls.count() > 10
    for i in range(controls.count()):
        box = controls.nth(i).bounding_box()
        if box is None or box["width"] <= 2:   # the visually hidden file input
            continue
        what = controls.nth(i).evaluate("e => e.outerHTML.slice(0, 80)")
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (what, box)
    shows = page.locator("#jobs-table button")
    for i in range(shows.count()):
        box = shows.nth(i).bounding_box()
        assert box["x"] + box["width"] <= width and box["width"] >= 44
    assert not errors, errors
    page.close()


def frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


"""The web console in a real browser: Debian's chromium, headless, driven through
chromedriver by Selenium, against a real suite whose gateway serves the built console on its
browser port (REELMILL_BROWSER_LISTEN). The page uses the generated TypeScript client over
Connect (bundled by esbuild at build time, clients/console/build.mjs):

- a bad token is refused with its reason (INVALID_TOKEN, read by ``errorReason``);
- a clip with speech is uploaded through the file input (the drop zone's code path): the
  resumable upload's chunks by PUT, then the job, which the jobs list follows live (WatchJob
  over Connect server streaming) to SUCCEEDED;
- the job page plays the HLS stream with hls.js (currentTime advances), renders the
  transcript as captions (an active cue while it plays) and shows storyboard thumbnails over
  the timeline (the sprite sheet fetched by the storyboard's signed URL);
- an unknown job's page shows JOB_NOT_FOUND.

On failure, a screenshot and the page's HTML and console log are saved in a directory the
failure message names.

Needs ``chromium`` and ``chromium-driver`` (apt; .ci/run installs them) and Node.js/npm to build
the console (``npm ci`` from its lock file when node_modules is older).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SuiteEnv
from tests.servers import free_port
from tests.suite import ROOT, Suite, run_suite, token

pytestmark = pytest.mark.e2e

CONSOLE = ROOT / "clients" / "console"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: A quick job that still has everything the page shows: HLS, a transcript, metadata.
SPEC = {
    "transcode": {"ladder": [{"height": 240}], "preset": "ultrafast"},
    "scenes": {"disabled": True},
    "ocr": {"disabled": True},
}


def build_console() -> Path:
    """``npm ci`` (when the lock file changed) and the esbuild bundle: what ./dev does."""
    installed = CONSOLE / "node_modules" / ".package-lock.json"
    lock = CONSOLE / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=CONSOLE,
            check=True,
            timeout=300,
        )
    subprocess.run(["node", "build.mjs"], cwd=CONSOLE, check=True, timeout=120)
    return CONSOLE / "dist"


@pytest.fixture(scope="module")
def console_dir() -> Path:
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is not installed (the console is built with it)"
    return build_console()


@pytest.fixture(scope="module")
def browser_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def suite(suite_env: SuiteEnv, console_dir: Path, browser_port: int) -> Iterator[Suite]:
    env = {
        **suite_env("local"),
        "REELMILL_BROWSER_LISTEN": f"127.0.0.1:{browser_port}",
        "REELMILL_CONSOLE_DIR": str(console_dir),
    }
    with run_suite(env) as running:
        yield running


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "Debian's chromium and chromium-driver are needed: apt-get install chromium chromium-driver"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()


@contextmanager
def evidence(driver: Any, name: str) -> Iterator[None]:
    """Saves a screenshot, the page and the browser's console log when the block fails."""
    try:
        yield
    except BaseException as failure:
        where = Path(tempfile.mkdtemp(prefix=f"reelmill-browser-{name}-"))
        try:
            driver.save_screenshot(str(where / "screenshot.png"))
            (where / "page.html").write_text(driver.page_source)
            (where / "console.log").write_text(
                "\n".join(json.dumps(entry) for entry in driver.get_log("browser"))
            )
        except Exception as exc:  # the browser itself may be what failed
            (where / "error.txt").write_text(repr(exc))
        raise AssertionError(f"{failure} (screenshot and page saved in {where})") from failure


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not there yet (stale element, no such element)
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def attribute(driver: Any, css: str, name: str) -> str | None:
    """The attribute of the first element ``css`` matches, read in one script."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(arguments[0]);"
        " return e ? e.getAttribute(arguments[1]) : null",
        css,
        name,
    )


def text_of(driver: Any, css: str) -> str:
    """The rendered text of the first element ``css`` matches, read in one script."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css
    )


def test_console_uploads_watches_plays_and_captions(
    suite: Suite,
    driver: Any,
    browser_port: int,
    shared_media: Path,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    from tests.media import make_speech_clip

    base = f"http://127.0.0.1:{browser_port}/"
    clip = make_speech_clip(tmp_path / "jfk.mp4", shared_media / "speech" / "jfk.flac")

    with evidence(driver, "signin"):
        wait_for(lambda: _reachable(base), 30, "the browser port")
        driver.get(base)
        driver.execute_script("localStorage.clear()")
        driver.get(base)
        field = wait_for(lambda: driver.find_element(By.ID, "token"), 20, "the sign-in form")
        field.send_keys("not-a-token")
        driver.find_element(By.ID, "signin").click()
        wait_for(
            lambda: "INVALID_TOKEN" in text_of(driver, "#signin-error"),
            20,
            "the refused sign-in's reason",
        )
        field = driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token())
        driver.find_element(By.ID, "signin").click()
        wait_for(lambda: driver.find_element(By.ID, "file"), 20, "the jobs page")

    with evidence(driver, "upload"):
        driver.execute_script(
            "document.getElementById('spec').value = arguments[0]", json.dumps(SPEC)
        )
        driver.find_element(By.ID, "file").send_keys(str(clip))
        status = wait_for(
            lambda: (
                "created" in text_of(driver, "#upload-status") and text_of(driver, "#upload-status")
            ),
            120,
            "the upload and the job",
        )
        assert "failed" not in status, status
        progress = driver.execute_script(
            "const p = document.getElementById('progress'); return [p.value, p.max]"
        )
        assert progress[0] == progress[1] == clip.stat().st_size, progress
        job_id = status.split()[1]
        row = f"tr[data-job='{job_id}']"
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, row), 20, "the job's row")
        # The row follows the job live (WatchJob), through running stages, to the end.
        # The list re-renders the row on every event: each read below is one script, so no
        # element is held across a re-render.
        state = wait_for(
            lambda: (
                attribute(driver, row, "data-state") in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED")
                and attribute(driver, row, "data-state")
            ),
            420,
            "the job to end in the list",
            interval=1,
        )
        assert state == "JOB_STATE_SUCCEEDED"
        chips = driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(c => c.dataset.stage)",
            f"{row} .stage.SUCCEEDED",
        )
        assert set(chips) >= {"probe", "transcode"}, chips

    with evidence(driver, "player"):
        driver.execute_script("document.querySelector(arguments[0]).click()", f"{row} a")
        wait_for(lambda: driver.find_element(By.ID, "player"), 20, "the job page")
        wait_for(lambda: "ask not" in text_of(driver, "#transcript").lower(), 20, "the transcript")
        driver.execute_script(
            "const v = document.getElementById('player'); v.muted = true; v.play();"
        )
        wait_for(
            lambda: (
                driver.execute_script("return document.getElementById('player').currentTime") > 1.5
            ),
            60,
            "HLS playback to advance",
        )
        captions = wait_for(
            lambda: driver.execute_script(
                "const t = document.getElementById('player').textTracks[0];"
                "return t && t.mode === 'showing' && t.activeCues && t.activeCues.length"
                " ? t.activeCues[0].text : ''"
            ),
            30,
            "a caption on screen",
        )
        assert captions.strip()
        assert driver.execute_script("return document.getElementById('player').videoHeight") == 240
        # Storyboard thumbnails over the timeline: the sprite under the pointer, fetched by the
        # storyboard's signed URL (its directory's scope).
        wait_for(lambda: driver.find_elements(By.ID, "storyboard-thumb"), 20, "the storyboard")
        driver.execute_script(
            "const t = document.getElementById('timeline'); const b = t.getBoundingClientRect();"
            "t.dispatchEvent(new MouseEvent('mousemove', {clientX: b.left + b.width / 2,"
            " clientY: b.top + 5, bubbles: true}));"
        )
        sprite = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const s = document.getElementById('storyboard-thumb').style;"
            "const url = s.backgroundImage.slice(5, -2);"
            "fetch(url).then(r => done([s.display, url, r.status, r.headers.get('content-type')]))"
            ".catch(e => done([s.display, url, String(e), '']));"
        )
        assert sprite[0] == "block" and sprite[2] == 200 and sprite[3] == "image/jpeg", sprite
        links = driver.find_elements(By.CSS_SELECTOR, "#artifacts a[data-artifact]")
        assert any(link.get_attribute("data-artifact").endswith("master.m3u8") for link in links)

    with evidence(driver, "not-found"):
        driver.get(f"{base}#/jobs/{uuid.uuid4()}")
        driver.refresh()
        wait_for(
            lambda: "JOB_NOT_FOUND" in text_of(driver, "#job-error"),
            20,
            "an unknown job's reason",
        )


def _reachable(base: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(base + "healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False

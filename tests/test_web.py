"""The web page at `/` in a real headless Chromium (Debian's, driven by Playwright), and `/docs`, `/redoc` offline.

The page talks to an in-process gateway in front of a CPU engine subprocess, exactly as a person's browser would.
`WEB_SCREENSHOT=docs/web-page.png` also saves a screenshot of the page in its finished state.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import EngineProcess, assert_speech, decode_wav, make_reference, speech_like_signal

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream"]
TEXT = "Hello from the web page."
SRT = """1
00:00:00,500 --> 00:00:02,300
Welcome back to the show.

2
00:00:03,000 --> 00:00:05,000
Thanks, it is good to be here.
"""
PAD = 0.5  # seconds of silence around the 4 s of speech in the test reference


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():  # never skipped: `make test` installs it
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path_factory.mktemp("web") / "shared", [engine_v2.url])) as gw:
        yield gw


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="module")
def padded_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of speech between 0.5 s of silence on each side: intake trims the silence."""
    rate = 32000
    silence = np.zeros(int(PAD * rate), dtype=np.float32)
    samples = np.concatenate([silence, speech_like_signal(4.0, rate, silent_gaps=True), silence])
    path = tmp_path_factory.mktemp("refs") / "narrator.wav"
    sf.write(str(path), samples, rate, subtype="PCM_16")
    return path


def check(url: str, path: Path) -> httpx.Response:
    return httpx.post(f"{url}/v1/references/check", files={"audio": (path.name, path.read_bytes())}, timeout=30)


def canvas_pixel(page: Page, x: int, y: int) -> list[int]:
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('waveform').getContext('2d').getImageData(x, y, 1, 1).data)",
        [x, y],
    )


def blob_bytes(page: Page, selector: str) -> bytes:
    """What a media element's blob: URL holds, read inside the page."""
    encoded = page.evaluate(
        """async (selector) => {
            const blob = await (await fetch(document.querySelector(selector).src)).blob();
            return await new Promise((resolve) => {
                const reader = new FileReader();
                reader.onload = () => resolve(reader.result.split(',')[1]);
                reader.readAsDataURL(blob);
            });
        }""",
        selector,
    )
    return base64.b64decode(encoded)


def test_reference_check_route(gateway: GatewayServer, padded_reference: Path, tmp_path: Path) -> None:
    answer = check(gateway.url, padded_reference)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # the silence on each side goes, up to the 50 ms intake keeps around speech (the signal's last quarter
    # second is one of its silent dips, so speech ends at 3.75 s)
    assert body["speech_start"] == pytest.approx(PAD - 0.05, abs=0.03)
    assert body["speech_end"] == pytest.approx(PAD + 3.75 + 0.05, abs=0.03)
    assert body["duration"] == pytest.approx(body["speech_end"] - body["speech_start"], abs=0.03)
    assert body["trimmed_seconds"] == pytest.approx(2 * PAD + 4.0 - body["duration"], abs=0.03)
    assert body["sample_rate"] == 32000 and body["warnings"] == [] and len(body["reference_id"]) == 64
    assert not list(gateway.settings.refs_dir.glob("*.wav")), "a check must not store the reference"

    short = check(gateway.url, make_reference(tmp_path / "short.wav", seconds=2.0))
    assert short.status_code == 422 and short.json()["error"]["code"] == "reference_too_short"


def test_page_reference_generate_voice_and_dub(
    page: Page, gateway: GatewayServer, padded_reference: Path, tmp_path: Path
) -> None:
    page.goto(gateway.url)
    page.set_input_files("#ref-file", str(padded_reference))
    page.wait_for_selector("#waveform[data-state=ok]")
    expected = check(gateway.url, padded_reference).json()
    info = page.inner_text("#ref-info")
    assert f"Measured {expected['duration']:.2f} s" in info and f"{expected['speech_start']:.2f} s at the start" in info
    # the trimmed lead-in is shaded, the kept speech is not (top row: above the waveform's peaks)
    assert canvas_pixel(page, 5, 5) != canvas_pixel(page, 450, 5)
    assert canvas_pixel(page, 895, 5) == canvas_pixel(page, 5, 5)
    assert canvas_pixel(page, 450, 53)[2] > 150, "the kept speech is drawn in the waveform colour"

    # generate: streamed PCM played as it arrives, then the whole clip in the <audio> element
    page.fill("#prompt-text", "A short reference.")
    page.fill("#text", TEXT)
    page.fill("#seed", "7")
    page.click("#generate")
    page.wait_for_function("document.getElementById('result').duration > 0", timeout=60_000)
    duration = page.evaluate("document.getElementById('result').duration")
    samples, rate = decode_wav(blob_bytes(page, "#result"))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.8, max_seconds=8.0)
    assert duration == pytest.approx(len(samples) / rate, abs=0.01)
    whole = httpx.post(
        f"{gateway.url}/v1/audio/speech",
        data={"input": TEXT, "text_language": "en", "reference_text": "A short reference.", "prompt_language": "en",
              "response_format": "wav", "stream": "false", "seed": "7", "speed": "1"},
        files={"reference_audio": (padded_reference.name, padded_reference.read_bytes())},
        timeout=60,
    )
    assert whole.status_code == 200, whole.text
    assert duration == pytest.approx(float(whole.headers["X-Audio-Duration"]), abs=0.1)
    assert page.get_attribute("#download", "href") == page.get_attribute("#result", "src")
    assert int(page.get_attribute("#result", "data-played-live") or 0) > 0, "nothing was played while streaming"

    # save the reference as a voice: listed on the page and in the library
    page.fill("#voice-name", "Narrator")
    page.click("#save-voice")
    page.wait_for_selector("#voices li:has-text('Narrator')")
    voices = httpx.get(f"{gateway.url}/v1/voices").json()["voices"]
    assert [v["name"] for v in voices] == ["Narrator"]
    assert page.input_value("#job-voice") == voices[0]["id"]

    # speak with the saved voice: its normalised reference is drawn, and a new clip replaces the first
    first_clip = page.get_attribute("#result", "src")
    page.click("button[aria-label='Use voice Narrator']")
    page.wait_for_selector("#ref-info:has-text('Saved voice Narrator')")
    assert page.is_hidden("#upload-pick") and page.input_value("#voice-select") == voices[0]["id"]
    page.click("#generate")
    page.wait_for_function("(src) => document.getElementById('result').src !== src", arg=first_clip, timeout=60_000)
    page.wait_for_function("document.getElementById('result').duration > 0")
    samples, rate = decode_wav(blob_bytes(page, "#result"))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.8, max_seconds=8.0)
    page.check("#source-upload")  # back to the upload: checked again, trimmed silence shaded again
    page.wait_for_selector("#waveform[data-state=ok]")

    # a dubbing job: its timeline fills in as lines finish; a line plays from its bar, keyboard only
    srt = tmp_path / "lines.srt"
    srt.write_text(SRT)
    page.set_input_files("#subtitles", str(srt))
    page.click("#submit-job")
    page.wait_for_selector("#job-info[data-status=done]", timeout=90_000)
    bars = page.locator("#timeline .bar")
    assert bars.count() == 2
    assert [bars.nth(i).get_attribute("data-status") for i in range(2)] == ["done", "done"]
    assert page.locator("#timeline .bar .achieved").count() == 2
    first, second = (bars.nth(i).bounding_box() for i in range(2))
    assert first is not None and second is not None and first["x"] < second["x"]
    # bars sit at their cues: 0.5 s and 3.0 s on one time axis
    assert (second["x"] - first["x"]) / first["width"] == pytest.approx(2.5 / 1.8, rel=0.08)
    assert "target 1.80 s" in (bars.nth(0).get_attribute("aria-label") or "")
    bars.nth(1).focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('line-audio').duration > 0")
    assert page.get_attribute("#line-audio", "src", timeout=1000).endswith("/segments/2")  # type: ignore[union-attr]
    track_url = page.get_attribute("#track-link", "href")
    assert track_url is not None and track_url.endswith("/track")
    track = httpx.get(gateway.url + track_url, timeout=30)
    assert track.status_code == 200 and decode_wav(track.content)[0].size > 0

    if target := os.environ.get("WEB_SCREENSHOT"):
        page.locator("#result").scroll_into_view_if_needed()
        page.screenshot(path=target, full_page=True)

    page.click("button[aria-label='Delete voice Narrator']")
    page.wait_for_selector("#voices-empty:visible")
    assert httpx.get(f"{gateway.url}/v1/voices").json()["voices"] == []
    assert "Deleted voice Narrator" in page.inner_text("#status")


def test_short_reference_shows_the_envelope_message(page: Page, gateway: GatewayServer, tmp_path: Path) -> None:
    short = make_reference(tmp_path / "short.wav", seconds=2.0)
    message = check(gateway.url, short).json()["error"]["message"]
    page.goto(gateway.url)
    page.set_input_files("#ref-file", str(short))
    page.wait_for_selector("#waveform[data-state=error]")
    assert page.inner_text("#ref-error") == message
    assert "1.8 s after trimming silence" in message and page.get_attribute("#ref-error", "role") == "alert"
    page.click("#generate")  # the speech route refuses it with the same envelope
    page.wait_for_function("document.getElementById('gen-error').textContent.length > 0")
    assert page.inner_text("#gen-error") == message


def test_saving_a_voice_that_sounds_like_another_says_so(
    page: Page, gateway: GatewayServer, padded_reference: Path
) -> None:
    original = httpx.post(f"{gateway.url}/v1/voices", data={"name": "Original"}, timeout=60,
                          files={"audio": (padded_reference.name, padded_reference.read_bytes())})
    assert original.status_code == 201, original.text
    page.goto(gateway.url)
    page.set_input_files("#ref-file", str(padded_reference))
    page.wait_for_selector("#waveform[data-state=ok]")
    page.fill("#voice-name", "Copy")
    page.click("#save-voice")
    page.wait_for_selector("#voices li:has-text('Copy')")
    status = page.inner_text("#status")
    assert status.startswith("Saved voice Copy. ") and "Original" in status, status
    for voice in httpx.get(f"{gateway.url}/v1/voices").json()["voices"]:
        assert httpx.delete(f"{gateway.url}/v1/voices/{voice['id']}").status_code == 204


def test_failed_lines_are_marked(page: Page, gateway: GatewayServer) -> None:
    """The timeline's drawing of a failed line (no engine fault needed to see how it is marked)."""
    page.goto(gateway.url)
    job: dict[str, Any] = {"segments": [
        {"id": "1", "text": "Fine.", "start": 0.0, "end": 1.0, "status": "done", "duration": 0.9,
         "timing": {"target": 1.0, "achieved": 0.95, "within_tolerance": True}},
        {"id": "2", "text": "Broken.", "start": 1.5, "end": 2.5, "status": "failed",
         "error": {"code": "engine_bad_response", "message": "the engine answered 500"}},
    ]}
    labels = page.evaluate(
        """async (job) => {
            const { renderTimeline } = await import('/static/timeline.js');
            const box = document.getElementById('timeline');
            box.hidden = false;
            renderTimeline(box, job, () => {});
            return [...box.querySelectorAll('.bar')].map((b) => [b.className, b.getAttribute('aria-label')]);
        }""",
        job,
    )
    assert labels[0][0] == "bar done" and "target 1.00 s, achieved 0.95 s, done" in labels[0][1]
    assert labels[1][0] == "bar failed" and "failed: the engine answered 500" in labels[1][1]


def test_controls_are_labelled(page: Page, gateway: GatewayServer) -> None:
    page.goto(gateway.url)
    page.wait_for_selector("#voices-empty")
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button, audio, canvas')]
            .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                || el.textContent.trim()))
            .map((el) => el.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    assert page.get_attribute("#status", "aria-live") == "polite"
    # everything is reachable from the keyboard: Tab from the top reaches the Generate button
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "generate":
            break
    else:
        raise AssertionError("Tab never reached the Generate button")


def test_recording_becomes_a_checked_reference(page: Page, gateway: GatewayServer) -> None:
    """MediaRecorder on Chromium's fake microphone → a WAV the page checks like an upload."""
    page.goto(gateway.url)
    page.click("#record")
    page.wait_for_selector("#record[aria-pressed=true]")
    page.wait_for_timeout(4500)
    page.click("#record")
    page.wait_for_selector("#waveform[data-state=ok]", timeout=20_000)
    # the fake microphone beeps from the first moment: the whole 4.5 s take (kept + trimmed) is what was measured
    info = page.inner_text("#ref-info")
    found = re.match(r"recording\.wav: Measured ([\d.]+) s of speech at \d+ Hz; ([\d.]+) s of silence trimmed", info)
    assert found, info
    assert 4.2 < float(found[1]) + float(found[2]) < 5.2, info


@pytest.mark.parametrize(("path", "rendered"), [
    ("/docs", ".opblock-summary-path[data-path='/v1/voice-clone']"),
    ("/redoc", "h2:text-is('Create a voice from a reference recording')"),
])
def test_api_docs_render_offline(page: Page, gateway: GatewayServer, path: str, rendered: str) -> None:
    blocked: list[str] = []

    def only_the_gateway(route: Route) -> None:
        if route.request.url.startswith(gateway.url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_the_gateway)
    page.goto(gateway.url + path)
    page.wait_for_selector(rendered, timeout=20_000)
    if path == "/docs":
        assert page.locator(".opblock").count() >= 20
    # ReDoc's "API docs by Redocly" footer links its logo from Redocly's CDN: a missing image, nothing more
    needed = [url for url in blocked if url != "https://cdn.redoc.ly/redoc/logo-mini.svg"]
    assert needed == [], f"{path} reached beyond the gateway: {needed}"

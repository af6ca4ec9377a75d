"""The web page against a keyed gateway in a real headless Chromium: its API calls carry the key typed in the
header (kept in localStorage); without it they show the 401's message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.gateway_support import fast_settings, running_gateway
from tests.test_web import ARGS, CHROMIUM

KEY = "sk-sovits-web-page-test-key"


def test_the_page_sends_the_key_from_its_field(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "shared", ["http://127.0.0.1:9"], api_keys=f"{KEY}:synthesize")
    with running_gateway(settings) as gw, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(gw.url)  # the page itself needs no key
            page.wait_for_function("document.getElementById('voices-error').textContent.length > 0")
            assert "missing API key" in page.inner_text("#voices-error")
            assert page.get_attribute("#api-key", "type") == "password"
            page.fill("#api-key", KEY)
            page.press("#api-key", "Enter")
            page.locator("#api-key").blur()
            page.wait_for_selector("#voices-empty:visible")
            assert page.inner_text("#voices-error") == ""
            page.reload()  # remembered
            assert page.input_value("#api-key") == KEY
            models = page.evaluate("async () => (await (await import('/static/api.js')).getJson('/v1/models')).data")
            assert models[0]["id"] == "gpt-sovits"
            page.wait_for_selector("#voices-empty:visible")
            assert page.inner_text("#voices-error") == "" and not errors, errors
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def _chromium() -> Iterator[None]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs Debian's chromium")
    yield

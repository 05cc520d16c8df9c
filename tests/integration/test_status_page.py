"""The status page in a real browser (headless Chromium through chromium-driver) against a real
server with a tiny model: it asks for the API key, shows the loaded model, plots the traffic,
lists errors, and its Load and Unload buttons change the model's state on the server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningServer, start_server

pytestmark = pytest.mark.integration

KEY = "status-page-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT = 30.0
"""Seconds to wait for the page (it polls every 2 s; a load takes a worker start)."""


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "the status-page test needs Debian's chromium and chromium-driver: run `make system-deps`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def keyed_server(tmp_path: Path, tiny_models_root: Path) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path,
        {
            "defaults": {
                "model": "tiny-llama",
                "model_directory": str(tiny_models_root),
                "embedded_model": False,
                "max_tokens": 16,
                "cache_size": 2,
            },
            "server": {"api_key": KEY},
            "models": {"tiny-spare": {"path": "tiny-llama"}},
        },
    )
    yield server
    server.stop()


def model_state(server: RunningServer, model_id: str) -> str:
    with server.client(headers=AUTH) as http:
        rows = http.get("/v1/admin/models").json()["data"]
    return next(row["state"] for row in rows if row["id"] == model_id)  # type: ignore[no-any-return]


def test_status_page_shows_models_and_its_buttons_load_and_unload(
    browser: Any, keyed_server: RunningServer, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The page redraws a row whose state changed; a reference taken just before is then stale.
    wait = WebDriverWait(browser, WAIT, ignored_exceptions=[StaleElementReferenceException])

    def row(model_id: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'tr[data-model="{model_id}"]')

    def click(model_id: str, button: str) -> None:
        def attempt(_: Any) -> bool:
            row(model_id).find_element(By.CSS_SELECTOR, f"button.{button}").click()
            return True

        wait.until(attempt)

    def state_is(model_id: str, state: str) -> Any:
        return lambda _: browser.find_elements(By.CSS_SELECTOR, f'tr[data-model="{model_id}"][data-state="{state}"]')

    browser.get(keyed_server.base_url + "/ui")
    # Without the key the page says so instead of showing data.
    wait.until(lambda _: "needs an API key" in browser.find_element(By.ID, "notice").text)
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "save-key").click()
    assert browser.execute_script("return sessionStorage.getItem('mlx-router-api-key')") == KEY

    # The default model is loaded; it is kept, not pinned, so its Unload button is on.
    wait.until(state_is("tiny-llama", "ready"))
    wait.until(lambda _: row("tiny-llama").find_element(By.CSS_SELECTOR, "button.unload").is_enabled())
    wait.until(lambda _: not browser.find_element(By.ID, "notice").is_displayed())

    # Traffic and an error, to see them on the page.
    with keyed_server.client(headers=AUTH) as http:
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12}
        for _ in range(3):
            assert http.post("/v1/chat/completions", json=body).status_code == 200
        assert http.post("/v1/chat/completions", json={**body, "model": "no-such-model"}).status_code == 404
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#chart-tokens rect"))
    wait.until(lambda _: "no-such-model" in browser.find_element(By.ID, "errors").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-requests rect")

    # A refresh redraws only the cells that changed: the idle time moves, the Unload button stays
    # the same element (a click landing during a refresh is not lost).
    unload = row("tiny-llama").find_element(By.CSS_SELECTOR, "button.unload")
    idle = row("tiny-llama").find_elements(By.TAG_NAME, "td")[6].text
    wait.until(lambda _: row("tiny-llama").find_elements(By.TAG_NAME, "td")[6].text != idle)
    assert unload.is_enabled()

    # Load the other model with its button, then unload it.
    assert model_state(keyed_server, "tiny-spare") == "unloaded"
    click("tiny-spare", "load")
    wait.until(state_is("tiny-spare", "ready"))
    assert model_state(keyed_server, "tiny-spare") == "ready"
    wait.until(lambda _: row("tiny-spare").find_element(By.CSS_SELECTOR, "button.unload").is_enabled())
    click("tiny-spare", "unload")
    wait.until(state_is("tiny-spare", "unloaded"))
    assert model_state(keyed_server, "tiny-spare") == "unloaded"
    assert model_state(keyed_server, "tiny-llama") == "ready"

    text = browser.find_element(By.TAG_NAME, "body").text
    assert "normal" in text or "moderate" in text or "high" in text or "critical" in text  # pressure level
    assert " GB" in browser.find_element(By.ID, "mem-used").text
    screenshot = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    # Nothing the page did needed another host, and it logged no script errors.
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and "401" not in e.get("message", "")]
    assert errors == []
    assert httpx.get(keyed_server.base_url + "/", timeout=5).status_code == 200

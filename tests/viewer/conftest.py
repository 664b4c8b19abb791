"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium)
against a real uvicorn serving the app.

``make test`` installs Chromium where it is missing (``scripts/ensure-chromium``). Without it
these tests are skipped, except under CI (``CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.main import create_app
from service.settings import Settings
from tests.api.conftest import KEEP_ALIVE, MODELS_TOML, make_settings, serve
from tests.jobs.datasets import write_image_folder

# Generous for two busy cores; a flow that is really stuck fails instead of hanging.
WAIT_S = 60
FEW = "few"
FEW_IMAGES = 40
KEYS = "viewer-key,other-key"


def _browser() -> tuple[str, str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="session")
def viewer_models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``shapes`` and the 1-channel 8×8 test models, and a data set of a few generated images
    (``few``) that exemplar flows mine in a moment."""
    root = tmp_path_factory.mktemp("viewer")
    folder = write_image_folder(root / "few", n=FEW_IMAGES)
    models_file = root / "models.toml"
    models_file.write_text(
        f'{MODELS_TOML}\n[datasets.{FEW}]\npath = "{folder}"\ndescription = "generated shapes"\n',
        encoding="utf-8",
    )
    return models_file


def _viewer_settings(models_file: Path, **overrides: object) -> Settings:
    """Previews often, so a short job shows one; a low synchronous limit on attributions
    (integrated gradients' default 64 steps are over it), so the page's fallback to a job runs."""
    return make_settings(
        models_file, job_preview_interval=0.2, attribution_max_pixels=32 * 64 * 64, **overrides
    )


@pytest.fixture(scope="session")
def viewer_app(viewer_models_file: Path) -> FastAPI:
    return create_app(_viewer_settings(viewer_models_file))


@pytest.fixture(scope="session")
def keyed_url(viewer_models_file: Path) -> Iterator[str]:
    """The same service with API keys: every call needs one, and jobs belong to their key."""
    with serve(create_app(_viewer_settings(viewer_models_file, api_keys=KEYS))) as url:
        yield url


@pytest.fixture(scope="session")
def viewer_url(viewer_app: FastAPI) -> Iterator[str]:
    with serve(viewer_app) as url:
        yield url


@pytest.fixture(scope="session")
def http_client(viewer_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=viewer_url, timeout=WAIT_S, limits=KEEP_ALIVE) as client:
        yield client


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    found = _browser()
    if found is None:
        message = "chromium and chromedriver are not installed (scripts/ensure-chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    binary, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    # Every request the page makes is logged, so a test can check that none leaves the host.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser with its request log emptied and local storage cleared after the test."""
    browser.get_log("performance")
    yield browser
    browser.execute_script("window.localStorage && localStorage.clear()")


def wait(driver: WebDriver, condition, message: str):  # type: ignore[no-untyped-def]
    """Wait until ``condition(driver)`` is truthy; its value."""
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message)


def choose(page: WebDriver, choices: dict[str, str]) -> None:
    """In each menu (a ``<select>``, by its id), select the option of the value given, in
    the order given."""
    for menu, value in choices.items():
        Select(page.find_element(By.ID, menu)).select_by_value(value)


def hover(page: WebDriver, img: WebElement, x: float, y: float) -> str:
    """Move the mouse to ``(x, y)`` in ``img``'s natural pixels; the tooltip's text."""
    scale = img.size["width"] / page.execute_script("return arguments[0].naturalWidth", img)
    ActionChains(page).move_to_element_with_offset(
        img, int(x * scale - img.size["width"] / 2), int(y * scale - img.size["height"] / 2)
    ).perform()
    tip = wait(
        page,
        lambda d: (
            d.find_element(By.ID, "tooltip").is_displayed() and d.find_element(By.ID, "tooltip")
        ),
        "no tooltip on hover",
    )
    return str(tip.text)


def picked_caption(page: WebDriver) -> str:
    """Once a clicked exemplar is shown whole beside the grids, its caption."""
    return str(
        wait(
            page,
            lambda d: (
                d.find_element(By.ID, "ex-picked").is_displayed()
                and d.find_element(By.ID, "ex-picked-caption").text
            ),
            "the clicked image was not shown",
        )
    )

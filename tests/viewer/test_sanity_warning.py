"""The viewer warns about a method that failed its sanity check on the model's weights: the
check runs as a real job on planted nets (``blind``: saliency no weight can change, fails;
``linear``: saliency is its weights, passes), then the page explains with each."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from service.main import create_app
from tests.api.conftest import make_settings, serve
from tests.jobs.client import wait_job
from tests.jobs.sanity_nets import planted_models
from tests.viewer.conftest import WAIT_S, wait
from tests.viewer.test_viewer import error_text


@pytest.fixture(scope="module")
def checked_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service with the planted nets, whose saliency has been checked on each."""
    root = tmp_path_factory.mktemp("sanity-viewer")
    models_file = root / "models.toml"
    models_file.write_text(planted_models(root / "weights"), encoding="utf-8")
    with serve(create_app(make_settings(Path(models_file)))) as url:
        with httpx.Client(base_url=url, timeout=WAIT_S) as http:
            image = base64.b64encode(http.get("/v1/samples/star").content).decode()
            for model in ("blind", "linear"):
                body = {"methods": ["saliency"], "images": [image]}
                job = http.post(f"/v1/models/{model}/sanity-checks", json=body).json()
                assert wait_job(http, job["id"], timeout=WAIT_S)["status"] == "succeeded"
        yield url


def explain_saliency(page: WebDriver, url: str, model: str) -> None:
    page.get(f"{url}/?model={model}")
    wait(
        page,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "home",
        "the viewer did not finish loading",
    )
    Select(page.find_element(By.ID, "sample")).select_by_value("star")
    Select(page.find_element(By.ID, "a-method")).select_by_value("saliency")
    page.find_element(By.ID, "a-explain").click()
    wait(page, lambda d: d.find_element(By.ID, "a-result").is_displayed(), "no attribution")


def test_a_method_that_failed_its_sanity_check_is_shown_with_a_warning(
    page: WebDriver, checked_url: str
) -> None:
    explain_saliency(page, checked_url, "blind")
    warning = page.find_element(By.ID, "a-sanity")
    assert warning.is_displayed(), error_text(page)
    assert warning.text.startswith("⚠ saliency failed its sanity check on this model's weights")
    explain_saliency(page, checked_url, "linear")  # passed: no warning
    assert not page.find_element(By.ID, "a-sanity").is_displayed()
    assert not error_text(page)

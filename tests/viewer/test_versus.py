"""A unit's pattern beside its top dataset image, and a layer page's earlier dissections, in a
real headless Chromium. Planted: the ``tiny`` model's channel 0 is the grey level, so over a
data set with a white image no pattern (a sigmoid, below 1) reaches the top image, and over one
of mid greys every well optimized pattern beats them all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from service.main import create_app
from tests.api.conftest import KEEP_ALIVE, MODELS_TOML, make_settings, serve
from tests.viewer.conftest import WAIT_S, wait
from tests.viewer.test_viewer import error_text

WITH_WHITE = "greys"  # levels 0 to 255: white is the top image of channel 0
MIDS = "mids"  # levels 64 to 192: any pattern near white beats them all
KEY, OTHER = "versus-key", "versus-other"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tiny`` and friends, two data sets of flat grey 16×16 images (ImageFolder labels
    ``dark`` and ``light``), and two API keys."""
    root = tmp_path_factory.mktemp("versus")
    for name, levels in ((WITH_WHITE, range(0, 256, 51)), (MIDS, range(64, 193, 32))):
        for level in levels:
            folder = root / name / ("dark" if level < 128 else "light")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("L", (16, 16), level).save(folder / f"{level:03d}.png")
    models = root / "models.toml"
    datasets = "".join(f'\n[datasets.{n}]\npath = "{root / n}"\n' for n in (WITH_WHITE, MIDS))
    models.write_text(MODELS_TOML + datasets, encoding="utf-8")
    with serve(create_app(make_settings(models, api_keys=f"{KEY},{OTHER}"))) as url:
        yield url


@pytest.fixture(scope="module")
def http(served: str) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": KEY}
    with httpx.Client(base_url=served, timeout=WAIT_S, limits=KEEP_ALIVE, headers=headers) as c:
        yield c


def _finished(http: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 202), response.text
    job_id = response.json()["id"]
    for _ in range(int(WAIT_S / 0.2)):
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job["error"]
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def _open(page: WebDriver, url: str, path: str) -> None:
    """Open ``path`` with the API key in the page's storage; wait until it has loaded."""
    page.get(url + "/static/viewer/viewer.css")  # the origin, to set its storage
    page.execute_script(f"localStorage.setItem('cnnviz-api-key', '{KEY}')")
    page.get(url + path)
    body = page.find_element(By.TAG_NAME, "body")
    wait(page, lambda d: body.get_attribute("data-ready"), f"{path} did not load")


def _figures(page: WebDriver) -> dict[str, str]:
    return {key: page.find_element(By.ID, f"versus-{key}").text for key in ("ratio", "rank")}


def test_a_unit_page_sets_its_pattern_beside_the_top_image_and_warns(
    page: WebDriver, served: str, http: httpx.Client
) -> None:
    _open(page, served, f"/units/tiny/relu/0?dataset={WITH_WHITE}")
    body = page.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-ready") == "unit", error_text(page)
    assert body.get_attribute("data-versus") == "weaker", error_text(page)
    # The same comparison through the API: the page's mined job, and its pattern (reused).
    mined = http.get("/v1/jobs", params={"kind": "exemplar", "model": "tiny"}).json()["jobs"][0]
    request = {"layer": "relu", "channels": [0], "steps": 256, "seed": 0}
    answer = http.post(
        "/v1/models/tiny/optimizations", json={**request, "exemplars_job": mined["id"]}
    )
    assert answer.headers.get("Cnnviz-Reused") == "true"  # the very job the page ran
    seen = answer.json()["result"]["units"][0]["vs_dataset"]
    # Planted: the white image tops channel 0 with 1.0; a pattern below it ranks second of six.
    assert (seen["top_image"], seen["top_score"], seen["rank"]) == ("light/255.png", 1.0, 2)
    assert 204 / 255 < seen["ratio"] < 1  # above the next level, below white
    figures = _figures(page)
    assert figures["ratio"].startswith(f"{seen['ratio']:.2f}× (0.") and figures["ratio"].endswith(
        " ÷ 1.00)"
    ), figures
    assert figures["rank"] == "2 of 6 images"
    warning = page.find_element(By.ID, "versus-warning")
    assert warning.is_displayed() and "1 real image(s)" in warning.text
    top = page.find_element(By.ID, "versus-top")
    wait(page, lambda d: d.execute_script("return arguments[0].naturalWidth", top) == 16, "top")
    assert top.get_attribute("title") == "light/255.png"
    assert page.find_element(By.ID, "unit-pattern").is_displayed()


def test_a_pattern_stronger_than_the_data_has_no_warning(
    page: WebDriver, served: str, http: httpx.Client
) -> None:
    body = {"dataset": MIDS, "layers": ["relu"], "k": 3}
    mined = _finished(http, http.post("/v1/models/tiny/exemplars", json=body))
    _open(page, served, f"/units/tiny/relu/0?exemplars={mined['id']}")
    assert page.find_element(By.TAG_NAME, "body").get_attribute("data-versus") == "stronger"
    assert not page.find_element(By.ID, "versus-warning").is_displayed()
    assert _figures(page)["rank"] == "1 of 5 images"
    # A job of another layer is said in the panel; the pattern is made without it.
    other = _finished(
        http, http.post("/v1/models/tiny/exemplars", json={**body, "layers": ["conv"]})
    )
    _open(page, served, f"/units/tiny/relu/0?exemplars={other['id']}")
    assert "did not score layer 'relu'" in page.find_element(By.ID, "versus-hint").text
    assert not page.find_element(By.ID, "versus-figures").is_displayed()
    assert "→" in page.find_element(By.ID, "unit-pattern-status").text


def test_a_layer_page_offers_the_callers_dissections_of_that_layer(
    page: WebDriver, served: str, http: httpx.Client
) -> None:
    body = {"dataset": MIDS, "method": "labels", "k": 4}
    mine = _finished(
        http, http.post("/v1/models/tiny/dissections", json={**body, "layers": ["relu"]})
    )
    _finished(http, http.post("/v1/models/tiny/dissections", json={**body, "layers": ["conv"]}))
    theirs = http.post(
        "/v1/models/tiny/dissections",
        json={**body, "layers": ["relu"], "k": 5},
        headers={"X-API-Key": OTHER},
    )
    assert theirs.status_code == 202
    _open(page, served, "/layers/tiny/relu")
    assert page.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "start"
    items = page.find_elements(By.CSS_SELECTOR, "#dissections li")
    assert [i.get_attribute("data-job") for i in items] == [mine["id"]]  # not conv, not others'
    assert items[0].text.startswith(f"{MIDS}, labels — succeeded")
    assert page.find_element(By.ID, "dissect").is_displayed()  # and a new one can be started
    items[0].find_element(By.TAG_NAME, "a").click()
    body_el = page.find_element(By.TAG_NAME, "body")
    wait(page, lambda d: body_el.get_attribute("data-ready") == "layer", "the dissection")
    assert len(page.find_elements(By.CSS_SELECTOR, "#units tr")) == 3
    # A layer nobody dissected: none yet, and the form.
    _open(page, served, "/layers/caffe/conv1_1")
    assert page.find_element(By.ID, "earlier-none").is_displayed()

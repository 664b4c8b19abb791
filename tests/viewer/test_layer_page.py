"""A dissected layer's page in a real headless Chromium: started from its form, then read."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import httpx
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.viewer.conftest import FEW, FEW_IMAGES, wait
from tests.viewer.test_viewer import error_text


def settled(page: WebDriver) -> str:
    body = page.find_element(By.TAG_NAME, "body")
    wait(page, lambda d: body.get_attribute("data-ready"), "the layer page did not load")
    return str(body.get_attribute("data-ready"))


def test_a_layer_page_starts_a_dissection_and_lists_its_units_by_score(
    page: WebDriver, viewer_url: str, http_client: httpx.Client
) -> None:
    page.get(viewer_url + "/layers/shapes/fc")
    assert settled(page) == "start", error_text(page)
    Select(page.find_element(By.ID, "dataset")).select_by_value(FEW)
    Select(page.find_element(By.ID, "method")).select_by_value("labels")
    page.find_element(By.ID, "mis").click()
    page.execute_script("document.body.dataset.ready = ''")
    page.find_element(By.ID, "dissect").click()
    body = page.find_element(By.TAG_NAME, "body")
    wait(page, lambda d: body.get_attribute("data-ready") in ("layer", "failed"), "no result")
    assert body.get_attribute("data-ready") == "layer", error_text(page)

    job_id = parse_qs(urlsplit(page.current_url).query)["job"][0]
    result = http_client.get(f"/v1/jobs/{job_id}").json()["result"]
    assert result["images"] == FEW_IMAGES and result["method"] == "labels"
    units = sorted(result["layers"][0]["units"], key=lambda u: (-u["score"], u["channel"]))
    rows = page.find_elements(By.CSS_SELECTOR, "#units tr")
    assert [int(r.get_attribute("data-channel")) for r in rows] == [u["channel"] for u in units]
    first = rows[0].find_elements(By.TAG_NAME, "td")
    assert first[1].text == units[0]["label"]
    assert first[2].text == f"{units[0]['score']:.3f}"
    assert first[3].text == f"{units[0]['mis']:.3f}"
    assert "MIS by shapes flatten" in page.find_element(By.ID, "summary").text
    link = first[0].find_element(By.TAG_NAME, "a").get_attribute("href")
    assert link.endswith(f"/units/shapes/fc/{units[0]['channel']}?dissection={job_id}")
    strip = rows[0].find_elements(By.CSS_SELECTOR, "img.thumb")
    assert len(strip) == 8
    wait(
        page,
        lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) == 64 for i in strip),
        "the top images did not load",
    )
    assert [i.get_attribute("alt") for i in strip] == [e["image"] for e in units[0]["top"][:8]]

    # The same page opened on the job's address shows the same.
    page.get(page.current_url)
    assert settled(page) == "layer", error_text(page)
    assert len(page.find_elements(By.CSS_SELECTOR, "#units tr")) == 12

    # The unit's page shows its label, score and alternatives, and its dissection picture.
    page.get(link)
    body = page.find_element(By.TAG_NAME, "body")
    wait(page, lambda d: body.get_attribute("data-dissection") == "shown", "no dissection shown")
    label = page.find_element(By.ID, "unit-dissection-label").text
    first_unit = units[0]
    assert label.startswith(
        f"{first_unit['label']}: precision@k {first_unit['score']:.3f}, "
        f"MIS {first_unit['mis']:.2f} ({FEW})"
    )
    image = page.find_element(By.ID, "unit-dissection-image")
    picture = http_client.get(
        f"/v1/jobs/{job_id}/dissections/fc/{units[0]['channel']}", headers={"Accept": "image/png"}
    )
    width = Image.open(io.BytesIO(picture.content)).size[0]
    assert page.execute_script("return arguments[0].naturalWidth", image) == width


def test_a_layer_page_names_a_job_that_is_not_a_dissection(
    page: WebDriver, viewer_url: str
) -> None:
    page.get(viewer_url + "/layers/shapes/fc?job=nope")
    assert settled(page) == "failed"
    assert "unknown_job" in error_text(page)

"""The viewer in a real headless Chromium: each flow ends in what the page shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.jobs.procs import wait_for
from tests.viewer.conftest import hover, wait


def ready(page: WebDriver, url: str, expected: str) -> None:
    """Open ``url`` and wait until the page says it has loaded as ``expected``."""
    page.get(url)
    wait(
        page,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
        f"{url} did not finish loading",
    )
    body = page.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-ready") == expected, error_text(page)


def open_home(page: WebDriver, url: str) -> None:
    ready(page, url + "/", "home")


def pick_layers(page: WebDriver, names: list[str]) -> None:
    for box in page.find_elements(By.CSS_SELECTOR, "#layers input[type=checkbox]"):
        if (box.get_attribute("value") in names) != box.is_selected():
            box.click()


def grids_shown(page: WebDriver) -> list:
    return [
        fig
        for fig in page.find_elements(By.CSS_SELECTOR, "#grids figure.grid")
        if page.execute_script("return arguments[0].querySelector('img').naturalWidth", fig)
    ]


def error_text(page: WebDriver) -> str:
    box = page.find_element(By.ID, "error")
    return box.text if box.is_displayed() else ""


def requested_urls(page: WebDriver) -> tuple[list[str], list[str]]:
    """The URLs the browser requested since the log was last read, and those that the page's
    Content-Security-Policy stopped before they left the browser."""
    urls: dict[str, str] = {}
    blocked = []
    for entry in page.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            blocked.append(params["requestId"])
    return [u for r, u in urls.items() if r not in blocked], [urls[r] for r in blocked if r in urls]


def test_feature_maps_of_a_sample_with_hover_stats(page: WebDriver, viewer_url: str) -> None:
    open_home(page, viewer_url)
    Select(page.find_element(By.ID, "sample")).select_by_value("star")
    pick_layers(page, ["block1.conv", "block2.relu"])
    page.find_element(By.ID, "show").click()
    figures = wait(
        page, lambda d: len(grids_shown(d)) == 2 and grids_shown(d), "two grids did not appear"
    )
    captions = [f.find_element(By.TAG_NAME, "figcaption").text for f in figures]
    assert captions[0].startswith("block1.conv [16, 64, 64] · 16 channels · star"), captions
    assert captions[1].startswith("block2.relu [32, 32, 32] · 32 channels · star"), captions
    # Hover the second tile of the first row of block1.conv: channel 1, with its statistics.
    img = figures[0].find_element(By.TAG_NAME, "img")
    tile, pad = 64 * 2, 1  # scale 2 in the page's default settings
    tip = hover(page, img, pad + tile + pad + tile // 2, pad + tile // 2)
    assert tip.startswith("block1.conv · channel 1\nmin "), tip
    assert " mean " in tip
    assert not error_text(page)


def test_feature_maps_of_an_uploaded_image(
    page: WebDriver, viewer_url: str, tmp_path: Path
) -> None:
    picture = tmp_path / "wide.png"
    # Not square and not the model's size: the service crops and resizes it.
    Image.new("RGB", (120, 48), (200, 40, 40)).save(picture)
    open_home(page, viewer_url)
    page.find_element(By.ID, "upload").send_keys(str(picture))
    pick_layers(page, ["block3.conv"])
    page.find_element(By.ID, "show").click()
    [figure] = wait(
        page,
        lambda d: len(grids_shown(d)) == 1 and grids_shown(d),
        "the grid of the upload did not appear",
    )
    caption = figure.find_element(By.TAG_NAME, "figcaption").text
    assert caption.startswith("block3.conv [64, 16, 16] · 64 channels · uploaded image"), caption


def test_another_model_and_a_bad_upload_show_a_clear_error(
    page: WebDriver, viewer_url: str, tmp_path: Path
) -> None:
    open_home(page, viewer_url)
    Select(page.find_element(By.ID, "model")).select_by_value("tiny")
    wait(
        page,
        lambda d: "8×8, 1 channel" in d.find_element(By.ID, "model-info").text,
        "the tiny model's layers did not load",
    )
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text")
    page.find_element(By.ID, "upload").send_keys(str(bad))
    page.find_element(By.ID, "show").click()
    message = wait(page, lambda d: error_text(d), "no error was shown")
    assert message.startswith("invalid_image:"), message


def _event_streams(http_client: httpx.Client) -> float:
    """Event streams the service has answered with 200 (from its metrics)."""
    metrics = http_client.get("/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "http_requests_total"
        and s.labels.get("handler") == "/v1/jobs/{job_id}/events"
        and s.labels.get("status") == "200"
    )


def test_an_optimization_shows_progress_a_live_preview_and_the_result(
    page: WebDriver, viewer_url: str, http_client: httpx.Client
) -> None:
    streams = _event_streams(http_client)
    open_home(page, viewer_url)
    Select(page.find_element(By.ID, "opt-layer")).select_by_value("block3.relu")
    channels = page.find_element(By.ID, "opt-channels")
    channels.clear()
    channels.send_keys("0-3")
    steps = page.find_element(By.ID, "opt-steps")
    steps.clear()
    steps.send_keys("48")
    seed = page.find_element(By.ID, "opt-seed")
    seed.clear()
    seed.send_keys("11")  # a fresh request, not one served from an earlier job
    page.find_element(By.ID, "optimize").click()
    wait(
        page,
        lambda d: d.find_element(By.ID, "job-status").text in ("queued", "running"),
        "the job did not start",
    )
    preview = "return document.getElementById('job-preview').naturalWidth"
    wait(
        page,
        lambda d: d.execute_script(preview),
        "no live preview was shown",
    )
    wait(
        page,
        lambda d: d.find_element(By.ID, "job-status").text == "succeeded",
        "the job did not succeed",
    )
    assert page.find_element(By.ID, "job-step").text == "step 48 / 48"
    result = page.find_element(By.ID, "job-result")
    assert page.execute_script("return arguments[0].naturalWidth", result) > 0
    caption = page.find_element(By.ID, "job-result-caption").text
    assert caption.startswith("result: block3.relu, 4 image(s), 64 px, seed 11"), caption
    links = [a.get_attribute("href") for a in page.find_elements(By.CSS_SELECTOR, "#job-units a")]
    assert [urlsplit(h).path for h in links] == [f"/units/shapes/block3.relu/{c}" for c in range(4)]
    # The page followed the job by its event stream, not by polling.
    wait_for(lambda: _event_streams(http_client) == streams + 1, 10, "the job's event stream")


def test_a_unit_has_its_own_page(page: WebDriver, viewer_url: str) -> None:
    ready(page, viewer_url + "/units/shapes/block2.relu/3", "unit")
    assert page.find_element(By.ID, "unit-title").text == "shapes · block2.relu · channel 3"
    samples = page.find_elements(By.CSS_SELECTOR, "#unit-samples li")
    assert len(samples) == 12
    means = [float(li.text.rpartition("mean ")[2]) for li in samples]
    assert means == sorted(means, reverse=True)
    pattern = page.find_element(By.ID, "unit-pattern")
    assert page.execute_script("return arguments[0].naturalWidth", pattern) == 64
    assert "→" in page.find_element(By.ID, "unit-pattern-status").text
    assert not error_text(page)


def test_a_unit_page_of_a_channel_out_of_range_says_so(page: WebDriver, viewer_url: str) -> None:
    page.get(viewer_url + "/units/shapes/block1.conv/99")
    message = wait(page, lambda d: error_text(d), "no error was shown")
    assert message == "channel 99 is out of range: block1.conv has 16 channels"


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/", "#grids"),
        ("/docs", ".swagger-ui .info .title"),
        ("/redoc", "redoc-wrap, .redoc-wrap, h1"),
    ],
)
def test_no_page_loads_anything_from_another_host(
    page: WebDriver, viewer_url: str, path: str, rendered: str
) -> None:
    page.get(viewer_url + path)
    element = wait(
        page, lambda d: d.find_elements(By.CSS_SELECTOR, rendered), f"{path} did not render"
    )[0]
    if path != "/":
        assert "cnnviz" in element.text
    sent, blocked = requested_urls(page)
    assert sent, "the request log is empty"
    origin = viewer_url.rstrip("/")
    foreign = [u for u in sent if not u.startswith((origin + "/", "data:", "blob:"))]
    assert not foreign, foreign
    # ReDoc's footer links a logo on its vendor's host; the page's policy keeps it local.
    assert all(urlsplit(u).hostname == "cdn.redoc.ly" for u in blocked), blocked


def test_the_pages_and_their_own_assets_name_no_other_host(http_client: httpx.Client) -> None:
    """The HTML of every page, and the viewer's own script and style, link only this host."""
    for path in (
        "/",
        "/units/shapes/block1.conv/0",
        "/docs",
        "/redoc",
        "/docs/oauth2-redirect",
        "/static/viewer/api.js",
        "/static/viewer/panels.js",
        "/static/viewer/viewer.js",
        "/static/viewer/viewer.css",
    ):
        response = http_client.get(path)
        assert response.status_code == 200, path
        hosts = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", response.text)
        assert not hosts, (path, hosts)
        if path.startswith(("/", "/docs", "/redoc")) and "html" in response.headers["content-type"]:
            assert "default-src 'self'" in response.headers["content-security-policy"]


def test_the_home_page_lists_my_recent_jobs(page: WebDriver, viewer_url: str) -> None:
    body = {"layer": "block2.relu", "channels": [1], "steps": 2, "seed": 4242}
    with httpx.Client(base_url=viewer_url, timeout=30) as client:
        created = client.post("/v1/models/shapes/optimizations", json=body).json()
    open_home(page, viewer_url)
    rows = wait(
        page,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr"),
        "no recent jobs listed",
    )
    first = rows[0].find_elements(By.TAG_NAME, "td")
    assert first[0].text == created["id"][:8] and first[1].text == "optimization"
    link = first[0].find_element(By.TAG_NAME, "a").get_attribute("href")
    assert urlsplit(link).path == f"/v1/jobs/{created['id']}"
    assert not error_text(page)

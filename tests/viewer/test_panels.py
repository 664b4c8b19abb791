"""The viewer's panels in a real headless Chromium: filter weights, attributions, and a unit's
dataset exemplars and filter. Each flow ends in what the page shows, checked against the API."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.viewer.conftest import FEW, FEW_IMAGES, choose, hover, picked_caption, wait
from tests.viewer.test_viewer import error_text, open_home, ready


def natural_width(page: WebDriver, img: WebElement) -> int:
    return int(page.execute_script("return arguments[0].naturalWidth", img))


def query(page: WebDriver) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.current_url).query)


def hover_tile(page: WebDriver, img: WebElement, grid: dict, i: int) -> str:
    """Move the mouse to the middle of tile ``i`` of a grid image; the tooltip's text."""
    pad, (th, tw), columns = grid["padding"], grid["tile"], grid["columns"]
    row, col = divmod(i, columns)
    return hover(page, img, pad + col * (tw + pad) + tw / 2, pad + row * (th + pad) + th / 2)


def test_filter_weights_with_hover_and_a_shareable_address(
    page: WebDriver, viewer_url: str, http_client: httpx.Client
) -> None:
    open_home(page, viewer_url)
    choose(page, {"w-layer": "block3.conv", "w-mode": "slices"})
    page.find_element(By.ID, "w-top-k").send_keys("4")
    page.find_element(By.ID, "w-show").click()
    caption = wait(
        page,
        lambda d: (
            d.find_element(By.ID, "w-figure").is_displayed()
            and d.find_element(By.ID, "w-caption").text
        ),
        "the weights did not appear",
    )
    expected = http_client.get(
        "/v1/models/shapes/layers/block3.conv/weights", params={"mode": "slices", "top_k": 4}
    ).json()
    shown = "block3.conv · Conv2d [64, 32, 3, 3] · slices · 4 filter(s), 16 tile(s)"
    assert caption.startswith(shown), caption
    img = page.find_element(By.ID, "w-image")
    assert natural_width(page, img) == (
        expected["grid"]["padding"]
        + expected["grid"]["columns"] * (expected["grid"]["tile"][1] + expected["grid"]["padding"])
    )
    # The sixth tile: the second slice of the second-strongest filter.
    stats = expected["stats"][5]
    tip = hover_tile(page, img, expected["grid"], 5)
    assert tip.startswith(
        f"block3.conv · filter {stats['filter']} · input channel {stats['input_channel']}\nmin "
    ), tip
    # The address now names what is shown: opened again, it shows the same grid by itself.
    assert query(page) == {
        "model": ["shapes"],
        "weights": ["block3.conv"],
        "wmode": ["slices"],
        "wtop": ["4"],
    }
    ready(page, page.current_url, "home")
    assert page.find_element(By.ID, "w-figure").is_displayed()
    assert page.find_element(By.ID, "w-caption").text == caption
    assert not error_text(page)


def test_attributions_show_the_top_predictions_and_explain_the_one_clicked(
    page: WebDriver, viewer_url: str, http_client: httpx.Client
) -> None:
    open_home(page, viewer_url)
    choose(page, {"sample": "star", "a-method": "gradcam"})
    assert (
        Select(page.find_element(By.ID, "a-layer")).first_selected_option.get_attribute("value")
        == "block4.relu"
    )  # the last spatial layer, where Grad-CAM is usually asked
    page.find_element(By.ID, "a-explain").click()

    def rows(d: WebDriver) -> list[WebElement]:
        return d.find_elements(By.CSS_SELECTOR, "#a-predictions tbody tr")

    wait(page, lambda d: d.find_element(By.ID, "a-result").is_displayed(), "no attribution")
    api = http_client.post(
        "/v1/models/shapes/attributions",
        json={"sample": "star", "method": "gradcam", "layer": "block4.relu"},
    ).json()
    labels = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows(page)]
    assert labels == [p["label"] for p in api["predictions"]]
    top = api["predictions"][0]
    caption = page.find_element(By.ID, "a-caption").text
    assert caption.startswith(
        f"gradcam at block4.relu for '{top['label']}' (class {top['index']}) on star: "
    ), caption
    for name in ("a-overlay", "a-map"):
        assert natural_width(page, page.find_element(By.ID, name)) == 64  # the input's size

    # Click the second prediction: its map, and the row marked.
    second = api["predictions"][1]
    rows(page)[1].click()
    wait(
        page,
        lambda d: (
            f"for '{second['label']}' (class {second['index']})"
            in d.find_element(By.ID, "a-caption").text
        ),
        "the second prediction was not explained",
    )
    marked = [
        r.get_attribute("data-index") for r in rows(page) if "explained" in r.get_attribute("class")
    ]
    assert marked == [str(second["index"])]
    assert query(page) == {
        "model": ["shapes"],
        "sample": ["star"],
        "attr": ["gradcam"],
        "alayer": ["block4.relu"],
        "target": [str(second["index"])],
    }

    # The address opened again shows that attribution by itself; another method needs no layer.
    ready(page, page.current_url, "home")
    assert f"for '{second['label']}'" in page.find_element(By.ID, "a-caption").text
    choose(page, {"a-method": "integrated_gradients"})
    assert not page.find_element(By.ID, "a-layer").is_displayed()
    page.find_element(By.ID, "a-explain").click()
    caption = wait(
        page,
        lambda d: (
            d.find_element(By.ID, "a-caption").text.startswith("integrated_gradients for")
            and d.find_element(By.ID, "a-caption").text
        ),
        "integrated gradients were not shown",
    )
    assert "signed: blue is evidence against" in caption and "completeness error" in caption
    # 64 steps are over the test service's synchronous limit of 32 passes: queued and followed.
    assert caption.endswith("(run as a job: over the service's synchronous limit)"), caption
    assert not error_text(page)


def test_a_unit_page_mines_exemplars_and_draws_them_in_each_mode(
    page: WebDriver, viewer_url: str, http_client: httpx.Client
) -> None:
    ready(page, viewer_url + "/units/shapes/block3.relu/2", "unit")
    # The unit's filter: block3.relu is the output of block3.conv, filter 2.
    assert page.find_element(By.ID, "unit-weights-caption").text.startswith(
        "filter 2 of block3.conv (Conv2d [64, 32, 3, 3]) · slices, its 8 strongest"
    )
    choose(page, {"ex-dataset": FEW})
    page.find_element(By.ID, "ex-mine").click()
    body = page.find_element(By.TAG_NAME, "body")
    wait(
        page,
        lambda d: body.get_attribute("data-exemplars") in ("succeeded", "failed", "cancelled"),
        "the exemplars job did not end",
    )
    status = page.find_element(By.ID, "ex-status").text
    assert body.get_attribute("data-exemplars") == "succeeded", status
    expected = f"{FEW_IMAGES} images of {FEW} scored by their mean activation in "
    assert status.startswith(expected), status
    assert "1 unreadable file(s) skipped" in status

    # What the page shows is what the API answers for the same request (reused, not rerun).
    job = http_client.post(
        "/v1/models/shapes/exemplars",
        json={"dataset": FEW, "layers": ["block3.relu"], "k": 8, "pool": "mean", "bottom": True},
    )
    assert job.status_code == 200 and job.headers["Cnnviz-Reused"] == "true"
    grids = f"/v1/jobs/{job.json()['id']}/exemplars/block3.relu/2"

    def shown(which: str) -> tuple[list[str], str | None]:
        img = page.find_element(By.ID, f"ex-{which}")
        return page.execute_script("return JSON.parse(arguments[0].dataset.images)", img), (
            img.get_attribute("data-mode")
        )

    for which in ("top", "bottom"):
        api = http_client.get(grids, params={"which": which}).json()
        assert shown(which) == (api["images"], "full")
        assert page.find_element(By.ID, f"ex-{which}").get_attribute("src").endswith(api["png"])
        caption = page.find_element(By.ID, f"ex-{which}-caption").text
        assert caption.startswith(f"{which} 8 of {FEW_IMAGES} · full · scores "), caption

    # Crop to the receptive field: the API's crops, the same images, and the address says so.
    page.find_element(By.CSS_SELECTOR, "input[name=ex-mode][value=crop]").click()
    wait(page, lambda d: shown("bottom")[1] == "crop", "the crops were not drawn")
    crop = http_client.get(grids, params={"mode": "crop"}).json()
    assert shown("top") == (crop["images"], "crop")
    assert page.find_element(By.ID, "ex-top").get_attribute("src").endswith(crop["png"])
    assert crop["png"] != http_client.get(grids).json()["png"]
    assert query(page) == {"dataset": [FEW], "mode": ["crop"]}

    # Hover the second top image: its id and score; click it: the whole image beside the grids.
    img = page.find_element(By.ID, "ex-top")
    columns, (th, tw) = crop["columns"], crop["tile_size"]
    padding = (natural_width(page, img) - columns * tw) / (columns + 1)
    layout = {"columns": columns, "tile": (th, tw), "padding": padding}
    assert hover_tile(page, img, layout, 1).startswith(f"{crop['images'][1]}\nscore ")
    ActionChains(page).click().perform()
    picked = picked_caption(page)
    assert picked.startswith(f"{crop['images'][1]} · top 2, score "), picked
    assert natural_width(page, page.find_element(By.ID, "ex-picked-image")) == 64

    # Shared, the address shows the same exemplars at once, in the same mode.
    ready(page, page.current_url, "unit")
    assert page.find_element(By.TAG_NAME, "body").get_attribute("data-exemplars") == "succeeded"
    assert shown("top") == (crop["images"], "crop")
    assert not error_text(page)


def test_a_unit_page_of_a_first_layer_filter_draws_it_in_colour(
    page: WebDriver, viewer_url: str
) -> None:
    ready(page, viewer_url + "/units/shapes/block1.conv/5", "unit")
    caption = page.find_element(By.ID, "unit-weights-caption").text
    assert caption == "filter 5 of block1.conv (Conv2d [16, 3, 3, 3]) · rgb"
    assert page.find_element(By.ID, "unit-weights-status").text == ""
    img = page.find_element(By.ID, "unit-weights-image")
    assert natural_width(page, img) > 3
    # No data set named in the address: nothing mined until asked.
    assert not page.find_element(By.ID, "ex-top-figure").is_displayed()
    assert page.find_element(By.ID, "ex-dataset").get_attribute("value") == "shapes"


def test_with_api_keys_every_panel_sends_the_pages_key(page: WebDriver, keyed_url: str) -> None:
    ready(page, keyed_url + "/", "error")  # no key yet: the service answers 401
    assert error_text(page).startswith("unauthorized:"), error_text(page)
    page.execute_script("localStorage.setItem('cnnviz-api-key', 'viewer-key')")
    # A shared unit address: every call needs the key (datasets, weights, the exemplars job,
    # following it, its grids), so the page shows them only if it sends the key with each.
    ready(page, keyed_url + f"/units/shapes/block2.relu/4?dataset={FEW}&mode=mask", "unit")
    body = page.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-exemplars") == "succeeded", error_text(page)
    top = page.find_element(By.ID, "ex-top")
    assert top.get_attribute("data-mode") == "mask" and natural_width(page, top) > 0
    assert page.find_element(By.ID, "unit-weights-caption").text.startswith(
        "filter 4 of block2.conv"
    )
    images = page.execute_script("return JSON.parse(arguments[0].dataset.images)", top)
    # A dataset image, fetched with the key, whole beside the grids.
    ActionChains(page).move_to_element_with_offset(
        top, -top.size["width"] // 2 + 8, 0
    ).click().perform()
    picked = picked_caption(page)
    assert picked.startswith(f"{images[0]} · top 1, score "), picked
    assert not error_text(page)


def test_unit_pages_of_models_with_odd_inputs_and_names(page: WebDriver, viewer_url: str) -> None:
    """A 1-channel, 12×16 model with several heads mines the RGB data set; a layer named by
    a later call (``relu:1``) finds the convolution that made it."""
    ready(page, viewer_url + f"/units/heads/relu/1?dataset={FEW}", "unit")
    body = page.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-exemplars") == "succeeded", error_text(page)
    caption = page.find_element(By.ID, "ex-top-caption").text
    assert caption.startswith(f"top 8 of {FEW_IMAGES} · full"), caption
    assert page.find_element(By.ID, "unit-weights-caption").text.startswith(
        "filter 1 of conv (Conv2d [4, 1, "
    )
    ready(page, viewer_url + "/units/caffe/relu%3A1/2", "unit")
    assert page.find_element(By.ID, "unit-weights-status").text == (
        "relu:1 is the output of conv1_2: its filter 2."
    )
    assert page.find_element(By.ID, "unit-weights-caption").text.startswith(
        "filter 2 of conv1_2 (Conv2d [3, 2, "
    )
    assert not error_text(page)


def test_the_method_menu_is_the_services_list_and_scores_are_shown(
    page: WebDriver, viewer_url: str, http_client: httpx.Client
) -> None:
    open_home(page, viewer_url)
    listed = http_client.get("/v1/attribution-methods").json()["methods"]
    menu = Select(page.find_element(By.ID, "a-method"))
    assert [o.get_attribute("value") for o in menu.options] == [m["name"] for m in listed]
    assert [o.text for o in menu.options] == [m["title"] for m in listed]
    menu.select_by_value("layercam")
    assert page.find_element(By.ID, "a-layer").is_displayed()  # needs_layer, from the list
    menu.select_by_value("saliency")
    assert not page.find_element(By.ID, "a-layer").is_displayed()
    page.find_element(By.ID, "a-metrics").click()
    page.find_element(By.ID, "a-explain").click()
    caption = wait(
        page,
        lambda d: (
            "deletion AUC" in d.find_element(By.ID, "a-caption").text
            and d.find_element(By.ID, "a-caption").text
        ),
        "no faithfulness scores were shown",
    )
    assert "insertion AUC" in caption and "(random " in caption
    assert not error_text(page)

"""Take the README's screenshots of the viewer with headless Chromium, in docs/img/.

    .venv/bin/python scripts/screenshot_viewer.py

Serves the app (built-in model, jobs in-process) on a free local port. viewer.png: two
layers' feature maps of the sample triangle, a 128-step optimization of 8 channels, a hovered
tile. viewer_panels.png: block1.conv's filters and Grad-CAM of the sample star.
viewer_unit.png: the page of block3.relu channel 5, with its exemplars in the built-in shapes
data set, cropped to the receptive field, and its pattern beside its top image.
viewer_layer.png: block3.relu's layer page without a job: the dissections of the layer and the
form that starts one. ``--pages`` takes the last two alone. Needs Debian's chromium and
chromium-driver.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.main import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.api.conftest import serve  # noqa: E402


@contextmanager
def viewer(height: int) -> Iterator[tuple[webdriver.Chrome, str]]:
    """Headless Chromium, ``height`` pixels tall, and the URL of the app served for it (the
    built-in model, jobs in-process); the browser is closed after."""
    app = create_app(Settings(redis_url=None, models_file=None, job_preview_interval=0.5))
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size=1280,{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        with serve(app) as url:
            yield driver, url
    finally:
        driver.quit()


def main() -> None:
    with viewer(1480) as (driver, url):
        wait = WebDriverWait(driver, 120)
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        for box in driver.find_elements(By.CSS_SELECTOR, "#layers input"):
            if (box.get_attribute("value") in ("block1.conv", "block2.relu")) != (
                box.is_selected()
            ):
                box.click()
        driver.find_element(By.ID, "show").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grids img")) == 2)
        Select(driver.find_element(By.ID, "opt-layer")).select_by_value("block3.relu")
        driver.find_element(By.ID, "optimize").click()
        wait.until(lambda d: d.find_element(By.ID, "job-status").text == "succeeded")
        img = driver.find_elements(By.CSS_SELECTOR, "#grids img")[0]
        ActionChains(driver).move_to_element_with_offset(img, -60, -90).perform()
        wait.until(lambda d: d.find_element(By.ID, "tooltip").is_displayed())
        out = ROOT / "docs" / "img" / "viewer.png"
        driver.save_screenshot(str(out))
        print(out)

        # The weights and attribution panels, further down the same page.
        Select(driver.find_element(By.ID, "w-layer")).select_by_value("block1.conv")
        driver.find_element(By.ID, "w-show").click()
        wait.until(lambda d: d.find_element(By.ID, "w-figure").is_displayed())
        Select(driver.find_element(By.ID, "sample")).select_by_value("star")
        driver.find_element(By.ID, "a-explain").click()
        wait.until(lambda d: d.find_element(By.ID, "a-result").is_displayed())
        driver.set_window_size(1280, 1000)
        driver.execute_script("document.getElementById('weights-section').scrollIntoView()")
        out = ROOT / "docs" / "img" / "viewer_panels.png"
        driver.save_screenshot(str(out))
        print(out)

        unit_and_layer_pages(driver, wait, url)


def unit_and_layer_pages(driver: webdriver.Chrome, wait: WebDriverWait, url: str) -> None:
    """viewer_unit.png: a unit's page, its exemplars mined from the built-in data set and its
    pattern beside its top image; viewer_layer.png: a layer page without a job, listing the
    dissections of the layer and offering to start one."""
    driver.set_window_size(1280, 1000)
    driver.get(url + "/units/shapes/block3.relu/5?dataset=shapes&mode=crop")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    out = ROOT / "docs" / "img" / "viewer_unit.png"
    driver.save_screenshot(str(out))
    print(out)

    driver.get(url + "/layers/shapes/block3.relu")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    driver.find_element(By.ID, "dissect").click()  # the built-in data set, by its masks
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "layer")
    driver.get(url + "/layers/shapes/block3.relu")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    driver.set_window_size(1280, 560)
    out = ROOT / "docs" / "img" / "viewer_layer.png"
    driver.save_screenshot(str(out))
    print(out)


def only_unit_and_layer_pages() -> None:
    """The last two pictures alone (``--pages``)."""
    with viewer(1000) as (driver, url):
        unit_and_layer_pages(driver, WebDriverWait(driver, 300), url)


if __name__ == "__main__":
    only_unit_and_layer_pages() if sys.argv[1:] == ["--pages"] else main()

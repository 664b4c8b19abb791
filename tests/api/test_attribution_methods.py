"""GET /v1/attribution-methods: one list of methods, and every method in it answers over HTTP,
smoothing included where it applies."""

from __future__ import annotations

import httpx
import pytest

from cnnviz.attribution import method_names
from tests.api.test_bad_input import problem

URL = "/v1/models/shapes/attributions"


def test_the_list_is_the_registry_with_costs_for_the_model(http: httpx.Client) -> None:
    response = http.get("/v1/attribution-methods", params={"model": "shapes"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "shapes"
    methods = {m["name"]: m for m in answer["methods"]}
    assert sorted(methods) == method_names()
    assert answer["metrics"] == ["deletion", "insertion"]
    assert answer["smooth_types"] == ["smoothgrad", "smoothgrad_sq", "vargrad"]
    assert methods["integrated_gradients"]["cost"] == {
        "formula": "targets × steps",
        "default_images": 64,  # the request's default steps
    }
    assert methods["occlusion"]["cost"]["default_images"] == 15 * 15 + 1  # 8-px patches every 4
    assert methods["scorecam"]["cost"] == {"formula": "1 + channels", "default_images": None}
    assert methods["gradcam"]["needs_layer"] and methods["gradcam"]["options"] == ["layer"]
    assert methods["saliency"]["smoothable"] and not methods["occlusion"]["smoothable"]
    assert all(m["sanity"] == "unknown" for m in methods.values())
    plain = http.get("/v1/attribution-methods").json()
    assert plain["model"] is None
    assert all(m["cost"]["default_images"] is None for m in plain["methods"])
    problem(http.get("/v1/attribution-methods", params={"model": "nope"}), 404, "unknown_model")


@pytest.mark.parametrize("method", ["gradcam_plus_plus", "layercam", "scorecam"])
def test_the_cam_family_answers_over_http(http: httpx.Client, method: str) -> None:
    body = {"sample": "star", "method": method, "layer": "block3.relu"}
    response = http.post(URL, json=body)
    assert response.status_code == 200, response.text
    [item] = response.json()["attributions"]
    assert item["target"]["label"] == "star" and item["stats"]["max"] > 0


def test_smoothing_over_http(http: httpx.Client) -> None:
    smooth = {"type": "smoothgrad", "noise_samples": 4, "noise_level": 0.1, "seed": 2}
    body = {"sample": "star", "method": "saliency", "smooth": smooth}
    first, again = (http.post(URL, json=body) for _ in range(2))
    assert first.status_code == 200, first.text
    assert first.json()["attributions"] == again.json()["attributions"]  # seeded
    plain = http.post(URL, json={"sample": "star", "method": "saliency"}).json()
    assert plain["attributions"][0]["stats"] != first.json()["attributions"][0]["stats"]
    refused = {**body, "method": "occlusion"}
    assert (
        "gradient method"
        in problem(http.post(URL, json=refused), 422, "invalid_argument")["detail"]
    )
    bad = {**body, "smooth": {"type": "smoothgrad", "noise_level": 0}}
    problem(http.post(URL, json=bad), 422, "invalid_request")
    many = {**body, "method": "integrated_gradients", "smooth": {"noise_samples": 64}}
    detail = problem(http.post(URL, json=many), 422, "too_long_for_sync")["detail"]
    assert "noise_samples" in detail and "attribution-jobs" in detail


def test_scorecam_is_charged_for_its_layers_channels(http: httpx.Client) -> None:
    # 1 + 128 channels of block4.relu + 594 metric images = 723 images of 64×64, over 2.5 M.
    body = {"sample": "star", "method": "scorecam", "layer": "block4.relu"}
    body["metrics"] = ["deletion", "insertion"]
    detail = problem(http.post(URL, json=body), 422, "too_long_for_sync")["detail"]
    assert "723 images" in detail and "1 + channels" in detail

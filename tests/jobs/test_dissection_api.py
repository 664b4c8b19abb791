"""Dissection jobs over HTTP, on both transports (Celery's with a real worker, in shards)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from cnnviz.data.shapes import CLASSES
from tests.jobs.client import wait_job
from tests.jobs.datasets import SMALL, SMALL_IMAGES


def run(api: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    response = api.post(
        "/v1/models/shapes/dissections",
        json=body,
        headers={"Cache-Control": "no-cache", **(headers or {})},
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{created['id']}"
    assert created["kind"] == "dissection"
    done = wait_job(api, created["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    return done


def test_datasets_show_their_concepts(api: httpx.Client) -> None:
    listed = {d["name"]: d for d in api.get("/v1/datasets").json()["datasets"]}
    assert listed["shapes"]["concepts"] == list(CLASSES) and listed["shapes"]["has_masks"]
    assert listed[SMALL]["concepts"] == [] and not listed[SMALL]["has_masks"]
    assert len(listed[SMALL]["labels"]) == 12


def test_labels_through_the_api_and_a_units_picture(api: httpx.Client) -> None:
    body = {"dataset": SMALL, "layers": ["fc"], "k": 6}
    done = run(api, body)
    result = done["result"]
    assert done["progress"] == {**done["progress"], "step": SMALL_IMAGES + 1, "unit": "images"}
    assert (result["method"], result["images"], result["skipped"]) == ("labels", SMALL_IMAGES, 1)
    (layer,) = result["layers"]
    assert (layer["name"], layer["shape"], len(layer["units"])) == ("fc", [12], 12)
    unit = layer["units"][0]
    assert set(unit) == {
        "channel",
        "label",
        "score",
        "activation_threshold",
        "selectivity",
        "alternatives",
        "top",
        "mis",
    }
    assert unit["mis"] is None and result["mis_encoder"] is None  # not asked for
    assert unit["label"] == "circle" and unit["activation_threshold"] is None
    assert len(unit["alternatives"]) == 3 and len(unit["top"]) == 6
    # The same request with the same key is the same job.
    key = {"Idempotency-Key": "dissect-once"}
    first = api.post("/v1/models/shapes/dissections", json=body, headers=key).json()
    again = api.post("/v1/models/shapes/dissections", json=body, headers=key).json()
    assert first["id"] == again["id"]
    wait_job(api, first["id"], timeout=240)

    path = f"/v1/jobs/{done['id']}/dissections/fc/0"
    drawn = api.get(path).json()
    assert (drawn["label"], drawn["images"]) == ("circle", [e["image"] for e in unit["top"]])
    png = api.get(path, headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (6 * 64 + 7 * 2, 64 + 2 * 2)


def test_masks_through_the_api(api: httpx.Client) -> None:
    done = run(api, {"dataset": "shapes", "layers": ["fc"], "k": 4})
    result = done["result"]
    assert (result["method"], result["images"], result["skipped_masks"]) == ("masks", 2400, 0)
    (layer,) = result["layers"]
    for unit in layer["units"]:
        assert unit["label"] in CLASSES and 0.0 <= unit["score"] <= 1.0
        assert unit["activation_threshold"] is not None and unit["selectivity"] is None
    png = api.get(f"/v1/jobs/{done['id']}/dissections/fc/3", headers={"Accept": "image/png"})
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).format == "PNG"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"dataset": SMALL, "layers": ["fc"], "method": "masks"}, 422, "invalid_argument"),
        ({"dataset": "nope", "layers": ["fc"]}, 404, "unknown_dataset"),
        ({"dataset": SMALL, "layers": ["block9"]}, 422, "unknown_layer"),
        ({"dataset": SMALL, "layers": ["fc"], "quantile": 0.5}, 422, "invalid_request"),
        ({"dataset": SMALL, "layers": ["fc"] * 17}, 422, "invalid_request"),
        ({"dataset": SMALL, "layers": ["fc"], "method": "clip"}, 422, "invalid_request"),
    ],
)
def test_bad_requests_are_clear_4xx(
    api: httpx.Client, body: dict[str, Any], status: int, code: str
) -> None:
    response = api.post("/v1/models/shapes/dissections", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    if "method" in body and body["method"] == "masks":
        assert "no concept masks" in response.json()["detail"]


def test_unit_pictures_name_what_is_wrong(api: httpx.Client) -> None:
    done = run(api, {"dataset": SMALL, "layers": ["fc"], "k": 2})
    base = f"/v1/jobs/{done['id']}/dissections"
    assert api.get(f"{base}/block2.relu/0").status_code == 422
    assert "12 units (0..11)" in api.get(f"{base}/fc/12").json()["detail"]
    assert api.get("/v1/jobs/nope/dissections/fc/0").json()["code"] == "unknown_job"

"""A job's result as files, the same with both transports: PNGs with ETags, inline or linked
pictures in the JSON, gzip, and the preview of a finished job."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import safetensors.numpy
from PIL import Image

from service.main import create_app
from tests.jobs.client import LONG, QUICK, submit, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import serve, wait_for
from tests.jobs.receiver import receiver
from tests.jobs.test_callbacks import verify
from tests.jobs.test_events import read_events
from tests.jobs.test_exemplars_api import BODY as EXEMPLARS


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_the_result_and_each_unit_are_png_files_with_etags(api: httpx.Client) -> None:
    created = submit(api, {**QUICK, "seed": 21})
    done = wait_job(api, created["id"])
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    job_id = created["id"]
    # Small: inline, and linked.
    assert result["grid_url"] == f"/v1/jobs/{job_id}/result.png"
    assert [u["image_url"] for u in result["units"]] == [
        f"/v1/jobs/{job_id}/units/0.png",
        f"/v1/jobs/{job_id}/units/1.png",
    ]

    grid = api.get(result["grid_url"])
    assert grid.status_code == 200
    assert grid.headers["content-type"] == "image/png"
    assert "content-encoding" not in grid.headers  # a PNG is not gzipped again
    assert grid.content == base64.b64decode(result["grid"])
    assert pixels(grid.content).shape == (32 + 2 * 2, 2 * 32 + 3 * 2, 3)
    assert "immutable" in grid.headers["cache-control"]
    etag = grid.headers["etag"]
    again = api.get(result["grid_url"], headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag

    for i, unit in enumerate(result["units"]):
        png = api.get(f"/v1/jobs/{job_id}/units/{i}.png")
        assert png.status_code == 200
        assert png.content == base64.b64decode(unit["image"])
        assert pixels(png.content).shape == (32, 32, 3)
        assert png.headers["etag"] != etag
    missing = api.get(f"/v1/jobs/{job_id}/units/2.png")
    assert missing.status_code == 404
    assert missing.json()["code"] == "unknown_unit"
    assert "numbered 0 to 1" in missing.json()["detail"]

    # The preview of a finished job is its result, not the last preview taken.
    preview = api.get(f"/v1/jobs/{job_id}/preview")
    assert preview.status_code == 200
    assert preview.content == grid.content


def test_pictures_are_left_out_of_the_json_on_request_and_the_json_is_gzipped(
    api: httpx.Client,
) -> None:
    created = submit(api, {**QUICK, "seed": 22})
    wait_job(api, created["id"])
    linked = api.get(f"/v1/jobs/{created['id']}", params={"inline": "false"})
    result = linked.json()["result"]
    assert result["grid"] is None
    assert all(u["image"] is None and u["image_url"] for u in result["units"])
    assert api.get(result["grid_url"]).status_code == 200

    raw = httpx.get(
        f"{api.base_url}/v1/jobs/{created['id']}",
        headers={"Accept-Encoding": "gzip"},
        params={"inline": "true"},
    )
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.json()["result"]["grid"]  # httpx decoded it
    # Finished: a validator; the same copy gets a 304.
    etag = raw.headers["etag"]
    assert etag.startswith('W/"')
    unchanged = api.get(
        f"/v1/jobs/{created['id']}", params={"inline": "true"}, headers={"If-None-Match": etag}
    )
    assert unchanged.status_code == 304


def test_an_unfinished_job_has_no_result_file_yet(api: httpx.Client) -> None:
    created = submit(api, LONG)
    answer = api.get(f"/v1/jobs/{created['id']}/result.png")
    assert answer.status_code == 409
    body = answer.json()
    assert body["code"] == "job_not_succeeded"
    assert "/preview" in body["detail"]
    assert answer.headers["Retry-After"] == "1"
    assert "etag" not in api.get(f"/v1/jobs/{created['id']}").headers
    api.post(f"/v1/jobs/{created['id']}/cancel")
    wait_job(api, created["id"])
    cancelled = api.get(f"/v1/jobs/{created['id']}/units/0.png")
    assert cancelled.status_code == 409
    assert "cancelled" in cancelled.json()["detail"]
    assert api.get("/v1/jobs/nope/result.png").json()["code"] == "unknown_job"


def test_a_large_result_links_its_pictures_by_default() -> None:
    # 4 units of 64 px are well past a 2 KB threshold; the same job under it would be inline.
    with serve(create_app(api_settings(None, inline_result_max_bytes=2048))) as api:
        created = submit(api, {**QUICK, "channels": [0, 1, 2, 3], "image_size": 64})
        done = wait_job(api, created["id"])
        result = done["result"]
        assert result["grid"] is None
        assert all(u["image"] is None for u in result["units"])
        inline = api.get(f"/v1/jobs/{created['id']}", params={"inline": "true"}).json()
        grid = base64.b64decode(inline["result"]["grid"])
        assert grid == api.get(result["grid_url"]).content
        assert pixels(grid).shape == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2, 3)


def test_an_attribution_job_has_files_too(api: httpx.Client) -> None:
    # Another kind: one overlay per target; the API tiles them for result.png.
    response = api.post(
        "/v1/models/shapes/attribution-jobs",
        json={"sample": "circle", "method": "saliency", "target": [0, 2]},
        headers={"Cache-Control": "no-cache"},
    )
    assert response.status_code == 202, response.text
    done = wait_job(api, response.json()["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    overlays = [base64.b64decode(a["overlay"]) for a in done["result"]["attributions"]]
    for i, overlay in enumerate(overlays):
        assert api.get(f"/v1/jobs/{done['id']}/units/{i}.png").content == overlay
    grid = pixels(api.get(f"/v1/jobs/{done['id']}/result.png").content)
    assert grid.shape == (64 + 2 * 2, 2 * 64 + 3 * 2, 3)
    # The first tile is the first overlay, exactly.
    assert np.array_equal(grid[2:66, 2:66], pixels(overlays[0]))
    assert np.array_equal(grid[2:66, 68:132], pixels(overlays[1]))


def test_an_exemplars_job_streams_calls_back_and_names_where_its_pictures_are(
    api: httpx.Client,
) -> None:
    # The third kind: its result holds image ids, its pictures are drawn on request.
    with receiver() as hooks:
        body = {**EXEMPLARS, "layers": ["fc"], "callback_url": hooks.url + "/exemplars"}
        response = api.post(
            "/v1/models/shapes/exemplars", json=body, headers={"Cache-Control": "no-cache"}
        )
        assert response.status_code == 202, response.text
        events = read_events(api, response.json()["id"], timeout=120)
        assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"
        assert events[-1][1]["progress"]["unit"] == "images"
        job_id = events[-1][1]["id"]
        delivery = wait_for(lambda: hooks.to("/exemplars"), 60, "the callback")[0]
        assert verify(delivery)["kind"] == "exemplar"
    answer = api.get(f"/v1/jobs/{job_id}/result.png")
    assert answer.status_code == 404
    assert answer.json()["code"] == "no_pictures"
    assert f"/v1/jobs/{job_id}/exemplars/{{layer}}/{{channel}}" in answer.json()["detail"]


def test_an_optimization_keeps_its_images_as_float32(api: httpx.Client) -> None:
    created = submit(api, {**QUICK, "seed": 23})
    done = wait_job(api, created["id"])
    answer = api.get(f"/v1/jobs/{created['id']}/result.npy")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-npy"
    assert "content-encoding" not in answer.headers
    images = np.load(io.BytesIO(answer.content), allow_pickle=False)
    assert images.dtype == np.float32 and images.shape == (2, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    # The PNGs are these numbers rounded to 255 levels.
    for i, unit in enumerate(done["result"]["units"]):
        levels = np.round(images[i].transpose(1, 2, 0) * 255).astype(np.uint8)
        assert np.array_equal(levels, pixels(base64.b64decode(unit["image"])))
    named = api.get(f"/v1/jobs/{created['id']}/result.safetensors")
    assert named.headers["content-type"] == "application/vnd.safetensors"
    assert np.array_equal(safetensors.numpy.load(named.content)["images"], images)
    cached = api.get(
        f"/v1/jobs/{created['id']}/result.npy", headers={"If-None-Match": answer.headers["etag"]}
    )
    assert cached.status_code == 304


def test_raw_tensors_answer_clearly_when_there_are_none(api: httpx.Client) -> None:
    running = submit(api, LONG)
    assert api.get(f"/v1/jobs/{running['id']}/result.npy").status_code == 409
    api.post(f"/v1/jobs/{running['id']}/cancel")
    response = api.post(
        "/v1/models/shapes/attribution-jobs",
        json={"sample": "star", "method": "saliency"},
        headers={"Cache-Control": "no-cache"},
    )
    done = wait_job(api, response.json()["id"], timeout=120)
    answer = api.get(f"/v1/jobs/{done['id']}/result.npy")
    assert answer.status_code == 404
    assert answer.json()["code"] == "no_arrays"

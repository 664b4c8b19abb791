"""Attribution jobs: what is too long for a synchronous answer runs as a job, on both
transports (in-process, and Celery with a real worker), with progress and cancellation."""

from __future__ import annotations

import base64
from io import BytesIO
from typing import Any

import httpx
import pytest
from PIL import Image

from cnnviz.data.shapes import sample_image
from cnnviz.models import ModelRegistry
from schemas.attributions import JOB_EXAMPLES, AttributionsCreate
from tests.jobs.client import FINISHED, MODEL, decode_png, wait_job
from workers.kinds import JobContext, Resources
from workers.kinds.attribution import Attributions

URL = f"/v1/models/{MODEL}/attribution-jobs"
# Over the synchronous limit of 2.5 M image-pixels (610 images of 64×64), and a few seconds
# of work.
OVER_SYNC = {"sample": "circle", "method": "integrated_gradients", "steps": 620}
# Minutes of work if nobody stops it: 12 targets × 1024 steps.
LONG = {
    "sample": "star",
    "method": "integrated_gradients",
    "steps": 1024,
    "target": list(range(12)),
}


def submit(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(URL, json=body, headers={"Cache-Control": "no-cache"})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    return job


def test_a_request_too_long_to_answer_at_once_runs_as_a_job(api: httpx.Client) -> None:
    refused = api.post(f"/v1/models/{MODEL}/attributions", json=OVER_SYNC)
    assert refused.status_code == 422 and "attribution-jobs" in refused.json()["detail"]

    created = submit(api, OVER_SYNC)
    assert created["kind"] == "attribution"
    done = wait_job(api, created["id"], timeout=120)

    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["unit"] == "images"
    assert done["progress"]["step"] == done["progress"]["total"] == 620
    result = done["result"]
    assert result["method"] == "integrated_gradients"
    assert result["predictions"][0]["label"] == "circle"
    [item] = result["attributions"]
    assert item["completeness"]["relative_error"] < 0.05
    assert decode_png(item["overlay"]).size == (64, 64)


def test_a_long_attribution_job_reports_progress_and_stops_when_cancelled(
    api: httpx.Client,
) -> None:
    created = submit(api, LONG)
    running = wait_job(api, created["id"], {"running"}, step=64, timeout=120)
    assert running["progress"]["total"] == 12 * 1024
    assert running["progress"]["step"] < running["progress"]["total"]
    assert api.post(f"/v1/jobs/{created['id']}/cancel").status_code == 202
    stopped = wait_job(api, created["id"], FINISHED, timeout=60)
    assert stopped["status"] == "cancelled"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"sample": "star", "method": "gradcam"}, "needs a layer"),
        ({"sample": "star", "method": "gradcam", "layer": "block9"}, "block9"),
        ({"sample": "star", "method": "gradcm"}, "'gradcam'"),
        ({"image": "aGVsbG8=", "method": "saliency"}, "PNG"),
        ({"sample": "star", "method": "occlusion", "window": 1, "stride": 1, "steps": 1}, None),
    ],
)
def test_bad_jobs_are_refused_before_they_are_queued(
    api: httpx.Client, body: dict[str, Any], named: str | None
) -> None:
    response = api.post(URL, json=body, headers={"Cache-Control": "no-cache"})
    if named is None:  # 4096 patches: fine for a job
        assert response.status_code == 202, response.text
        api.post(f"/v1/jobs/{response.json()['id']}/cancel")
        wait_job(api, response.json()["id"], FINISHED, timeout=60)
        return
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]


@pytest.mark.parametrize("name", sorted(JOB_EXAMPLES))
def test_the_docs_job_example_is_accepted_and_runs(name: str) -> None:
    resources = Resources(models=ModelRegistry.from_file(None))
    kind = Attributions()
    request = kind.prepare(
        AttributionsCreate.model_validate(JOB_EXAMPLES[name]["value"]), MODEL, resources
    )
    # It is a job because it is long: over the synchronous limit of image-pixels.
    assert kind.work(request, MODEL, resources) * 64 * 64 > 2_500_000
    update = {"steps": 4, "stride": request.window, "metric_steps": 4, "random_maps": 1}
    quick = request.model_copy(update=update)
    partial = kind.run_shard(quick, MODEL, 0, resources, JobContext())
    result = kind.merge(quick, MODEL, [partial], resources)
    assert result.attributions and all(item.overlay for item in result.attributions)
    for item in result.attributions:
        scores = item.faithfulness
        assert (scores is not None) == bool(request.metrics)
        if scores is not None:
            assert scores.deletion_curve is not None and len(scores.deletion_curve) == 5


def test_one_jpeg_gives_one_answer_on_every_route_and_drawing_option(api: httpx.Client) -> None:
    # A 512 px JPEG decodes reduced (8× smaller) for the 64 px model; a job, or a request
    # that also draws the full-size overlay, must give the model those same pixels.
    buffer = BytesIO()
    sample_image("star").convert("RGB").resize((512, 512), Image.BICUBIC).save(
        buffer, "JPEG", quality=90
    )
    body = {
        "image": base64.b64encode(buffer.getvalue()).decode(),
        "method": "gradcam",
        "layer": "block4.relu",
    }

    def answer(result: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        [item] = result["attributions"]
        return result["predictions"][0]["score"], item["stats"]

    sync = api.post(f"/v1/models/{MODEL}/attributions", json=body)
    assert sync.status_code == 200, sync.text
    drawn = api.post(f"/v1/models/{MODEL}/attributions", json={**body, "overlay_full": True})
    assert drawn.status_code == 200, drawn.text
    assert decode_png(drawn.json()["attributions"][0]["overlay_full"]).size == (512, 512)
    job = wait_job(api, submit(api, {**body, "overlay_full": True})["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert answer(drawn.json()) == answer(sync.json()) == answer(job["result"])

"""Sanity-check jobs: cascading randomization queued over HTTP on both transports, and the
kind run directly on the docs example; bad requests refused before anything is queued."""

from __future__ import annotations

import base64

import httpx
import pytest

from cnnviz.attribution import randomizable
from cnnviz.data.datasets import DatasetRegistry
from cnnviz.models import ModelRegistry
from schemas.sanity import EXAMPLES, SanityCheckCreate
from tests.jobs.client import MODEL, wait_job
from workers.kinds import JobContext, Resources
from workers.kinds.sanity import SanityChecks

URL = f"/v1/models/{MODEL}/sanity-checks"


def test_a_sanity_check_runs_as_a_job(api: httpx.Client) -> None:
    image = base64.b64encode(api.get("/v1/samples/star").content).decode()
    body = {"methods": ["saliency"], "images": [image]}
    response = api.post(URL, json=body, headers={"Cache-Control": "no-cache"})
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["kind"] == "sanity_check"
    done = wait_job(api, created["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    stages = len(randomizable(ModelRegistry.from_file(None).get(MODEL).module))
    assert done["progress"]["step"] == done["progress"]["total"] == stages
    result = done["result"]
    assert result["images"] == 1 and result["threshold"] == 0.5
    [method] = result["methods"]
    assert method["method"] == "saliency" and len(method["correlations"]) == stages
    assert method["correlations"][0]["layer"] == "fc"  # from the output down
    assert method["passes"] == (method["correlations"][-1]["spearman"] < 0.5)


@pytest.mark.parametrize(
    ("body", "status", "code", "named"),
    [
        ({"methods": ["gradcm"], "dataset": "shapes"}, 422, "invalid_argument", "gradcam"),
        ({"methods": ["gradcam"], "dataset": "shapes"}, 422, "invalid_argument", "layer"),
        (
            {"methods": ["gradcam"], "layer": "blok4", "dataset": "shapes"},
            422,
            "unknown_layer",
            "blok4",
        ),
        ({"methods": ["saliency"], "dataset": "nope"}, 404, "unknown_dataset", "shapes"),
        ({"methods": ["saliency"]}, 422, "invalid_request", "exactly one"),
        ({"methods": ["saliency"], "images": ["aGVsbG8="]}, 422, "invalid_image", "PNG"),
    ],
)
def test_bad_sanity_checks_are_refused_before_queueing(
    api: httpx.Client, body: dict[str, object], status: int, code: str, named: str
) -> None:
    response = api.post(URL, json=body)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == code and named in problem["detail"]


def test_the_docs_example_runs() -> None:
    resources = Resources(models=ModelRegistry.from_file(None), datasets=DatasetRegistry())
    kind = SanityChecks()
    request = kind.prepare(
        SanityCheckCreate.model_validate(EXAMPLES["shapes"]["value"]), MODEL, resources
    )
    quick = request.model_copy(update={"max_images": 1, "methods": ["gradcam"]})
    result = kind.merge(
        quick, MODEL, [kind.run_shard(quick, MODEL, 0, resources, JobContext())], resources
    )
    [gradcam] = result.methods
    assert result.images == 1 and len(gradcam.correlations) == kind.work(quick, MODEL, resources)


def _status(api: httpx.Client, model: str, method: str, **extra: object) -> str:
    body = {"sample": "star", "method": method, **extra}
    response = api.post(f"/v1/models/{model}/attributions", json=body)
    assert response.status_code == 200, response.text
    status: str = response.json()["sanity"]
    return status


def _listed(api: httpx.Client, model: str) -> dict[str, str]:
    listed = api.get("/v1/attribution-methods", params={"model": model}).json()["methods"]
    return {m["name"]: m["sanity"] for m in listed}


def test_verdicts_outlive_the_check_and_travel_with_attributions(api: httpx.Client) -> None:
    """Planted: ``blind``'s saliency ignores its weights (fails), ``linear``'s is its weights
    (passes); what the check found is what every attribution answer then says."""
    assert _status(api, "blind", "saliency") == "unknown"
    assert _listed(api, "blind")["saliency"] == "unknown"
    image = base64.b64encode(api.get("/v1/samples/star").content).decode()
    for model, passes in (("blind", False), ("linear", True)):
        body = {"methods": ["saliency"], "images": [image]}
        created = api.post(f"/v1/models/{model}/sanity-checks", json=body).json()
        done = wait_job(api, created["id"], timeout=120)
        assert done["result"]["methods"][0]["passes"] is passes, done
        # The job is gone; its verdict stays, kept apart from the job's record.
        assert api.delete(f"/v1/jobs/{created['id']}").status_code == 204
    assert _status(api, "blind", "saliency") == "failed"
    assert _status(api, "linear", "saliency") == "passed"
    assert _status(api, "blind", "integrated_gradients", steps=8) == "unknown"
    blind, linear = _listed(api, "blind"), _listed(api, "linear")
    assert (blind["saliency"], linear["saliency"]) == ("failed", "passed")
    assert {blind[m] for m in blind if m != "saliency"} == {"unknown"}
    png = api.post(
        "/v1/models/blind/attributions",
        json={"sample": "star", "method": "saliency"},
        headers={"Accept": "image/png"},
    )
    assert png.headers["X-Sanity"] == "failed"
    job = api.post(
        "/v1/models/blind/attribution-jobs", json={"sample": "star", "method": "saliency"}
    ).json()
    assert wait_job(api, job["id"])["result"]["sanity"] == "failed"

"""Every route of the service, by the name of the client method that calls it.

A row is ``method name: (HTTP method, path template)``; the client formats its paths from
here. The job kinds' submit routes are not rows here: each kind declares its own in the
contract (:mod:`schemas.routes`), and :meth:`Client.submit` calls any of them.
``tests/client/test_routes.py`` checks both against the app's OpenAPI, both ways (a route
without a method, or a row without a route, fails).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote


class Route(NamedTuple):
    method: str
    path: str


ROUTES: dict[str, Route] = {
    # health
    "health": Route("GET", "/healthz"),
    "ready": Route("GET", "/readyz"),
    # models and what they see, synchronously
    "models": Route("GET", "/v1/models"),
    "model": Route("GET", "/v1/models/{model}"),
    "layers": Route("GET", "/v1/models/{model}/layers"),
    "register_model": Route("PUT", "/v1/models/{model}"),
    "delete_model": Route("DELETE", "/v1/models/{model}"),
    "feature_maps": Route("POST", "/v1/models/{model}/feature-maps"),
    "weights": Route("GET", "/v1/models/{model}/layers/{layer}/weights"),
    "attribute": Route("POST", "/v1/models/{model}/attributions"),
    "attribution_methods": Route("GET", "/v1/attribution-methods"),
    # images to feed them
    "samples": Route("GET", "/v1/samples"),
    "sample": Route("GET", "/v1/samples/{name}"),
    "datasets": Route("GET", "/v1/datasets"),
    "dataset_image": Route("GET", "/v1/datasets/{dataset}/images/{image_id}"),
    # jobs of every kind
    "jobs": Route("GET", "/v1/jobs"),
    "job": Route("GET", "/v1/jobs/{job_id}"),
    "cancel": Route("POST", "/v1/jobs/{job_id}/cancel"),
    "delete": Route("DELETE", "/v1/jobs/{job_id}"),
    "events": Route("GET", "/v1/jobs/{job_id}/events"),
    "preview_png": Route("GET", "/v1/jobs/{job_id}/preview"),
    "result_png": Route("GET", "/v1/jobs/{job_id}/result.png"),
    "unit_png": Route("GET", "/v1/jobs/{job_id}/units/{index}.png"),
    "result_npy": Route("GET", "/v1/jobs/{job_id}/result.npy"),
    "result_safetensors": Route("GET", "/v1/jobs/{job_id}/result.safetensors"),
    "exemplar_grid": Route("GET", "/v1/jobs/{job_id}/exemplars/{layer}/{channel}"),
    "dissection_grid": Route("GET", "/v1/jobs/{job_id}/dissections/{layer}/{channel}"),
}

# Path parameters that may hold slashes (the route matches the rest of the path).
_PATH_LIKE = frozenset({"image_id"})


def path(name: str, /, **params: object) -> str:
    """The path of route ``name`` with its parameters filled in, each percent-encoded."""
    return fill(ROUTES[name].path, **params)


def fill(template: str, /, **params: object) -> str:
    """``template`` with its parameters filled in, each percent-encoded."""
    return template.format(
        **{k: quote(str(v), safe="/" if k in _PATH_LIKE else "") for k, v in params.items()}
    )

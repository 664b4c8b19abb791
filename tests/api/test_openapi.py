"""The OpenAPI document says what the service does: problem+json errors, exactly-one rules,
the API key as a security scheme; and the service does what it says (405 Allow, strict types).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.main import create_app
from tests.api.conftest import make_settings


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def test_every_error_response_is_declared_as_problem_json(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    errors = 0
    for method, path, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if int(status) >= 400 and not (path == "/readyz" and status == "503"):
                assert list(response["content"]) == ["application/problem+json"], (method, path)
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}
                errors += 1
    assert errors > 30
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_exactly_one_image_source_is_a_oneof(http: httpx.Client) -> None:
    body = http.get("/openapi.json").json()["paths"]["/v1/models/{model}/feature-maps"]["post"]
    schema = body["requestBody"]["content"]["application/json"]["schema"]
    required = sorted(branch["required"] for branch in schema["oneOf"])
    assert required == [["image"], ["sample"]]


def test_without_keys_there_is_no_security_scheme(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert "securitySchemes" not in spec["components"]


def test_with_keys_the_key_is_a_security_scheme(models_file: Path) -> None:
    spec = create_app(make_settings(models_file, api_keys="k1")).openapi()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "One of the keys in CNNVIZ_API_KEYS",
    }
    for _method, path, operation in _operations(spec):
        if path.startswith("/v1/"):
            assert operation["security"] == [{"ApiKey": []}]
            assert "401" in operation["responses"]
    assert spec["paths"]["/readyz"]["get"]["security"] == [{}, {"ApiKey": []}]


def test_a_405_names_every_method_of_the_path(http: httpx.Client) -> None:
    response = http.request("PATCH", "/v1/jobs/0123")
    assert response.status_code == 405
    assert response.headers["Allow"] == "DELETE, GET"
    assert response.headers["content-type"] == "application/problem+json"
    assert "use DELETE, GET" in response.json()["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", True), ("seed", False), ("lr", True), ("decorrelate", 1), ("steps", "8")],
)
def test_a_job_takes_numbers_and_booleans_as_they_are(
    http: httpx.Client, field: str, value: object
) -> None:
    body = {"layer": "block3.relu", "channels": [0], field: value}
    response = http.post("/v1/models/shapes/optimizations", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", field]


@pytest.mark.parametrize(("field", "value"), [("top_k", True), ("scale", "2"), ("padding", 1.5)])
def test_feature_maps_json_takes_numbers_as_they_are(
    http: httpx.Client, field: str, value: object
) -> None:
    body = {"sample": "star", "layers": ["conv"], field: value}
    response = http.post("/v1/models/tiny/feature-maps", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", field]

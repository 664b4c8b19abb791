"""Every route of the service has its client method: the route table against the OpenAPI."""

from __future__ import annotations

import inspect

from cnnviz_client import Client
from cnnviz_client.kinds import JOB_ROUTES, JOB_TYPES
from cnnviz_client.routes import ROUTES, path
from schemas.jobs import JobRead
from service.main import create_app
from service.settings import Settings
from workers.kinds import get_kind, kind_names

METHODS = {"get", "post", "put", "patch", "delete"}


def openapi_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(redis_url=None, models_file=None, api_keys=None))
    return {
        (method.upper(), route)
        for route, operations in app.openapi()["paths"].items()
        for method in operations
        if method in METHODS
    }


def test_every_openapi_route_has_a_client_method_and_every_row_a_route() -> None:
    served = openapi_routes()
    table = {(route.method, route.path) for route in ROUTES.values()}
    submits = {("POST", route.url) for route in JOB_ROUTES.values()}  # Client.submit(kind)
    missing = served - table - submits
    assert missing == set(), "routes without a client method (add a row and a method)"
    assert table - served == set(), "rows of cnnviz_client.routes that the service has not"
    assert submits - served == set(), "job kinds the client knows and the service has not"
    assert len(table) == len(ROUTES) and not table & submits  # one method per route


def test_each_row_names_a_public_method_of_the_client() -> None:
    for name in ROUTES:
        method = getattr(Client, name, None)
        assert callable(method), f"Client has no method {name}()"
        assert method.__doc__ or inspect.signature(method).return_annotation, name


def test_each_kind_of_job_is_submitted_and_typed_as_the_service_does_it() -> None:
    assert set(JOB_ROUTES) == set(JOB_TYPES) == set(kind_names())
    for name in kind_names():
        route = get_kind(name).route
        assert JOB_ROUTES[name] is route, name
        assert JOB_TYPES[name] is JobRead[route.request, route.result], name
    assert callable(Client.submit)


def test_path_parameters_are_encoded_and_an_image_id_keeps_its_folders() -> None:
    assert path("layers", model="a b") == "/v1/models/a%20b/layers"
    assert path("weights", model="m", layer="x/y") == "/v1/models/m/layers/x%2Fy/weights"
    assert path("dataset_image", dataset="d", image_id="star/0001.png") == (
        "/v1/datasets/d/images/star/0001.png"
    )

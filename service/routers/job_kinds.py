"""The submit route of every registered job kind, made from its row (one handler for all).

A kind's row (:class:`schemas.routes.JobRoute`) gives the path, the body and result types and
the examples; registering the kind (:func:`workers.kinds.register_kind`) is all it takes to
be asked for over HTTP.
"""

# No ``from __future__ import annotations`` here: FastAPI reads each handler's annotations,
# which name the kind's own types, as objects.

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response

from schemas.errors import Problem
from schemas.jobs import JobRead
from schemas.routes import JobRoute, first_kind_name
from service.deps import JobsDep, OwnerDep
from service.image_request import require_json
from service.routers.jobs import SUBMIT_RESPONSES, CacheControl, IdempotencyKey, submit_job
from workers.kinds import get_kind, kind_names

router = APIRouter(prefix="/models")


def _add(route: JobRoute) -> None:
    body_type: Any = route.request
    read_type: Any = JobRead[route.request, route.result]  # type: ignore[name-defined]
    examples = {name: dict(example) for name, example in route.examples.items()}

    async def create(
        model: str,
        body: Annotated[body_type, Body(openapi_examples=examples)],
        jobs: JobsDep,
        owner: OwnerDep,
        response: Response,
        idempotency_key: IdempotencyKey = None,
        cache_control: CacheControl = None,
    ) -> read_type:
        return await submit_job(
            jobs, route.kind, model, body, response, idempotency_key, cache_control, owner
        )

    create.__doc__ = route.summary
    # The first name: a renamed kind keeps its operation id.
    create.__name__ = f"create_{first_kind_name(route.kind).replace('-', '_')}"
    router.add_api_route(
        f"/{{model}}/{route.path}",
        create,
        methods=["POST"],
        status_code=202,
        responses={
            **SUBMIT_RESPONSES,
            415: {"model": Problem, "description": "not JSON"},
        },
        dependencies=[Depends(require_json)],
        tags=[route.tag],
        name=create.__name__,
    )


for _name in kind_names():
    _add(get_kind(_name).route)

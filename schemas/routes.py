"""Each job kind's submit route, declared once beside its schema.

A row says how a kind is asked for over HTTP: ``POST /v1/models/{model}/<path>`` with a body of
its ``request`` type, answering a job whose result is of its ``result`` type, with the
examples ``/docs`` shows. The service makes one route per row (one generic handler), a kind
of the job domain names its row, and the client can list them without the job domain (which
imports torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, PlainSerializer

__all__ = [
    "RENAMED_KINDS",
    "JobRoute",
    "KindName",
    "StoredKindName",
    "first_kind_name",
    "job_route",
    "job_routes",
    "kind_name",
]

# Earlier names of job kinds, each to its name today. Kind names are singular; ``exemplars``
# was the one plural. A record, a task message, a listing's filter or a client call that
# carries an old name means today's kind (:func:`kind_name`); fingerprints keep the first
# name (:func:`first_kind_name`), so an Idempotency-Key or a reusable result from before a
# rename still matches after it. Records and task messages keep the first name too
# (:data:`StoredKindName`).
RENAMED_KINDS: Mapping[str, str] = {"exemplars": "exemplar"}
_FIRST_NAMES = {today: earlier for earlier, today in RENAMED_KINDS.items()}


def kind_name(name: str) -> str:
    """Today's name of the kind once called ``name`` (``name`` itself when it is not old)."""
    return RENAMED_KINDS.get(name, name)


def first_kind_name(kind: str) -> str:
    """The name ``kind`` was released under: what fingerprints and operation ids carry."""
    return _FIRST_NAMES.get(kind, kind)


KindName = Annotated[str, AfterValidator(kind_name)]
"""A kind's name as a client sends or reads it: an old name reads as today's."""

StoredKindName = Annotated[str, AfterValidator(kind_name), PlainSerializer(first_kind_name)]
"""A kind's name in records and task messages: read as today's, written by its first name,
so that a release from before a rename reads what a later one stores or queues (workers and
API replicas of both releases run side by side during a rolling upgrade)."""


@dataclass(frozen=True)
class JobRoute:
    """``kind``: the job kind's name (records, ``JobRead.kind``); ``path``: the last segment
    of its submit route; ``summary``: one line for ``/docs``; ``examples``: requests that
    work on the built-in model as it is (tests run each one)."""

    kind: str
    path: str
    request: type[BaseModel]
    result: type[BaseModel]
    summary: str
    tag: str = "jobs"
    examples: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"/v1/models/{{model}}/{self.path}"


_ROUTES: dict[str, JobRoute] = {}


def job_route(route: JobRoute) -> JobRoute:
    """Register ``route``; ValueError for a kind or a path that another row has."""
    if route.kind in RENAMED_KINDS:
        raise ValueError(f"job kind {route.kind!r} is an old name of {kind_name(route.kind)!r}")
    for known in _ROUTES.values():
        if route.kind == known.kind or route.path == known.path:
            raise ValueError(f"job route {route.kind!r} ({route.path}) is declared twice")
    _ROUTES[route.kind] = route
    return route


def job_routes() -> list[JobRoute]:
    """Every declared row, in the order of declaration (the schema modules' import order)."""
    return list(_ROUTES.values())

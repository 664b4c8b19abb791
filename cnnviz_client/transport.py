"""What every method of the client stands on: the HTTP connection, one call of a route, a
request's JSON body and image source, and the submit of a job of any kind. The base of
:class:`cnnviz_client.analysis.Analysis` and :class:`cnnviz_client.client.Client`."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from cnnviz_client.errors import raise_for_problem
from cnnviz_client.kinds import JOB_ROUTES, parse_job
from cnnviz_client.routes import ROUTES, fill, path
from schemas.jobs import JobRead
from schemas.routes import kind_name

__all__ = ["DEFAULT_URL", "PNG", "Image", "Transport"]

DEFAULT_URL = "http://127.0.0.1:8000"
PNG = {"Accept": "image/png"}

RequestT = TypeVar("RequestT", bound=BaseModel)

Image = bytes | str | Path
"""An image: its bytes, or the path of its file."""


def _image_source(image: Image | None, sample: str | None) -> dict[str, str]:
    """The ``image`` (base64) or ``sample`` field of a request."""
    fields = {}
    if image is not None:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        fields["image"] = base64.b64encode(data).decode("ascii")
    if sample is not None:
        fields["sample"] = sample
    return fields


def _image_request(
    cls: type[RequestT], image: Image | None, sample: str | None, fields: dict[str, Any]
) -> RequestT:
    """A request of type ``cls`` for an image or a sample, from the fields given (None: not
    given, so the service's default applies)."""
    options = {k: v for k, v in fields.items() if v is not None}
    return cls.model_validate({**_image_source(image, sample), **options})


def _json_body(request: BaseModel) -> dict[str, Any]:
    """The request as sent: only the fields given, so the service fills in its defaults."""
    return {
        "content": request.model_dump_json(exclude_unset=True),
        "headers": {"Content-Type": "application/json"},
    }


class Transport:
    """The connection to a service and the calls every method makes on it."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self._owned = http is None
        if http is None:
            headers = {"X-API-Key": api_key} if api_key else {}
            # Idle connections are dropped well before uvicorn closes them (after 5 s, httpx's
            # own default too), so a request is not sent on a connection the server is closing.
            http = httpx.Client(
                base_url=base_url.rstrip("/"),
                headers=headers,
                timeout=timeout,
                transport=transport,
                limits=httpx.Limits(keepalive_expiry=2.0),
            )
        self._http = http

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def _send(self, route: str, where: dict[str, object], **kwargs: Any) -> httpx.Response:
        """Call route ``route`` with its path parameters ``where``; ``ApiError`` on an error."""
        response = self._http.request(ROUTES[route].method, path(route, **where), **kwargs)
        raise_for_problem(response)
        return response

    def submit(
        self,
        kind: str,
        model: str,
        request: BaseModel | None = None,
        idempotency_key: str | None = None,
        reuse: bool = True,
        **fields: Any,
    ) -> JobRead[Any, Any]:
        """Queue a job of ``kind`` (a request of its type, or its fields) at the kind's own
        route (:mod:`schemas.routes`); the job as queued, typed by its kind.

        ``idempotency_key``: the same key and body give back the same job. ``reuse=False``:
        run it again even where an identical request has succeeded before."""
        route = JOB_ROUTES.get(kind_name(kind))  # an old name is today's kind
        if route is None:
            raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(sorted(JOB_ROUTES))}")
        body = _json_body(request or route.request.model_validate(fields))
        if idempotency_key:
            body["headers"]["Idempotency-Key"] = idempotency_key
        if not reuse:
            body["headers"]["Cache-Control"] = "no-cache"
        response = self._http.request("POST", fill(route.url, model=model), **body)
        raise_for_problem(response)
        return parse_job(response.content)

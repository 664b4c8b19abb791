"""Named dependencies of the route handlers.

They are ``async def`` although they do not await: FastAPI runs a plain ``def`` dependency in
its thread pool, and each such hop costs more than the lookup itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.models import ModelRegistry
from service.concurrency import TorchPool
from service.errors import ApiError
from service.jobs.manager import JobManager
from service.settings import Settings


def app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency: what the app was built with under ``name`` (see ``create_app``).

    The settings too are read from the app rather than by overriding ``get_settings``:
    FastAPI rebuilds every dependant on each request while any override is set, which costs
    about a millisecond.
    """

    async def read(request: Request) -> Any:
        return getattr(request.app.state, name)

    return read


SettingsDep = Annotated[Settings, Depends(app_state("settings"))]
RegistryDep = Annotated[ModelRegistry, Depends(app_state("registry"))]
DatasetsDep = Annotated[DatasetRegistry, Depends(app_state("datasets"))]
PoolDep = Annotated[TorchPool, Depends(app_state("pool"))]
JobsDep = Annotated[JobManager, Depends(app_state("jobs"))]


def key_is_valid(settings: Settings, given: str | None) -> bool:
    """Whether ``given`` is one of the configured keys (constant time); True without keys."""
    keys = settings.api_key_list
    return not keys or _one_of(keys, given)


def _one_of(keys: list[str], given: str | None) -> bool:
    """Whether ``given`` is one of ``keys``, compared with every key in constant time, so
    that the time taken does not tell which one nearly matched."""
    raw = (given or "").encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(raw, key.encode())
    return matched


ApiKeyHeader = Annotated[
    str | None, Header(description="API key, when the service has keys", include_in_schema=False)
]


async def require_api_key(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> None:
    """Let the request through when no keys are set or its key matches one (constant time)."""
    if not key_is_valid(settings, x_api_key):
        raise ApiError(
            401,
            "unauthorized",
            "a valid X-API-Key header is required",
            {"WWW-Authenticate": "X-API-Key"},
        )


ANONYMOUS = "anonymous"


async def get_owner(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> str:
    """Who owns what this request creates and may see: a hash of its API key, or
    ``anonymous`` when the service has no keys (the key itself is never stored)."""
    if not settings.api_key_list or x_api_key is None:
        return ANONYMOUS
    return "key:" + hashlib.sha256(x_api_key.encode()).hexdigest()[:32]


OwnerDep = Annotated[str, Depends(get_owner)]


async def caller_is_trusted(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> bool:
    """Whether the caller may see details: no keys are configured, or it sent a valid one."""
    return key_is_valid(settings, x_api_key)


TrustedDep = Annotated[bool, Depends(caller_is_trusted)]


async def require_admin_key(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> None:
    """Let an admin key through; 403 for any other caller, 404 when the service has no admin
    keys (the routes that need one are off)."""
    keys = settings.admin_key_list
    if not keys:
        raise ApiError(
            404,
            "not_found",
            "registering models is off: the service has no admin keys (CNNVIZ_ADMIN_KEYS)",
        )
    if not _one_of(keys, x_api_key):
        raise ApiError(403, "forbidden", "registering models needs an admin key (X-API-Key)")

"""The registry of job kinds: a name to its :class:`~workers.kinds.base.JobKind`."""

from __future__ import annotations

from typing import Any, TypeVar

from schemas.routes import kind_name
from workers.kinds.base import JobKind

__all__ = ["get_kind", "kind_names", "register_kind"]

_KINDS: dict[str, JobKind[Any, Any]] = {}

K = TypeVar("K", bound=type[JobKind[Any, Any]])


def register_kind(cls: K) -> K:
    """Class decorator: register one instance of a kind under its ``name``."""
    if cls.name in _KINDS:
        raise ValueError(f"job kind {cls.name!r} is registered twice")
    kind = cls()
    # The route's body may add the job options (callback, priority) to the kind's request.
    if not issubclass(kind.route.request, kind.request_type):
        raise ValueError(f"job kind {kind.name!r} takes another request than its route's")
    _KINDS[cls.name] = kind
    return cls


def get_kind(name: str) -> JobKind[Any, Any]:
    """The kind called ``name`` (today or before a rename); LookupError naming the known
    kinds otherwise."""
    try:
        return _KINDS[kind_name(name)]
    except KeyError:
        raise LookupError(
            f"unknown job kind {name!r}; known: {', '.join(sorted(_KINDS))}"
        ) from None


def kind_names() -> list[str]:
    return sorted(_KINDS)

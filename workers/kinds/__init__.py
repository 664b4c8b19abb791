"""Job kinds, each one module that registers itself (see :mod:`workers.kinds.base`).

Adding a kind: a module here with a registered :class:`JobKind` subclass, one import line
below, and its schema in ``schemas/`` with its route's row (:class:`schemas.routes.JobRoute`);
the service makes its submit route from the row.
"""

# The kinds: importing a module registers it.
from workers.kinds import attribution, dissection, exemplars, optimization, sanity  # noqa: F401
from workers.kinds.base import (
    JobCancelled,
    JobContext,
    JobKind,
    JobTimedOut,
    Partial,
    Reference,
    Resources,
    ResultPictures,
)
from workers.kinds.registry import get_kind, kind_names, register_kind

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobKind",
    "JobTimedOut",
    "Partial",
    "Reference",
    "Resources",
    "ResultPictures",
    "get_kind",
    "kind_names",
    "register_kind",
]

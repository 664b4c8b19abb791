"""Sanity-check verdicts, kept beyond any job's life: by model, weights, method and layer.

A sanity check (Adebayo et al.'s cascading randomization, the ``sanity_check`` job kind)
says something about a method on a model's *learned weights*, so its verdict is kept under
the sha256 of the weights the model runs: a model whose weights change reads ``unknown``
again. A model without a weights file (``random``, torchvision's named weights) has no
digest, and nothing is kept for it. The latest check of a key wins. Verdicts have no TTL:
there are a few per model, method and layer.

Every records backend keeps them (:class:`Verdicts` is part of
:class:`~workers.records.base.JobRecords`); this module holds what the backends share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from schemas.sanity import SanityStatus

__all__ = ["SanityStatus", "Verdict", "VerdictTable", "Verdicts", "sanity_status"]


VerdictTable = Mapping[tuple[str, str], bool]
"""``(method, layer) -> passed`` for one model's weights; layer ``""`` for a method that
reads none."""


@dataclass(frozen=True)
class Verdict:
    """One method's outcome at one layer (``""`` for a method that reads no layer)."""

    method: str
    layer: str
    passed: bool


class Verdicts(Protocol):
    """Where sanity-check verdicts are kept: the job records' store."""

    def keep_verdicts(self, model: str, weights: str, verdicts: list[Verdict]) -> None:
        """Keep ``verdicts`` for ``model`` with the weights of sha256 ``weights``, replacing
        earlier ones of the same method and layer."""

    def verdicts(self, model: str, weights: str) -> dict[tuple[str, str], bool]:
        """Every verdict kept for ``model`` with these weights (:data:`VerdictTable`)."""


def sanity_status(table: VerdictTable, method: str, layer: str | None) -> SanityStatus:
    """A method's status from its model's verdicts: at ``layer`` (``""`` for a method that
    reads none); with ``layer`` None (no layer named), over every layer checked: ``failed``
    where any check failed, ``passed`` where all passed, ``unknown`` where none ran."""
    if layer is not None:
        found = table.get((method, layer))
        kept = [] if found is None else [found]
    else:
        kept = [passed for (name, _), passed in table.items() if name == method]
    if not kept:
        return "unknown"
    return "passed" if all(kept) else "failed"


def redis_key(model: str, weights: str) -> str:
    """A hash of ``method \\0 layer`` -> ``1`` (passed) or ``0``."""
    return f"cnnviz:sanity:{weights}:{model}"


def redis_fields(verdicts: list[Verdict]) -> dict[str, str]:
    return {f"{v.method}\0{v.layer}": "1" if v.passed else "0" for v in verdicts}


def from_redis(raw: Mapping[bytes, bytes]) -> dict[tuple[str, str], bool]:
    table = {}
    for field, value in raw.items():
        method, _, layer = field.decode().partition("\0")
        table[(method, layer)] = value == b"1"
    return table

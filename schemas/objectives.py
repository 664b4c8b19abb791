"""The optimization objectives a request may name, as rows: each says, in one place, what it
needs of the request. The request's Python check and its JSON-Schema rules are both made from
these rows (:func:`check_objective`, :func:`objective_rules`), and the job kind builds each
objective from a table keyed by the same names.

Adding an objective: its name in :class:`ObjectiveKind`, its row here, its term in
:mod:`cnnviz.optvis.objectives`, its builder in the job kind's table (and, if it takes a field
of its own, that field in the request): caricature took those four places and its field.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field
from pydantic.json_schema import JsonDict

from schemas.constraints import exactly_one, exactly_one_given, given, present, when
from schemas.fields import OptimizationLayer, RequestModel, SampleName

__all__ = [
    "OBJECTIVES",
    "CaricatureSpec",
    "ObjectiveKind",
    "ObjectiveRow",
    "check_objective",
    "default_objective",
    "objective_rules",
]


class ObjectiveKind(StrEnum):
    """What is maximised (one row each in :data:`OBJECTIVES`)."""

    CHANNEL = "channel"
    NEURON = "neuron"
    LAYER = "layer"
    DIRECTION = "direction"
    CLASS_LOGIT = "class_logit"
    CARICATURE = "caricature"


class CaricatureSpec(RequestModel):
    """The image whose activations a caricature climbs towards: exactly one of ``image``,
    ``sample`` or ``image_sha256``."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra=exactly_one("image", "sample", "image_sha256"),
    )

    image: str | None = Field(
        default=None,
        description="the image file (PNG, JPEG, WebP, BMP, GIF), base64; a `data:` URL works. "
        "Kept by the service under its sha256 for the job's life: the job names it by that",
    )
    sample: SampleName | None = Field(
        default=None, examples=["triangle"], description="a built-in sample image"
    )
    image_sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="an image the service keeps already (the job's own request shows it)",
    )
    layer: OptimizationLayer | None = Field(
        default=None,
        description="the layer whose activations are compared; default: the request's layer",
    )
    cossim_pow: float = Field(
        default=1.0,
        ge=0,
        le=16,
        strict=False,  # 1 as well as 1.0
        description="weight of the direction over the magnitude: dot · max(0.1, cossim)^p",
    )

    _one_source = exactly_one_given(
        "image",
        "sample",
        "image_sha256",
        message="give exactly one of image (base64), sample or image_sha256",
    )


@dataclass(frozen=True)
class ObjectiveRow:
    """``field``: the request field that this objective needs and no other takes (``hint``:
    what goes in it); ``implied``: that field given alone chooses this objective.
    ``per_channel``: its units are the request's ``channels``, one image each (``all``
    allowed); ``one_image``: it optimizes one image in all."""

    kind: ObjectiveKind
    summary: str
    field: str | None = None
    hint: str = ""
    implied: bool = False
    per_channel: bool = False
    one_image: bool = False


OBJECTIVES: dict[ObjectiveKind, ObjectiveRow] = {
    row.kind: row
    for row in (
        ObjectiveRow(ObjectiveKind.CHANNEL, "a channel's mean activation", per_channel=True),
        ObjectiveRow(
            ObjectiveKind.NEURON,
            "one position of a channel",
            field="neuron",
            hint="{channel, y, x}",
            implied=True,
        ),
        ObjectiveRow(ObjectiveKind.LAYER, "the whole layer's energy (DeepDream)", one_image=True),
        ObjectiveRow(
            ObjectiveKind.DIRECTION,
            "a direction in the layer's channel space",
            field="direction",
            hint="a list of numbers",
        ),
        ObjectiveRow(ObjectiveKind.CLASS_LOGIT, "a class's logit", per_channel=True),
        ObjectiveRow(
            ObjectiveKind.CARICATURE,
            "an image's activations at a layer (Lucid's caricature, feature inversion)",
            field="caricature",
            hint="{image (base64) or sample, layer, cossim_pow}",
            implied=True,
            one_image=True,
        ),
    )
}


def default_objective(values: dict[str, Any]) -> ObjectiveKind:
    """The objective of a request that names none: the one its own field implies, else
    ``channel``."""
    for row in OBJECTIVES.values():
        if row.implied and row.field is not None and values.get(row.field) is not None:
            return row.kind
    return ObjectiveKind.CHANNEL


def check_objective(kind: ObjectiveKind, values: dict[str, Any], images_per_unit: int) -> None:
    """ValueError naming the field when the request's ``values`` do not fit objective
    ``kind``: a field it needs is missing, another objective's is given, or it makes one
    image and more are asked for."""
    for row in OBJECTIVES.values():
        if row.field is None:
            continue
        if kind == row.kind and values.get(row.field) is None:
            raise ValueError(f"objective {row.kind.value!r} needs `{row.field}`: {row.hint}")
        if kind != row.kind and values.get(row.field) is not None:
            raise ValueError(
                f"`{row.field}` is only for objective {row.kind.value!r}, not {kind.value!r}"
            )
    if OBJECTIVES[kind].one_image and images_per_unit > 1:
        raise ValueError(f"objective {kind.value!r} optimizes one image; images_per_unit must be 1")


def objective_rules() -> list[JsonDict]:
    """The same checks as JSON-Schema rules (``allOf`` entries) for the request's schema."""
    rules: list[JsonDict] = []
    for row in OBJECTIVES.values():
        name = row.kind.value
        if row.field is not None:
            rules.append(when("objective", [name], present(row.field)))
            allowed: JsonDict = (
                {"properties": {"objective": {"enum": [None, name]}}}
                if row.implied
                else {"required": ["objective"], "properties": {"objective": {"const": name}}}
            )
            rules.append(given(row.field, allowed))
        if row.one_image:
            one: JsonDict = {"properties": {"images_per_unit": {"const": 1}}}
            rules.append(when("objective", [name], one))
    return rules

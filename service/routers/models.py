"""The registry and the layers of each model; registering models at run time."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile

from cnnviz.models import ModelSpec
from cnnviz.models.store import InvalidUploadError
from schemas.errors import Problem
from schemas.models import LayerList, LayerRead, ModelList, ModelRead
from service.deps import PoolDep, RegistryDep, require_admin_key

router = APIRouter(prefix="/models", tags=["models"])

_ADMIN: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem},
    403: {"model": Problem, "description": "the key is not an admin key"},
    404: {"model": Problem, "description": "the service has no admin keys"},
    409: {"model": Problem, "description": "the name is the built-in model's or the file's"},
    413: {"model": Problem},
    422: {"model": Problem},
}


def _model_read(spec: ModelSpec, loaded: bool) -> ModelRead:
    return ModelRead(
        name=spec.name,
        description=spec.description,
        source=spec.source,
        origin=spec.origin,
        weights=spec.weights,
        sha256=spec.sha256,
        input_size=list(spec.input_size),
        channels=spec.channels,
        mean=list(spec.mean),
        std=list(spec.std),
        labels=list(spec.labels),
        loaded=loaded,
    )


@router.get("")
async def list_models(registry: RegistryDep) -> ModelList:
    """Every registered model; entries that cannot be used say why."""
    models = [_model_read(spec, registry.is_loaded(spec.name)) for spec in registry]
    models += [
        ModelRead(
            name=name,
            source="config",
            weights=None,
            input_size=[0, 0],
            channels=0,
            mean=[],
            std=[],
            loaded=False,
            error=error,
        )
        for name, error in registry.errors.items()
    ]
    return ModelList(models=sorted(models, key=lambda m: m.name), problems=registry.problems)


@router.get("/{model}", responses={404: {"model": Problem}})
async def read_model(model: str, registry: RegistryDep) -> ModelRead:
    """One model, as the list gives it; 404 naming the known models."""
    spec = registry.spec(model)  # UnknownModelError: a 404 naming the models
    return _model_read(spec, registry.is_loaded(spec.name))


@router.put("/{model}", dependencies=[Depends(require_admin_key)], responses=_ADMIN)
async def register_model(
    model: str,
    spec: Annotated[
        str,
        Form(
            description="JSON: the keys of a [models.NAME] table, with 'arch' (torchvision) "
            "or 'timm'; never a factory",
            examples=['{"arch": "resnet18", "input_size": [224, 224]}'],
        ),
    ],
    weights: Annotated[UploadFile, File(description="the weights, a safetensors file")],
    registry: RegistryDep,
    pool: PoolDep,
    response: Response,
) -> ModelRead:
    """Register (or replace) a model: checked by loading it and running a forward pass."""
    try:
        table = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InvalidUploadError(f"spec is not JSON: {exc}") from None
    data = await weights.read()
    replaced = model in {s.name for s in registry if s.origin == "store"}
    registered = await pool.run(registry.register, model, table, data)
    response.status_code = 200 if replaced else 201
    return _model_read(registered, loaded=False)


@router.delete(
    "/{model}", status_code=204, dependencies=[Depends(require_admin_key)], responses=_ADMIN
)
async def delete_model(model: str, registry: RegistryDep) -> Response:
    """Remove a registered model; jobs running on it finish on the weights they started with."""
    registry.unregister(model)
    return Response(status_code=204)


@router.get("/{model}/layers", responses={404: {"model": Problem}, 503: {"model": Problem}})
async def list_layers(model: str, registry: RegistryDep, pool: PoolDep) -> LayerList:
    """Every addressable layer of a model, with its kind, output shape and axes."""
    spec = registry.spec(model)

    def compute() -> list[LayerRead]:
        loaded = registry.get(model)
        return [
            LayerRead(
                name=info.name,
                kind=info.kind,
                shape=list(info.shape),
                axes=info.axes,  # type: ignore[arg-type]
                units=info.units,
                token_grid=list(info.token_grid) if info.token_grid else None,
                prefix_tokens=info.prefix_tokens if info.axes == "tokens" else None,
                features_first=info.features_first,
                axes_note=info.why if info.axes is None else None,
            )
            for info in loaded.index.layers()
        ]

    layers = await pool.run(compute)
    return LayerList(model=model, input_shape=list(spec.input_shape), layers=layers)

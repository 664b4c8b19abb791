"""The registry and the layers of each model."""

from __future__ import annotations

from fastapi import APIRouter

from cnnviz.models import ModelSpec
from schemas.errors import Problem
from schemas.models import LayerList, LayerRead, ModelList, ModelRead
from service.deps import PoolDep, RegistryDep

router = APIRouter(prefix="/models", tags=["models"])


def _model_read(spec: ModelSpec, loaded: bool) -> ModelRead:
    return ModelRead(
        name=spec.name,
        description=spec.description,
        source=spec.source,
        weights=spec.weights,
        input_size=spec.input_size,
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
            input_size=(0, 0),
            channels=0,
            mean=[],
            std=[],
            loaded=False,
            error=error,
        )
        for name, error in registry.errors.items()
    ]
    return ModelList(models=sorted(models, key=lambda m: m.name))


@router.get("/{model}/layers", responses={404: {"model": Problem}, 503: {"model": Problem}})
async def list_layers(model: str, registry: RegistryDep, pool: PoolDep) -> LayerList:
    """Every addressable layer of a model, with its kind and output shape."""
    spec = registry.spec(model)

    def compute() -> list[LayerRead]:
        loaded = registry.get(model)
        return [
            LayerRead(name=info.name, kind=info.kind, shape=list(info.shape))
            for info in loaded.index.layers()
        ]

    layers = await pool.run(compute)
    return LayerList(model=model, input_shape=list(spec.input_shape), layers=layers)

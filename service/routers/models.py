"""The registry and the layers of each model."""

from __future__ import annotations

from fastapi import APIRouter

from cnnviz.models import ModelSpec
from schemas.errors import Problem
from schemas.models import LayerList, LayerRead, ModelList, ModelRead
from service.deps import PoolDep, RegistryDep

router = APIRouter(prefix="/models", tags=["models"])


def _model_read(spec: ModelSpec, loaded: bool) -> ModelRead:
    source = "builtin" if spec.builtin else spec.arch or spec.factory or "unknown"
    return ModelRead(
        name=spec.name,
        description=spec.description,
        source=source,
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
                axes_note=info.why if info.axes is None else None,
            )
            for info in loaded.index.layers()
        ]

    layers = await pool.run(compute)
    return LayerList(model=model, input_shape=list(spec.input_shape), layers=layers)

"""The filter-weights path: running the core and shaping the answer (blocking, for the pool)."""

from __future__ import annotations

import base64

from cnnviz.models import ModelRegistry
from cnnviz.weights import FilterWeights, filter_weights
from schemas.weights import KernelStats, WeightGrid, WeightsQuery, WeightsRead


def render(registry: ModelRegistry, model: str, layer: str, query: WeightsQuery) -> FilterWeights:
    """The grid of ``layer``'s kernels; loads the model on first use."""
    loaded = registry.get(model)
    # The query's fields are the grid options of filter_weights, by name.
    return filter_weights(loaded.module, layer, model_name=model, **dict(query))


def render_png(
    registry: ModelRegistry, model: str, layer: str, query: WeightsQuery
) -> tuple[FilterWeights, bytes]:
    """:func:`render` and its PNG."""
    weights = render(registry, model, layer, query)
    return weights, weights.png()


def render_json(registry: ModelRegistry, model: str, layer: str, query: WeightsQuery) -> bytes:
    """:func:`render`, then the ``WeightsRead`` answer serialized."""
    weights, png = render_png(registry, model, layer, query)
    layout = weights.layout
    stats = [
        KernelStats(filter=f, input_channel=c, min=lo, max=hi, mean=mean, norm=norm)
        for f, c, (lo, hi, mean, norm) in zip(
            weights.filters, weights.input_channels, weights.stats.tolist(), strict=True
        )
    ]
    read = WeightsRead(
        model=model,
        layer=weights.name,
        kind=weights.kind,
        weight_shape=list(weights.weight_shape),
        groups=weights.groups,
        mode=weights.mode,
        normalize=weights.normalize,
        scale=weights.scale,
        grid=WeightGrid(
            rows=layout.rows,
            columns=layout.columns,
            tile=layout.tile,
            padding=layout.padding,
            filters=list(weights.filters),
            input_channels=list(weights.input_channels),
        ),
        stats=stats,
        values=weights.values.tolist(),
        image=base64.b64encode(png).decode("ascii"),
    )
    return read.model_dump_json().encode()


def png_headers(weights: FilterWeights) -> dict[str, str]:
    """The layout of a weights grid returned as a bare PNG, in response headers."""
    layout = weights.layout
    return {
        "X-Layer": weights.name,
        "X-Weight-Shape": ",".join(map(str, weights.weight_shape)),
        "X-Weight-Mode": weights.mode,
        "X-Grid-Rows": str(layout.rows),
        "X-Grid-Columns": str(layout.columns),
        "X-Grid-Tile": f"{layout.tile[0]},{layout.tile[1]}",
        "X-Grid-Padding": str(layout.padding),
        "X-Grid-Filters": ",".join(map(str, layout.channels)),
        "X-Grid-Input-Channels": ",".join(
            "" if c is None else str(c) for c in weights.input_channels
        ),
    }

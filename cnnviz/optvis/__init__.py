"""Feature visualization: optimize images that a unit of a network responds to most.

Lucid's four roles, typed and without globals: :mod:`~cnnviz.optvis.param` (how an image is
made from the numbers optimized), :mod:`~cnnviz.optvis.transform` (random, differentiable
robustness transforms), :mod:`~cnnviz.optvis.objectives` (what to maximise, for how many
units) and :mod:`~cnnviz.optvis.render` (the batched, chunked optimizer loop)::

    from cnnviz.optvis import RenderSettings, objectives, visualize

    result = visualize(
        model,
        objectives.channel("layer3", range(32)),
        input_shape=(3, 128, 128),
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        settings=RenderSettings(steps=256),
    )
    result.images  # (32, 3, 128, 128) float32 in [0, 1]
"""

from cnnviz.optvis import objectives
from cnnviz.optvis.checkpoint import RenderCheckpoint
from cnnviz.optvis.render import (
    MemoryPlan,
    RenderResult,
    RenderSettings,
    StepReport,
    check_objective,
    device_memory_budget_mb,
    plan_memory,
    precompile,
    preview_bytes,
    visualize,
)

__all__ = [
    "MemoryPlan",
    "RenderCheckpoint",
    "RenderResult",
    "RenderSettings",
    "StepReport",
    "check_objective",
    "device_memory_budget_mb",
    "objectives",
    "plan_memory",
    "precompile",
    "preview_bytes",
    "visualize",
]

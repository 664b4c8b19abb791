"""A render resumed from a checkpoint ends exactly where an uninterrupted one does (CPU)."""

from __future__ import annotations

import pytest
import torch

from cnnviz.errors import InvalidArgumentError
from cnnviz.models import ModelRegistry
from cnnviz.optvis import RenderCheckpoint, RenderResult, RenderSettings, objectives, visualize

STEPS = 12
# Diversity, redirected ReLUs for the first steps, the standard random transforms: every
# piece of state a resumed run could get wrong.
SETTINGS = RenderSettings(
    steps=STEPS, image_size=32, seed=7, diversity=0.5, redirect_relu_steps=4, memory_budget_mb=7
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _render(**kwargs: object) -> RenderResult:
    shapes = ModelRegistry().get("shapes")
    return visualize(
        shapes.module,
        objectives.channel("block2.relu", [0, 0, 3, 3, 5, 5]),
        input_shape=shapes.spec.input_shape,
        mean=shapes.spec.mean,
        std=shapes.spec.std,
        settings=SETTINGS,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[RenderResult, list[RenderCheckpoint]]:
    saved: list[RenderCheckpoint] = []
    result = _render(on_checkpoint=saved.append, checkpoint_every=5)
    return result, saved


def test_checkpoints_come_every_n_steps_over_the_chunks(
    uninterrupted: tuple[RenderResult, list[RenderCheckpoint]],
) -> None:
    result, saved = uninterrupted
    assert result.n_chunks >= 2, "the 7 MiB budget must split the units into chunks"
    total = STEPS * result.n_chunks
    assert [c.chunk * STEPS + c.step for c in saved] == list(range(5, total + 1, 5))


@pytest.mark.parametrize("which", [0, 1, -1])
def test_a_resumed_render_equals_an_uninterrupted_one(
    uninterrupted: tuple[RenderResult, list[RenderCheckpoint]], which: int
) -> None:
    result, saved = uninterrupted
    checkpoint = RenderCheckpoint.from_bytes(saved[which].to_bytes())
    steps: list[int] = []
    resumed = _render(resume=checkpoint, on_step=lambda report: steps.append(report.step))
    assert torch.equal(resumed.images, result.images)
    assert resumed.objectives == result.objectives
    assert resumed.initial_objectives == result.initial_objectives
    # Progress goes on from the checkpoint, never from 0.
    done = checkpoint.chunk * STEPS + checkpoint.step
    assert steps == list(range(done + 1, STEPS * result.n_chunks + 1))


def test_a_checkpoint_of_another_render_is_refused(
    uninterrupted: tuple[RenderResult, list[RenderCheckpoint]],
) -> None:
    _, saved = uninterrupted
    shapes = ModelRegistry().get("shapes")
    with pytest.raises(InvalidArgumentError, match="is not one of this render"):
        visualize(
            shapes.module,
            objectives.channel("block2.relu", [1]),
            input_shape=shapes.spec.input_shape,
            mean=shapes.spec.mean,
            std=shapes.spec.std,
            settings=RenderSettings(steps=STEPS, image_size=32),
            resume=saved[0],
        )


def test_bytes_that_are_not_a_checkpoint_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="not a render checkpoint"):
        RenderCheckpoint.from_bytes(b"PK\x03\x04 not a checkpoint")

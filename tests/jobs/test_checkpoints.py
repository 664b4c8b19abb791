"""An optimization job's checkpoints: saved when due, and a run resumed from one ends where
an uninterrupted run does (on CPU, exactly)."""

from __future__ import annotations

from cnnviz.models import ModelRegistry
from cnnviz.optvis import RenderCheckpoint
from schemas.optimization import OptimizationCreate
from workers.kinds import JobContext
from workers.kinds.optimization import optimize

REQUEST = OptimizationCreate(layer="block2.relu", channels=[1, 4], steps=30, image_size=32)


def test_checkpoints_are_saved_every_n_steps_when_due_and_resume_to_the_same_result() -> None:
    loaded = ModelRegistry.from_file(None).get("shapes")
    saved: list[bytes] = []
    context = JobContext(on_checkpoint=saved.append, checkpoint_steps=10)
    whole = optimize(REQUEST, loaded, context)
    assert [RenderCheckpoint.from_bytes(s).step for s in saved] == [10, 20, 30]

    resumed = optimize(REQUEST, loaded, JobContext(resume=saved[0]))
    assert [u.objective for u in resumed.units] == [u.objective for u in whole.units]
    assert [u.image for u in resumed.units] == [u.image for u in whole.units]


def test_checkpoints_are_not_saved_more_often_than_their_interval() -> None:
    loaded = ModelRegistry.from_file(None).get("shapes")
    saved: list[bytes] = []
    context = JobContext(on_checkpoint=saved.append, checkpoint_steps=1, checkpoint_interval_s=3600)
    optimize(REQUEST, loaded, context)
    assert saved == []


def test_a_checkpoint_of_another_render_is_set_aside_and_the_job_starts_over() -> None:
    loaded = ModelRegistry.from_file(None).get("shapes")
    saved: list[bytes] = []
    other = REQUEST.model_copy(update={"channels": [1, 4, 7]})  # three units, not two
    optimize(other, loaded, JobContext(on_checkpoint=saved.append, checkpoint_steps=10))
    fresh = optimize(REQUEST, loaded)
    started_over = optimize(REQUEST, loaded, JobContext(resume=saved[0]))
    assert [u.image for u in started_over.units] == [u.image for u in fresh.units]

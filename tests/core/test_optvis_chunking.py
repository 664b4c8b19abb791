"""Splitting a batch of units into chunks."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from cnnviz.errors import InvalidArgumentError
from cnnviz.optvis.chunking import measure_step_bytes, plan_chunks


def test_consecutive_runs_without_groups() -> None:
    assert plan_chunks([0, 1, 2, 3, 4], 2, keep_groups=False) == [[0, 1], [2, 3], [4]]


def test_groups_stay_whole_across_several_chunks() -> None:
    assert plan_chunks([0, 0, 1, 1, 2], 2, keep_groups=True) == [[0, 1], [2, 3], [4]]


def test_a_group_larger_than_a_chunk_is_an_error() -> None:
    with pytest.raises(InvalidArgumentError):
        plan_chunks([0, 0, 0], 2, keep_groups=True)


def test_a_memory_probe_counts_what_autograd_saves_and_keeps_none_of_it() -> None:
    kept: list[weakref.ref[torch.Tensor]] = []

    def build() -> torch.Tensor:
        x = torch.ones(1, 4, 8, 8, requires_grad=True)
        y = torch.sigmoid(x)  # saves its own output: 256 floats
        kept.append(weakref.ref(y))
        return y.sum()

    # The saved output, plus two gradient buffers as large as the largest saved tensor.
    assert measure_step_bytes(build, exclude=[]) == 3 * 256 * 4
    gc.collect()
    # A saved output held by the probe would hold its own graph: a cycle gc cannot see.
    assert kept[0]() is None

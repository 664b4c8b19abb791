"""Splitting a batch of units into chunks."""

from __future__ import annotations

import pytest

from cnnviz.errors import InvalidArgumentError
from cnnviz.optvis.chunking import plan_chunks


def test_consecutive_runs_without_groups() -> None:
    assert plan_chunks([0, 1, 2, 3, 4], 2, keep_groups=False) == [[0, 1], [2, 3], [4]]


def test_groups_stay_whole_across_several_chunks() -> None:
    assert plan_chunks([0, 0, 1, 1, 2], 2, keep_groups=True) == [[0, 1], [2, 3], [4]]


def test_a_group_larger_than_a_chunk_is_an_error() -> None:
    with pytest.raises(InvalidArgumentError):
        plan_chunks([0, 0, 0], 2, keep_groups=True)

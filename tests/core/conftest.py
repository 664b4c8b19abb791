"""Fixtures the core's test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a module's tests. On two shared cores it avoids OpenMP
    spin contention on small tensors (several times faster on a busy machine, ~5× for the
    quality tests); results do not depend on it. A module asks for it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

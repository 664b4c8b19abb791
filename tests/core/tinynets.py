"""Tiny architectures for registry tests, used as factories: ``tests.core.tinynets:build``."""

from __future__ import annotations

from torch import nn


def build(width: int = 4) -> nn.Module:
    """A two-conv network on 1-channel 16×16 input."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2, 3, padding=1),
    )


def not_a_module() -> str:
    return "nope"

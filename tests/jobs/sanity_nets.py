"""Planted nets for sanity checks over HTTP, kept with weights files (so their weights have a
digest, under which verdicts are kept): one whose saliency is its weights, one whose saliency
no weight can change. 1 channel, 8×8 inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

SIZE = 8


class Linear(nn.Module):
    """Two scores linear in the pixels of a ``size``×``size`` image: saliency is ``|W_k|``,
    all learned (passes)."""

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        self.fc = nn.Linear(size * size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Blind(nn.Module):
    """Two scores ``s_k · sum(x²)``: saliency is ``|2 s_k x|``, whose ranking no weight
    changes (fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Linear(1, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(x.pow(2).flatten(1).sum(dim=1, keepdim=True))


def linear() -> nn.Module:
    return Linear()


def blind() -> nn.Module:
    return Blind()


def planted_models(directory: Path) -> str:
    """The models file entries of ``linear`` and ``blind``, their weights saved (seeded)
    under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, net in (("linear", Linear), ("blind", Blind)):
        torch.manual_seed(1234)  # not the check's seed (0), which would draw them again
        weights = directory / f"{name}.safetensors"
        save_file(net().state_dict(), str(weights))
        entries.append(
            f'[models.{name}]\nfactory = "tests.jobs.sanity_nets:{name}"\n'
            f'weights = "{weights}"\ninput_size = [{SIZE}, {SIZE}]\nchannels = 1\n'
            'mean = [0.0]\nstd = [1.0]\nlabels = ["a", "b"]\n'
        )
    return "\n".join(entries)

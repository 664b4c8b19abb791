"""A plain fp32 Lucid-style optimization loop, written in torch alone (nothing of cnnviz).

The independent floor of ``bench/service_job.py``: the same recipe as a cnnviz job, written the
way Lucid/Lucent renders units. Fourier parameterization (1/f scale, orthonormal inverse FFT,
÷4), decorrelated colour (Lucid's ``color_correlation_svd_sqrt``), sigmoid; Lucid's standard
transforms scaled to the image (pad 12, jitter 8, scale 0.9-1.1, rotate ±10°, jitter 4 at 224
px), then a bilinear resize to the model's input size, ImageNet normalisation, the **whole
network** run (the layer caught by a forward hook, as Lucent does), the negated channel mean
as loss, Adam at 0.05. fp32, contiguous memory, torch's default thread count. The units are
optimized together as one batch (what Lucent does with a batched objective), which is
cheaper per unit than one render per unit. The weights are frozen (no weight gradients).

Run as a server for the benchmark (one line ``run`` on stdin → one JSON line on stdout with
the seconds of one whole render, model already built; ``warm``: a 2-step render)::

    python -m bench.lucid_floor --layer layer3 --channels 8 --steps 64 --size 128 --input 224
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Lucid's color_correlation_svd_sqrt.
COLOR = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _crop(x: torch.Tensor, offsets: torch.Tensor, d: int) -> torch.Tensor:
    """Per image, an ``(H - d, W - d)`` crop at its own offset (a random jitter by ``d``)."""
    h, w = x.shape[-2] - d, x.shape[-1] - d
    rows = [
        img[:, dy : dy + h, dx : dx + w] for img, (dy, dx) in zip(x, offsets.tolist(), strict=True)
    ]
    return torch.stack(rows)


def lucid_transforms(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    pad: int,
    jitter1: int,
    jitter2: int,
    size: int,
    antialias: bool = False,
) -> torch.Tensor:
    """Lucid's standard transforms, written out: pad with grey, jitter, scale 0.9-1.1 and
    rotate ±10° (one affine resampling per image), jitter again, resize to ``size``."""
    n = x.shape[0]
    x = F.pad(x, (pad,) * 4, value=0.5)
    x = _crop(x, torch.randint(0, jitter1 + 1, (n, 2), generator=g), jitter1)
    s = torch.empty(n).uniform_(0.9, 1.1, generator=g)
    a = torch.empty(n).uniform_(-10, 10, generator=g) * (math.pi / 180)
    zero = torch.zeros(n)
    theta = torch.stack(
        [
            torch.stack([a.cos() / s, -a.sin() / s, zero], 1),
            torch.stack([a.sin() / s, a.cos() / s, zero], 1),
        ],
        1,
    ).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    x = _crop(x, torch.randint(0, jitter2 + 1, (n, 2), generator=g), jitter2)
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
    )


class LucidLoop:
    """``render(channels, steps)`` optimizes one image per channel of ``layer``."""

    def __init__(self, model: nn.Module, layer: str, size: int, input_size: int, device):
        self.model, self.size, self.input_size, self.device = model, size, input_size, device
        self.captured: list[torch.Tensor] = []
        module = dict(model.named_modules())[layer]
        module.register_forward_hook(lambda _m, _i, out: self.captured.append(out))
        unit = size / 224.0
        self.pad = max(1, round(12 * unit))
        self.jitter1, self.jitter2 = max(1, round(8 * unit)), max(1, round(4 * unit))
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        scale = 1.0 / torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / size)
        self.scale = scale[None, None, :, :, None].to(device)
        color = torch.tensor(COLOR)
        self.color = (color / color.norm(dim=0).max()).to(device)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def image(self, spectrum: torch.Tensor) -> torch.Tensor:
        s = self.size
        spectrum = torch.view_as_complex(spectrum * self.scale)
        image = torch.fft.irfft2(spectrum, s=(s, s), norm="ortho")
        return torch.sigmoid(torch.einsum("nchw,dc->ndhw", image / 4, self.color))

    def transform(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return lucid_transforms(
            x, g, pad=self.pad, jitter1=self.jitter1, jitter2=self.jitter2, size=self.input_size
        )

    def render(self, channels: list[int], steps: int, seed: int = 0) -> torch.Tensor:
        """Images ``(n, 3, size, size)`` in ``[0, 1]``, one per channel."""
        n, s = len(channels), self.size
        g = torch.Generator().manual_seed(seed)
        spectrum = (torch.randn((n, 3, s, s // 2 + 1, 2), generator=g) * 0.01).to(self.device)
        spectrum.requires_grad_(True)
        optimizer = torch.optim.Adam([spectrum], lr=0.05)
        rows = torch.arange(n, device=self.device)
        picked = torch.tensor(channels, device=self.device)
        for _ in range(steps):
            x = self.transform(self.image(spectrum), g)
            self.model((x - self.mean) / self.std)  # the whole network
            act = self.captured.pop()
            self.captured.clear()
            loss = -act[rows, picked].mean(dim=(1, 2)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(self.device)
        return self.image(spectrum).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--channels", type=int, default=8, help="channels 0..N-1")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="side of the optimized image")
    parser.add_argument("--input", type=int, default=224, help="side the model is fed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None).eval().to(device)
    for weight in model.parameters():
        weight.requires_grad_(False)
    loop = LucidLoop(model, args.layer, args.size, args.input, device)
    channels = list(range(args.channels))
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:  # "run": one render; "warm": a 2-step one
        if line.strip() not in ("run", "warm"):
            break
        start = time.perf_counter()
        loop.render(channels, args.steps if line.strip() == "run" else 2)
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()

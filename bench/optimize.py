"""Benchmark of the optvis render loop; prints ratios measured side by side in one run.

    .venv/bin/python bench/optimize.py            # CPU, about 2-3 minutes on 2 cores
    .venv/bin/python bench/optimize.py --device cuda
    .venv/bin/python bench/optimize.py --step-only   # figure 1 alone

Figures (all with torchvision resnet18, ``weights=None``, 128-pixel images):

1. one step of ``visualize()`` ÷ one step of a minimal hand-written fp32 torch loop doing the
   same Fourier parameterization, decorrelated colour, standard transforms and channel
   objective (the floor), in fp32 (target <= 1.1) and under ``precision="auto"`` (target
   <= 0.5 where auto is bf16 and channels-last, a CPU on which bf16 is faster; <= 1.1 where
   auto is fp32). Where auto is not bf16, also in bf16 asked for, to show what auto passed
   over. Medians of interleaved runs;
2. 32 channels of ``layer3`` in one batched job ÷ 32 one-channel jobs, whole jobs timed;
3. a step that stops at the layer ÷ a step that runs the whole network, early and late layer;
4. peak memory of a whole-layer job (every channel of ``layer3``) against its memory budget,
   measured in a fresh subprocess: peak RSS growth on CPU, peak allocated on CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lucid_floor import lucid_transforms, sync
from cnnviz.optvis import RenderResult, RenderSettings, StepReport, objectives, visualize
from cnnviz.optvis.param import COLOR_CORRELATION_SQRT
from cnnviz.precision import Precision, resolve_precision

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 128


def render(
    model: nn.Module,
    layer: str,
    channels: list[int],
    settings: RenderSettings,
    device: torch.device,
    on_step: Callable[[StepReport], None] | None = None,
) -> RenderResult:
    """``visualize`` of ``channels`` of ``layer`` on the bench's input (ImageNet, ``SIZE``)."""
    return visualize(
        model,
        objectives.channel(layer, channels),
        input_shape=(3, SIZE, SIZE),
        mean=MEAN,
        std=STD,
        settings=settings,
        device=device,
        on_step=on_step,
    )


def _model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval().to(device)


class Floor:
    """The hand-written loop: Fourier + decorrelated colour + sigmoid, pad 7 / jitter 5 /
    scale / rotate / jitter 2 / resize, normalisation, channel mean, Adam. One call of
    :meth:`step` is one optimization step; it returns its seconds."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        channels: list[int],
        device: torch.device,
    ) -> None:
        n, h, w = len(channels), SIZE, SIZE
        self.forward, self.device, self.n = forward, device, n
        self.g = torch.Generator().manual_seed(0)
        spectrum = torch.randn((n, 3, h, w // 2 + 1, 2), generator=self.g) * 0.01
        self.spectrum = spectrum.to(device).requires_grad_(True)
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        scale = 1.0 / torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(h, w))
        self.scale = scale[None, None, :, :, None].to(device)
        color = torch.tensor(COLOR_CORRELATION_SQRT)
        self.color = (color / color.norm(dim=0).max()).to(device)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        self.rows = torch.arange(n, device=device)
        self.picked = torch.tensor(channels, device=device)
        self.optimizer = torch.optim.Adam([self.spectrum], lr=0.05)

    def step(self) -> float:
        g, h, w = self.g, SIZE, SIZE
        start = time.perf_counter()
        spectrum = torch.view_as_complex(self.spectrum * self.scale)
        image = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")
        image = torch.sigmoid(torch.einsum("nchw,dc->ndhw", image / 4, self.color))
        x = lucid_transforms(image, g, pad=7, jitter1=5, jitter2=2, size=SIZE, antialias=True)
        act = self.forward((x - self.mean) / self.std)
        loss = -act[self.rows, self.picked].mean(dim=(1, 2)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        sync(self.device)
        return time.perf_counter() - start


def interleaved_visualize(
    model: nn.Module,
    layer: str,
    channels: list[int],
    steps: int,
    device: torch.device,
    floor: Floor,
    redirect_steps: int = 0,
    precision: Precision = "fp32",
) -> tuple[list[float], list[float]]:
    """Seconds of each ``visualize`` step and of a floor step run between each two of them.

    The floor steps run inside ``on_step``; a ``visualize`` step is timed from the end of one
    floor step to the next callback, so both loops see the same machine load.
    """
    ours: list[float] = []
    theirs: list[float] = []
    last: list[float] = []

    def on_step(_: StepReport) -> None:
        sync(device)  # the step's kernels: a report no longer waits for them
        if last:
            ours.append(time.perf_counter() - last[-1])
        theirs.append(floor.step())
        last.append(time.perf_counter())

    settings = RenderSettings(steps=steps, redirect_relu_steps=redirect_steps, precision=precision)
    render(model, layer, channels, settings, device, on_step)
    return ours, theirs[1:]


def job_seconds(
    model: nn.Module, layer: str, channels: list[int], steps: int, device: torch.device
) -> float:
    """Seconds of one whole ``visualize`` call (validation, probe, evaluations included)."""
    start = time.perf_counter()
    render(model, layer, channels, RenderSettings(steps=steps), device)
    sync(device)
    return time.perf_counter() - start


def bench_floor(model: nn.Module, device: torch.device, steps: int) -> dict[str, float]:
    layer, channels = "layer3", list(range(8))
    truncated = create_feature_extractor(model, [layer])
    for weight in model.parameters():
        weight.requires_grad_(False)
    try:
        floor = Floor(lambda x: truncated(x)[layer], channels, device)
        floor.step()  # warm-up
        ours, theirs = interleaved_visualize(model, layer, channels, steps, device, floor)
        auto, theirs_a = interleaved_visualize(
            model, layer, channels, steps, device, floor, precision="auto"
        )
        redirected, theirs_r = interleaved_visualize(
            model, layer, channels, steps, device, floor, redirect_steps=steps
        )
        bf16: list[float] = []
        theirs_b: list[float] = []
        if resolve_precision("auto", device).precision != "bf16":  # what auto passed over
            bf16, theirs_b = interleaved_visualize(
                model, layer, channels, steps, device, floor, precision="bf16"
            )
    finally:
        for weight in model.parameters():
            weight.requires_grad_(True)
    return {
        "step_ours_s": statistics.median(ours),
        "step_floor_s": statistics.median(theirs),
        "step_auto_s": statistics.median(auto),
        "step_floor_a_s": statistics.median(theirs_a),
        "step_redirected_s": statistics.median(redirected),
        "step_floor_r_s": statistics.median(theirs_r),
        **(
            {"step_bf16_s": statistics.median(bf16), "step_floor_b_s": statistics.median(theirs_b)}
            if bf16
            else {}
        ),
    }


def bench_batching(model: nn.Module, device: torch.device) -> dict[str, float]:
    layer, steps, n = "layer3", 5, 32
    job_seconds(model, layer, [0], steps, device)  # warm-up
    batched, singles = 0.0, 0.0
    for half in (range(0, n // 2), range(n // 2, n)):  # interleaved against load drift
        batched += job_seconds(model, layer, list(range(n)), steps, device) / 2
        singles += sum(job_seconds(model, layer, [c], steps, device) for c in half)
    return {"batched_s": batched, "singles_s": singles}


def _whole_network(
    model: nn.Module, layer: str
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.utils.hooks.RemovableHandle]:
    """A forward through the whole model that returns ``layer``'s output, caught by a hook
    (what Lucent does); remove the handle afterwards."""
    captured: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, o: captured.__setitem__("x", o))

    def whole(x: torch.Tensor) -> torch.Tensor:
        model(x)
        return captured.pop("x")

    return whole, handle


def bench_truncation(model: nn.Module, device: torch.device, steps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for weight in model.parameters():
        weight.requires_grad_(False)
    for layer in ("layer1", "layer4"):
        truncated = create_feature_extractor(model, [layer])
        whole, handle = _whole_network(model, layer)
        try:
            short_loop = Floor(lambda x: truncated(x)[layer], [0, 1, 2, 3], device)  # noqa: B023
            whole_loop = Floor(whole, [0, 1, 2, 3], device)
            short_loop.step(), whole_loop.step()  # warm-up
            pairs = [(short_loop.step(), whole_loop.step()) for _ in range(steps)]
        finally:
            handle.remove()
        out[f"{layer}_stop_s"] = statistics.median(p[0] for p in pairs)
        out[f"{layer}_whole_s"] = statistics.median(p[1] for p in pairs)
    for weight in model.parameters():
        weight.requires_grad_(True)
    return out


def _peak_rss() -> int:
    """Peak resident bytes of this process image (``VmHWM``; ru_maxrss survives exec)."""
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current resident size (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def _memory_child(device_name: str, budget_mb: int) -> None:
    """Run in a subprocess: one whole-layer job; prints JSON with the peak memory growth."""
    device = torch.device(device_name)
    model = _model(device)
    # Warm up allocator, thread pools and kernels so the baseline holds them.
    render(model, "layer3", [0], RenderSettings(steps=1), device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    _reset_peak_rss()
    base_rss = _peak_rss()
    channels = 256
    start = time.perf_counter()
    settings = RenderSettings(steps=2, memory_budget_mb=budget_mb)
    result = render(model, "layer3", list(range(channels)), settings, device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _peak_rss() - base_rss
    print(
        json.dumps(
            {
                "peak_mb": peak / 2**20,
                "budget_mb": budget_mb,
                "units": channels,
                "chunks": result.n_chunks,
                "chunk_size": result.chunk_size,
                "seconds": seconds,
            }
        )
    )


def bench_memory(device: torch.device, budget_mb: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", "--device", str(device)]
    command += ["--budget", str(budget_mb)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per figure 1 and 3")
    parser.add_argument("--budget", type=int, default=256, help="memory budget (MiB), figure 4")
    parser.add_argument(
        "--step-only", action="store_true", help="figure 1 only (fp32 and auto steps), faster"
    )
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_child:
        _memory_child(args.device, args.budget)
        return

    model = _model(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print("resnet18 (weights=None), 128-px images, Fourier + decorrelated, standard transforms\n")
    rows: list[tuple[str, str, str]] = []

    floor = bench_floor(model, device, args.steps)
    rows.append(
        (
            "1 step visualize (fp32) ÷ hand-written fp32 floor (layer3, 8 ch)",
            f"{floor['step_ours_s'] * 1e3:.0f} ms / {floor['step_floor_s'] * 1e3:.0f} ms",
            f"{floor['step_ours_s'] / floor['step_floor_s']:.2f}  (target <= 1.10)",
        )
    )
    auto = resolve_precision("auto", device)
    auto_target = "<= 0.50" if auto.reduced else "<= 1.10"
    rows.append(
        (
            f"  same under precision auto ({auto.precision}"
            f"{', channels-last' if auto.channels_last else ''}) ÷ fp32 floor",
            f"{floor['step_auto_s'] * 1e3:.0f} ms / {floor['step_floor_a_s'] * 1e3:.0f} ms",
            f"{floor['step_auto_s'] / floor['step_floor_a_s']:.2f}  (target {auto_target})",
        )
    )
    rows.append(
        (
            "  same with redirected ReLU gradients (fp32) ÷ floor",
            f"{floor['step_redirected_s'] * 1e3:.0f} ms / {floor['step_floor_r_s'] * 1e3:.0f} ms",
            f"{floor['step_redirected_s'] / floor['step_floor_r_s']:.2f}",
        )
    )
    if "step_bf16_s" in floor:  # auto chose fp32: what bf16, asked for, would have cost
        rows.append(
            (
                "  same in bf16 (asked for; not auto's choice here) ÷ floor",
                f"{floor['step_bf16_s'] * 1e3:.0f} ms / {floor['step_floor_b_s'] * 1e3:.0f} ms",
                f"{floor['step_bf16_s'] / floor['step_floor_b_s']:.2f}",
            )
        )

    if args.step_only:
        _show(rows)
        return
    batching = bench_batching(model, device)
    ratio = batching["batched_s"] / batching["singles_s"]
    target = "(CPU target <= 1.10)" if device.type == "cpu" else "(GPU target <= 0.125)"
    rows.append(
        (
            "32 ch layer3, 1 batched job ÷ 32 single jobs (5 steps)",
            f"{batching['batched_s']:.1f} s / {batching['singles_s']:.1f} s",
            f"{ratio:.2f} per channel  {target}",
        )
    )

    trunc = bench_truncation(model, device, args.steps)
    for layer in ("layer1", "layer4"):
        stop, whole = trunc[f"{layer}_stop_s"], trunc[f"{layer}_whole_s"]
        rows.append(
            (
                f"step stopping at {layer} ÷ whole network (4 ch)",
                f"{stop * 1e3:.0f} ms / {whole * 1e3:.0f} ms",
                f"{stop / whole:.2f}",
            )
        )

    memory = bench_memory(device, args.budget)
    rows.append(
        (
            f"whole layer3 ({memory['units']} ch, 2 steps) peak memory ÷ budget",
            f"{memory['peak_mb']:.0f} MiB / {memory['budget_mb']} MiB",
            f"{memory['peak_mb'] / memory['budget_mb']:.2f}  "
            f"({memory['chunks']} chunks of <= {memory['chunk_size']}, {memory['seconds']:.0f} s)",
        )
    )

    _show(rows)


def _show(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    middle = max(len(r[1]) for r in rows)
    print(f"{'measure':<{width}}  {'figures':<{middle}}  ratio")
    for label, figures, ratio_text in rows:
        print(f"{label:<{width}}  {figures:<{middle}}  {ratio_text}")


if __name__ == "__main__":
    main()

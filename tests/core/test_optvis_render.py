"""The render loop on tiny models whose optimum is known by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from cnnviz.errors import InvalidArgumentError, UnknownLayerError
from cnnviz.layers import layer_index
from cnnviz.optvis import (
    RenderResult,
    RenderSettings,
    StepReport,
    check_objective,
    device_memory_budget_mb,
    objectives,
    visualize,
)

GREY = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])


pytestmark = pytest.mark.usefixtures("one_thread")


class ColourReader(nn.Module):
    """``read``: a 1×1 conv whose channel c is colour channel c of the normalised input,
    then ``relu``; ``head`` averages and maps to 2 logits.

    Channel c's objective is ``mean((x_c - 0.5) / 0.5)``: maximal (1.0) when the image's
    colour channel c is 1 everywhere.
    """

    def __init__(self, in_channels: int = 3, bias: float = 0.0) -> None:
        super().__init__()
        self.read = nn.Conv2d(in_channels, in_channels, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_channels, 2)
        with torch.no_grad():
            self.read.weight.copy_(torch.eye(in_channels).view(in_channels, in_channels, 1, 1))
            self.read.bias.fill_(bias)
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.read(x)))))


class Wide(nn.Module):
    """A random two-conv network, wide enough that a chunk of a few images costs ~1 MiB."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.tail = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def _fast(**overrides: object) -> RenderSettings:
    """Plain pixels, no transforms, a high rate: the toy optima are reached in a few steps."""
    base: dict[str, object] = dict(
        steps=40, lr=0.2, param="pixel", transforms="none", redirect_relu_steps=0
    )
    base.update(overrides)
    return RenderSettings(**base)  # type: ignore[arg-type]


def test_channel_objective_reaches_the_known_optimum() -> None:
    model = ColourReader()
    result = visualize(
        model,
        objectives.channel("read", [0, 2]),
        input_shape=(3, 8, 8),
        settings=_fast(),
        **GREY,
    )
    assert result.images.shape == (2, 3, 8, 8)
    assert result.images.dtype == torch.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert result.initial_objectives == pytest.approx([0.0, 0.0], abs=0.05)
    assert min(result.objectives) > 0.9
    red, blue = result.images[0, 0].mean(), result.images[1, 2].mean()
    assert red > 0.95 and blue > 0.95
    assert result.n_chunks == 1


def test_fourier_param_and_standard_transforms_also_reach_it() -> None:
    for settings in (_fast(transforms="standard"), _fast(param="fourier", steps=60)):
        result = visualize(
            ColourReader(),
            objectives.channel("read", 1),
            input_shape=(3, 16, 16),
            settings=settings,
            **GREY,
        )
        assert result.objectives[0] > 0.75, settings


def test_one_channel_model() -> None:
    result = visualize(
        ColourReader(in_channels=1),
        objectives.channel("read", 0),
        input_shape=(1, 8, 8),
        mean=[0.5],
        std=[0.5],
        settings=_fast(),
    )
    assert result.images.shape == (1, 1, 8, 8)
    assert result.objectives[0] > 0.9


def test_image_size_smaller_than_the_input_is_upsampled() -> None:
    result = visualize(
        ColourReader(),
        objectives.channel("read", 0),
        input_shape=(3, 32, 32),
        settings=_fast(image_size=8),
        **GREY,
    )
    assert result.images.shape == (1, 3, 8, 8)
    assert result.objectives[0] > 0.9


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    def run(seed: int) -> torch.Tensor:
        return visualize(
            Wide(),
            objectives.channel("conv2", [1, 5]),
            input_shape=(3, 16, 16),
            settings=RenderSettings(steps=6, seed=seed),
            **GREY,
        ).images

    torch.manual_seed(123)
    first = run(7)
    torch.manual_seed(456)  # the global RNG plays no part
    assert torch.equal(first, run(7))
    assert not torch.allclose(first, run(8))


def _six_tail_units(
    budget_mb: int, on_step: Callable[[StepReport], None] | None = None
) -> RenderResult:
    """Six units of ``Wide``'s ``tail`` for 4 steps; a budget of 1 MiB cuts them into chunks."""
    return visualize(
        Wide(),
        objectives.channel("tail", [0, 1, 2, 3, 0, 1]),
        input_shape=(3, 32, 32),
        settings=RenderSettings(steps=4, memory_budget_mb=budget_mb, redirect_relu_steps=2),
        on_step=on_step,
        **GREY,
    )


def test_chunked_equals_unchunked() -> None:
    def run(budget_mb: int) -> tuple[torch.Tensor, list[float], int]:
        result = _six_tail_units(budget_mb)
        return result.images, result.objectives, result.n_chunks

    whole, whole_objectives, whole_chunks = run(1024)
    chunked, chunked_objectives, n_chunks = run(1)
    assert whole_chunks == 1 and n_chunks > 1
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    assert chunked_objectives == pytest.approx(whole_objectives, abs=1e-5)


def test_a_small_preview_is_the_first_units_of_the_whole_one_shrunk() -> None:
    pairs: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def on_step(report: StepReport) -> None:
        if report.step % 4 == 2:  # mid-chunk: done, live and unstarted chunks all shown
            whole = report.preview()
            pairs.append((report.chunk, whole, report.preview(max_images=3, max_side=8)))
            # A side within the limit is left as it is.
            assert torch.equal(report.preview(max_images=2, max_side=64), whole[:2])

    result = visualize(
        Wide(),
        objectives.channel("tail", [0, 1, 2, 3, 0, 1]),
        input_shape=(3, 32, 32),
        settings=RenderSettings(steps=4, memory_budget_mb=1, redirect_relu_steps=2),
        on_step=on_step,
        **GREY,
    )
    assert result.n_chunks > 1 and {chunk for chunk, _, _ in pairs} == set(range(result.n_chunks))
    for _, whole, small in pairs:
        assert whole.shape == (6, 3, 32, 32) and small.shape == (3, 3, 8, 8)
        expected = torch.nn.functional.interpolate(whole[:3], size=(8, 8), mode="area")
        torch.testing.assert_close(small, expected)


def test_memory_budget_too_small_for_one_image_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match="memory_budget_mb"):
        visualize(
            Wide(),
            objectives.channel("tail", 0),
            input_shape=(3, 256, 256),
            settings=RenderSettings(steps=1, memory_budget_mb=1),
            **GREY,
        )


def test_model_is_left_as_found_hooks_modes_and_grads() -> None:
    model = Wide().train()
    model.conv2.requires_grad_(False)
    before_grads = [p.requires_grad for p in model.parameters()]
    hooks_before = _hook_count(model)
    visualize(
        model,
        objectives.channel("conv2", [0, 1]),
        input_shape=(3, 16, 16),
        settings=RenderSettings(steps=3, redirect_relu_steps=2),
        **GREY,
    )
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == before_grads
    assert _hook_count(model) == hooks_before
    assert all(p.grad is None for p in model.parameters())


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_cancellation_from_on_step_propagates_and_restores_the_model() -> None:
    class Cancelled(Exception):
        pass

    model = Wide().train()
    seen: list[StepReport] = []

    def on_step(report: StepReport) -> None:
        seen.append(report)
        if report.step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        visualize(
            model,
            objectives.channel("conv2", [0, 1, 2]),
            input_shape=(3, 16, 16),
            settings=RenderSettings(steps=50),
            on_step=on_step,
            **GREY,
        )
    assert [r.step for r in seen] == [1, 2, 3]
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_step_reports_count_steps_and_preview_images() -> None:
    reports: list[StepReport] = []
    result = visualize(
        ColourReader(),
        objectives.channel("read", [0, 1, 2]),
        input_shape=(3, 8, 8),
        settings=_fast(steps=4),
        on_step=reports.append,
        **GREY,
    )
    assert [(r.step, r.total) for r in reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(len(r.objectives) == 3 for r in reports)
    assert reports[-1].objectives[0] > reports[0].objectives[0]
    preview = reports[-1].preview()
    assert preview.shape == (3, 3, 8, 8) and preview.device.type == "cpu"
    assert preview.min() >= 0.0 and preview.max() <= 1.0
    # After the last step the preview shows the images being optimized: the final ones.
    torch.testing.assert_close(preview, result.images)


def test_validation_happens_before_any_step() -> None:
    model = ColourReader()
    calls: list[StepReport] = []
    with pytest.raises(UnknownLayerError, match="'reed'"):
        visualize(
            model,
            objectives.channel("reed", 0),
            input_shape=(3, 8, 8),
            on_step=calls.append,
            **GREY,
        )
    with pytest.raises(InvalidArgumentError, match=r"channel 3 .*valid channels are 0\.\.2"):
        visualize(
            model,
            objectives.channel("read", [0, 3]),
            input_shape=(3, 8, 8),
            on_step=calls.append,
            **GREY,
        )
    assert calls == []


def test_check_objective_validates_without_optimizing() -> None:
    model = ColourReader()
    check_objective(model, objectives.channel("read", [0, 1, 2]), (3, 8, 8), "colours")
    with pytest.raises(UnknownLayerError, match="colours"):
        check_objective(model, objectives.neuron("nope", 0), (3, 8, 8), "colours")
    with pytest.raises(InvalidArgumentError, match=r"valid classes are 0\.\.1"):
        check_objective(model, objectives.class_logit("fc", 2), (3, 8, 8), "colours")


def test_redirected_relu_revives_a_unit_that_starts_dead() -> None:
    # Pre-activation (x_red - 0.5) / 0.5 - 0.5 is negative on grey: the ReLU passes no
    # gradient until red exceeds 0.75, which only redirection can reach.
    def run(redirect_steps: int) -> float:
        return visualize(
            ColourReader(bias=-0.5),
            objectives.channel("relu", 0),
            input_shape=(3, 8, 8),
            settings=_fast(redirect_relu_steps=redirect_steps),
            **GREY,
        ).objectives[0]

    assert run(0) == 0.0
    assert run(20) > 0.4


def test_settings_penalties_and_bad_settings() -> None:
    plain = visualize(
        Wide(),
        objectives.channel("conv2", 0),
        input_shape=(3, 16, 16),
        settings=RenderSettings(steps=20, param="pixel", decorrelate=False),
        **GREY,
    ).images
    smooth = visualize(
        Wide(),
        objectives.channel("conv2", 0),
        input_shape=(3, 16, 16),
        settings=RenderSettings(steps=20, param="pixel", decorrelate=False, tv=5.0),
        **GREY,
    ).images

    def roughness(x: torch.Tensor) -> float:
        return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())

    assert roughness(smooth) < roughness(plain)
    with pytest.raises(InvalidArgumentError, match="steps"):
        RenderSettings(steps=0)
    with pytest.raises(InvalidArgumentError, match="mean and std"):
        visualize(
            ColourReader(),
            objectives.channel("read", 0),
            input_shape=(3, 8, 8),
            mean=[0.5],
            std=[0.5],
        )


def test_untraceable_model_falls_back_to_hooks() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.read = ColourReader().read

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.read(x)
            if y.sum() > 1e9:  # data-dependent: FX cannot trace this
                return y * 0
            return y

    model = Branchy()
    hooks = _hook_count(model)
    result = visualize(
        model,
        objectives.channel("read", [0, 1]),
        input_shape=(3, 8, 8),
        settings=_fast(),
        **GREY,
    )
    assert not layer_index(model).traceable
    assert min(result.objectives) > 0.9
    assert _hook_count(model) == hooks


def test_non_square_input() -> None:
    result = visualize(
        ColourReader(),
        objectives.channel("read", [0, 1]),
        input_shape=(3, 8, 12),
        settings=_fast(transforms="standard"),
        **GREY,
    )
    assert result.images.shape == (2, 3, 8, 12)
    assert min(result.objectives) > 0.75


def test_diversity_sets_copies_of_a_unit_apart() -> None:
    def gap(weight: float) -> float:
        objective = objectives.channel("conv2", [3, 3, 5])
        if weight:
            objective = objective + objectives.diversity("conv2", weight)
        images = visualize(
            Wide(),
            objective,
            input_shape=(3, 16, 16),
            settings=RenderSettings(steps=30, transforms="none"),
            **GREY,
        ).images
        return float((images[0] - images[1]).abs().mean())

    assert gap(100.0) > 2 * gap(0.0)


def test_forward_stops_at_the_deepest_layer_the_objective_reads() -> None:
    class WithTail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = ColourReader()
            self.tail = nn.Identity()  # a leaf for FX: called, not traced through

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.tail(self.head.read(x))

    model = WithTail()
    calls: list[int] = []
    handle = model.tail.register_forward_hook(lambda *_: calls.append(1))
    try:
        objective = objectives.channel("head.read", [0, 1])
        check_objective(model, objective, (3, 8, 8))  # one forward of zeros lists the shapes
        before = len(calls)
        visualize(
            model,
            objective,
            input_shape=(3, 8, 8),
            settings=_fast(steps=3, redirect_relu_steps=2),
            **GREY,
        )
        assert len(calls) == before
    finally:
        handle.remove()


def test_the_memory_budget_is_a_quarter_of_a_large_gpu_and_the_default_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert device_memory_budget_mb("cpu") == RenderSettings().memory_budget_mb == 1024
    sizes = {0: 143_771 << 20, 1: 2 << 30}  # an H200 and a small card

    def properties(device: torch.device) -> object:
        return type("Properties", (), {"total_memory": sizes[device.index]})()

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    assert device_memory_budget_mb("cuda:0") == 143_771 // 4
    assert device_memory_budget_mb(torch.device("cuda", 1)) == 1024  # never below the default


def test_a_reports_objectives_are_its_steps_whenever_they_are_read() -> None:
    reports: list[StepReport] = []
    read_at_once: list[list[float]] = []

    def on_step(report: StepReport) -> None:
        reports.append(report)
        if report.step % 2:  # every other report read at its step, the rest after the render
            read_at_once.append(report.objectives)

    result = _six_tail_units(1, on_step)
    assert result.n_chunks > 1
    # The reports nobody read have not been read from the device.
    assert all("objectives" not in vars(r) for r in reports if not r.step % 2)
    assert [r.objectives for r in reports if r.step % 2] == read_at_once
    size = result.chunk_size
    for report in reports:
        values, k = report.objectives, report.chunk
        done, live = slice(0, k * size), slice(k * size, (k + 1) * size)
        assert values[done] == result.objectives[done]  # finished chunks: their final values
        assert values[(k + 1) * size :] == result.initial_objectives[(k + 1) * size :]
        assert values[live] != result.initial_objectives[live]  # this step's, under transforms
    # Within a chunk each report holds its own step's values, not the last step's.
    first_chunk = [r.objectives[0] for r in reports if r.chunk == 0]
    assert len(set(first_chunk)) == len(first_chunk)

"""Precision and memory layout: what ``auto`` means per device, and that reduced precision
keeps the quality of rendered patterns and the fp32-ness of what the caller reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cnnviz import precision as precision_module
from cnnviz.errors import InvalidArgumentError
from cnnviz.models.shapes import INPUT_SIZE, MEAN, STD, load_shapes_net
from cnnviz.optvis import RenderSettings, objectives, visualize
from cnnviz.precision import Numerics, cpu_prefers_bf16, resolve_precision

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


pytestmark = pytest.mark.usefixtures("one_thread")


def _cpu(monkeypatch: pytest.MonkeyPatch, vendor: str, *flags: str) -> None:
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision_module, "cpu_vendor", lambda: vendor)


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _cpu(monkeypatch, "AuthenticAMD", "avx2", "avx512f", "avx512_bf16")
    yield


@pytest.fixture
def no_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _cpu(monkeypatch, "GenuineIntel", "avx2", "avx512f")
    yield


def test_auto_on_a_cpu_with_native_bf16_is_bf16_channels_last(native_bf16: None) -> None:
    assert cpu_prefers_bf16()
    numerics = resolve_precision("auto", "cpu")
    assert numerics == Numerics("bf16", channels_last=True, device_type="cpu")
    assert numerics.dtype == torch.bfloat16 and numerics.reduced


def test_auto_on_a_cpu_without_it_is_fp32(no_bf16: None) -> None:
    assert not cpu_prefers_bf16()
    numerics = resolve_precision("auto", "cpu")
    assert numerics.precision == "fp32" and not numerics.reduced


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
def test_amx_counts_as_native_bf16(monkeypatch: pytest.MonkeyPatch, vendor: str) -> None:
    _cpu(monkeypatch, vendor, "avx512f", "amx_tile", "amx_bf16")
    assert resolve_precision("auto", "cpu").precision == "bf16"


def test_auto_is_fp32_on_an_intel_cpu_with_bf16_dot_products_but_no_amx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # avx512_bf16 without AMX on Intel: bf16 convolutions measured 1.37x slower than fp32.
    _cpu(monkeypatch, "GenuineIntel", "avx512f", "avx512_bf16", "avx512_fp16")
    assert not cpu_prefers_bf16()
    assert resolve_precision("auto", "cpu").precision == "fp32"
    assert resolve_precision("bf16", "cpu").precision == "bf16"  # still there when asked


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo here")
def test_the_cpu_is_read_from_proc_cpuinfo() -> None:
    # The real file of this machine: the first processor's fields, flags as a set.
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    first = text.split("\n\n")[0]
    flags = next(line for line in first.splitlines() if line.startswith("flags"))
    vendor = next(line for line in first.splitlines() if line.startswith("vendor_id"))
    assert precision_module.cpu_flags() == frozenset(flags.partition(":")[2].split())
    assert precision_module.cpu_vendor() == vendor.partition(":")[2].strip()


def test_auto_elsewhere_is_fp32() -> None:
    assert resolve_precision("auto", "meta").precision == "fp32"


def test_explicit_precisions_are_honoured(no_bf16: None) -> None:
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, "cpu").precision == name


def test_unknown_precision_names_the_choices() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'fp8'.*auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(InvalidArgumentError, match="precision must be one of"):
        RenderSettings(precision="half")  # type: ignore[arg-type]


def test_run_returns_fp32_activations_and_exact_is_plain_fp32() -> None:
    conv = nn.Conv2d(3, 4, 3).eval()
    x = torch.rand(2, 3, 8, 8)
    bf16 = Numerics("bf16", channels_last=True, device_type="cpu")
    with torch.no_grad():
        out = bf16.run(lambda t: {"a": conv(t), "n": 3}, x)
        assert out["a"].dtype == torch.float32 and out["n"] == 3
        plain = conv(x)
        exact = bf16.exact().run(conv, x)
    assert torch.equal(exact, plain)  # fp32, contiguous: the very same numbers
    assert not torch.equal(out["a"], plain)  # bf16 rounding shows
    torch.testing.assert_close(out["a"], plain, atol=0.05, rtol=0.05)


def test_the_result_records_the_precision_used_and_stays_fp32() -> None:
    model = load_shapes_net()
    common = dict(input_shape=(3, *INPUT_SIZE), mean=MEAN, std=STD)
    settings = dict(steps=3, seed=0)
    for asked, used in (("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")):
        result = visualize(
            model,
            objectives.channel("block2.relu", [0, 1]),
            settings=RenderSettings(precision=asked, **settings),  # type: ignore[arg-type]
            **common,  # type: ignore[arg-type]
        )
        assert result.precision == used
        assert result.images.dtype == torch.float32
        assert all(isinstance(v, float) for v in result.objectives)
    auto = visualize(
        model, objectives.channel("block2.relu", [0]), settings=RenderSettings(steps=1), **common
    )  # type: ignore[arg-type]
    assert auto.precision == resolve_precision("auto", "cpu").precision


class Flattens(nn.Module):
    """A conv net whose head uses ``.view``, which a channels-last activation refuses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.shape[0], -1))


def test_a_model_that_refuses_channels_last_runs_contiguous() -> None:
    result = visualize(
        Flattens(),
        objectives.class_logit("fc", [0, 2]),
        input_shape=(3, 8, 8),
        mean=[0.5] * 3,
        std=[0.5] * 3,
        settings=RenderSettings(steps=5, param="pixel", transforms="none", precision="bf16"),
    )
    assert result.precision == "bf16" and not result.channels_last
    assert all(f > i for f, i in zip(result.objectives, result.initial_objectives, strict=True))


@pytest.mark.parametrize(
    ("name", "layer", "channels", "input_shape", "steps"),
    [
        ("shapes", "block3.relu", [0, 5, 9, 17], (3, *INPUT_SIZE), 128),
        ("resnet18", "layer3", [0, 1, 2, 3], (3, 64, 64), 48),
    ],
)
def test_bf16_reaches_095_of_fp32s_objective_evaluated_in_fp32(
    name: str, layer: str, channels: list[int], input_shape: tuple[int, int, int], steps: int
) -> None:
    if name == "shapes":
        model, norm = load_shapes_net(), dict(mean=MEAN, std=STD)
    else:
        torch.manual_seed(0)
        model, norm = torchvision.models.resnet18(weights=None).eval(), IMAGENET
    results = {
        precision: visualize(
            model,
            objectives.channel(layer, channels),
            input_shape=input_shape,
            settings=RenderSettings(steps=steps, seed=3, precision=precision),  # type: ignore[arg-type]
            **norm,  # type: ignore[arg-type]
        )
        for precision in ("fp32", "bf16")
    }
    fp32, bf16 = results["fp32"], results["bf16"]
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    # RenderResult.objectives are evaluated in fp32 whatever the precision of the run. The
    # result's objective is what the render maximises, the sum over its units; each unit on
    # its own is also close (random-weight resnet18 units never saturate, and two runs that
    # round differently drift apart a little: 0.94 to 1.01 of fp32 per unit at 96 px).
    assert sum(bf16.objectives) >= 0.95 * sum(fp32.objectives)
    for ours, theirs, start in zip(
        bf16.objectives, fp32.objectives, fp32.initial_objectives, strict=True
    ):
        assert theirs > start  # the fp32 run did optimize: the comparison means something
        assert ours >= 0.9 * theirs

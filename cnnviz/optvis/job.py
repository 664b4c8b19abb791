"""What one render needs, fixed before its first step: the objective checked against the model,
the forward pass it optimizes through, the parameterization and transforms of its units."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from cnnviz.axes import unit_maps
from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging.preprocess import normalize
from cnnviz.layers import LayerIndex, layer_index
from cnnviz.optvis import objectives as obj
from cnnviz.optvis.compiled import compiled_graph
from cnnviz.optvis.param import ImageParam, make_param
from cnnviz.optvis.settings import RenderSettings
from cnnviz.optvis.stepgraph import step_graphs
from cnnviz.optvis.transform import Compose, Resize, Transform, standard_transforms
from cnnviz.precision import Numerics, resolve_precision

__all__ = ["check_objective"]

# Random streams drawn per unit from (seed, unit, stream).
_INIT_STREAM = 0
_TRANSFORM_STREAM = 1


def _generator(seed: int, unit: int, stream: int) -> torch.Generator:
    """A CPU generator for one unit's random stream, independent of every other unit's."""
    state = np.random.SeedSequence([seed, unit, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _check_input(
    input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> tuple[int, int, int]:
    if len(input_shape) != 3 or input_shape[0] not in (1, 3) or min(input_shape[1:]) < 1:
        raise InvalidArgumentError(
            f"input_shape must be (C, H, W) with C 1 or 3, got {tuple(input_shape)}"
        )
    channels = input_shape[0]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise InvalidArgumentError(
            f"mean and std need {channels} values (std > 0) for a {channels}-channel model, "
            f"got mean={list(mean)} std={list(std)}"
        )
    return channels, input_shape[1], input_shape[2]


def check_objective(
    model: nn.Module,
    objective: obj.Objective,
    input_shape: tuple[int, int, int],
    model_name: str = "model",
) -> None:
    """Validate ``objective`` against ``model`` without optimizing anything.

    Raises ``UnknownLayerError`` for a layer the model lacks, ``InvalidArgumentError`` for a
    unit out of range (the message names the valid range), ``LayerShapeError`` for a layer of
    the wrong kind. Costs one forward pass of zeros per model, the first time (cached).
    """
    _check_input(input_shape, [0.0] * input_shape[0], [1.0] * input_shape[0])
    objective.validate(layer_index(model, input_shape, model_name))


def _with_settings_terms(objective: obj.Objective, settings: RenderSettings) -> obj.Objective:
    """``objective`` plus the penalties and diversity that ``settings`` asks for."""
    extra = []
    if settings.l1 > 0:
        extra.append(obj.l1(settings.l1))
    if settings.l2 > 0:
        extra.append(obj.l2(settings.l2))
    if settings.tv > 0:
        extra.append(obj.total_variation(settings.tv))
    if settings.diversity > 0:
        if not objective.layers:
            raise InvalidArgumentError("diversity needs an objective that reads a layer")
        extra.append(obj.diversity(objective.layers[0], settings.diversity))
    return sum(extra, objective)


class _Forward:
    """Normalise, run the truncated model, and return ``{layer: activations}`` in fp32.

    Holds the extractor for the objective's layers; for the steps, a copy of its graph with
    the batch norms folded into the convolutions; when asked, a copy of what
    the steps run with redirected ReLU gradients; and the :class:`Numerics` they run in.
    Exact evaluations run the plain extractor in fp32. With ``compile``, the steps that are
    not redirected run the folded graph compiled (:mod:`cnnviz.optvis.compiled`). Built
    inside :func:`~cnnviz.layers.preserved_state`.
    """

    def __init__(
        self,
        index: LayerIndex,
        layers: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        redirect: bool,
        numerics: Numerics,
        input_shape: tuple[int, int, int],
        compile: bool = False,
    ) -> None:
        self._keys = {name: index.node(name) for name in layers}
        # Terms read every layer unit-first (cnnviz.axes.unit_maps).
        self._infos = {info.name: info for info in index.usable(list(layers))}
        self._plain = index.extractor(list(layers)) if layers else None
        if isinstance(self._plain, nn.Module):
            self._plain.eval()
        # What the optimization steps run: the graph with batch norms folded (exact
        # evaluations keep the plain graph, see cnnviz.optvis.fold).
        self._steps = self._plain
        self._redirected = None
        if isinstance(self._plain, fx.GraphModule):
            graphs = step_graphs(self._plain, redirect)
            self._steps, self._redirected = graphs.folded, graphs.redirected
        param = next(index.model.parameters(), None)
        self._dtype = param.dtype if param is not None else torch.float32
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self._std = torch.tensor(std, dtype=torch.float32, device=device)
        self.numerics = numerics
        self._input_shape = input_shape
        self._compile = compile and isinstance(self._steps, fx.GraphModule)
        self._compiled: Callable[[torch.Tensor], Any] | None = None

    @property
    def step_graph(self) -> fx.GraphModule | None:
        """The graph the steps run (None for a model served through hooks)."""
        return self._steps if isinstance(self._steps, fx.GraphModule) else None

    @property
    def compiled(self) -> bool:
        """Whether the steps (past the redirected ones) run the compiled graph."""
        return self._compile

    def _compiled_steps(self) -> Callable[[torch.Tensor], Any]:
        if self._compiled is None:
            assert isinstance(self._steps, fx.GraphModule)
            self._compiled = compiled_graph(self._steps, self.numerics, self._input_shape)
        return self._compiled

    def __call__(
        self, x: torch.Tensor, redirect: bool = False, exact: bool = False, step: bool = False
    ) -> dict[str, torch.Tensor]:
        """``x``: ``(n, C, H, W)`` in [0, 1] at the model's input size. ``exact``: in fp32
        with a contiguous input, whatever the numerics. ``step``: an optimization step, which
        runs the compiled graph where the render compiles (probes and checks stay eager)."""
        if self._plain is None or self._steps is None:
            return {}
        x = normalize(x, self._mean, self._std).to(self._dtype)
        run: Callable[[torch.Tensor], Any] = self._steps
        if redirect and self._redirected is not None:
            run = self._redirected
        elif self._compile and step and not exact:
            run = self._compiled_steps()
        if exact:
            run = self._plain
        numerics = self.numerics.exact() if exact else self.numerics
        out = numerics.run(run, x)
        return {name: unit_maps(out[key], self._infos[name]) for name, key in self._keys.items()}

    def check_layout(self, input_shape: tuple[int, int, int]) -> None:
        """Drop channels-last for a model that cannot take it (a ``.view`` of an activation
        that channels-last made non-contiguous), found by one forward of two images (a
        batch of one may come out contiguous)."""
        if not self.numerics.channels_last or self._plain is None:
            return
        x = torch.zeros((2, *input_shape), device=self._mean.device)
        try:
            with torch.no_grad():
                self(x)
        except RuntimeError:
            self.numerics = self.numerics.without_channels_last()


@dataclass
class _Job:
    """Everything one render needs, fixed before the first step."""

    objective: obj.Objective
    settings: RenderSettings
    param: ImageParam
    transform: Transform
    clean: Transform  # resize only: how final and initial images are evaluated
    forward: _Forward
    device: torch.device
    groups: list[int]

    def init_raw(self, units: Sequence[int]) -> torch.Tensor:
        """Starting parameters of ``units``: ``(n, *raw_shape)`` on the device."""
        seed = self.settings.seed
        raw = [self.param.init(_generator(seed, u, _INIT_STREAM)) for u in units]
        return torch.stack(raw).to(self.device)

    def transform_params(self, units: Sequence[int]) -> torch.Tensor:
        """Every step's transform parameters of ``units``: ``(steps, n, k)`` on the device."""
        seed, steps = self.settings.seed, self.settings.steps
        drawn = [self.transform.draw(_generator(seed, u, _TRANSFORM_STREAM), steps) for u in units]
        return torch.stack(drawn, dim=1).to(self.device)

    def rows(self, units: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit index and diversity group of each row of a chunk: two ``(n,)`` int64 tensors."""
        unit_t = torch.tensor(units, dtype=torch.long, device=self.device)
        group_t = torch.tensor(
            [self.groups[u] for u in units], dtype=torch.long, device=self.device
        )
        return unit_t, group_t

    def batch(
        self,
        images: torch.Tensor,
        x: torch.Tensor,
        rows: tuple[torch.Tensor, torch.Tensor],
        redirect: bool,
        exact: bool = False,
        step: bool = False,
    ) -> obj.Batch:
        """What the objective sees: ``images`` before transforms, ``x`` the model's input."""
        return obj.Batch(images, self.forward(x, redirect, exact, step), *rows)

    def evaluate(self, raw: torch.Tensor, units: Sequence[int]) -> list[float]:
        """The units' own objective for images ``raw``, without random transforms, in fp32."""
        with torch.no_grad():
            images = self.param.images(raw)
            x = self.clean(images, images.new_empty((len(units), 0)))
            batch = self.batch(images, x, self.rows(units), redirect=False, exact=True)
            own, _ = self.objective(batch)
        return [float(v) for v in own.float().cpu().tolist()]


def _build_job(
    model: nn.Module,
    objective: obj.Objective,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    settings: RenderSettings,
    device: torch.device,
    model_name: str,
) -> _Job:
    channels, height, width = _check_input(input_shape, mean, std)
    index = layer_index(model, input_shape, model_name)
    objective.validate(index)
    side = settings.image_size
    size = (side, side) if side is not None else (height, width)
    param = make_param(
        settings.param, channels, size, decorrelate=settings.decorrelate, device=device
    )
    clean = Compose([Resize((height, width))])
    transform = (
        standard_transforms(size, (height, width)) if settings.transforms == "standard" else clean
    )
    forward = _Forward(
        index,
        objective.layers,
        mean,
        std,
        device,
        redirect=settings.redirect_relu_steps > 0,
        numerics=resolve_precision(settings.precision, device),
        input_shape=(channels, height, width),
        compile=settings.compile,
    )
    forward.check_layout(input_shape)
    return _Job(objective, settings, param, transform, clean, forward, device, objective.groups())

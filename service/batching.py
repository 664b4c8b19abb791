"""Micro-batching of the synchronous forward passes (dynamic batching, as TorchServe's
``max_batch_delay`` or Triton's dynamic batcher).

Requests for the same model, layer set and precision whose forward passes are due within a
few milliseconds of each other run as one batch: the first to arrive (the *leader*) waits up
to ``max_delay_s`` for the others while requests are still on their way (decoding), then runs
one forward for all of them; the others wait for it without holding a share of the cores. A
request that finds nobody on the way runs at once, alone, with every core. The wait is also
at most half of what one image's forward pass of that key has been taking: on a small model
whose forward takes a millisecond, waiting several for a partner costs more than a batch
saves (and under load, requests queued for a slot batch without any wait). Nor does a leader
wait when every batch size it could still reach is known to change the numbers (below): its
requests would run one by one anyway.

Each request gets exactly what its own forward pass would give: the first time a key runs as
a batch of ``n``, the leader also runs every image alone and compares the two bit for bit.
Where they differ (PyTorch picks another convolution kernel for one small image than for a
batch, and linear layers block their sums by batch size), that batch size never batches for
that key again: its requests run one by one, each in its own thread. The verdict depends on
tensor shapes only, so it holds for any image.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import torch

from cnnviz.threads import CoreShare

Outputs = dict[str, torch.Tensor]
Forward = Callable[[torch.Tensor], Outputs]

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_DELAY_S = 0.004
_WAIT_SHARE = 0.5  # of one image's forward time: the longest a leader waits for others
_SMOOTHING = 0.2  # weight of the latest forward in the running mean of its time


@dataclass
class _Batch:
    key: Hashable
    inputs: list[torch.Tensor] = field(default_factory=list)
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    # Per request: its outputs, or None: run alone.
    outputs: list[Outputs | None] = field(default_factory=list)
    error: BaseException | None = None


def _rows(outputs: Outputs, n: int) -> list[Outputs] | None:
    """A batch's outputs split per image; None if some output has no batch dimension of n."""
    if not all(
        isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n for v in outputs.values()
    ):
        return None
    return [{k: v[i : i + 1] for k, v in outputs.items()} for i in range(n)]


def _same(a: Outputs, b: Outputs) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class MicroBatcher:
    """Batches the forward passes of concurrent requests (see the module doc).

    ``cores`` is the API process's :class:`CoreShare`: waiting requests hand their share
    back, and the batch runs with the share of one running call.
    """

    def __init__(
        self,
        cores: CoreShare,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
    ) -> None:
        self._cores = cores
        self.max_batch = max(1, max_batch)
        self.max_delay_s = max(0.0, max_delay_s)
        self._cond = threading.Condition()
        self._open: dict[Hashable, _Batch] = {}
        self._coming = 0
        # (key, batch size) -> whether a batch gives what each image alone gives.
        self._exact: dict[tuple[Hashable, int], bool] = {}
        # key -> running mean of the seconds one image's forward pass takes.
        self._cost: dict[Hashable, float] = {}
        self.batches = 0  # forward passes of more than one image, for tests and metrics

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Count the request as on its way to :meth:`forward` for the block (its decoding),
        so a leader waits for it."""
        with self._cond:
            self._coming += 1
        try:
            yield
        finally:
            with self._cond:
                self._coming -= 1
                self._cond.notify_all()

    def forward(self, key: Hashable, x: torch.Tensor, run: Forward) -> Outputs:
        """``run(x)`` for ``x`` ``(1, C, H, W)``, batched with others of the same ``key``.

        ``run`` maps a batch ``(n, C, H, W)`` to ``{layer: (n, ...)}``; the caller's thread
        holds a claim of the core share. Returns this request's ``{layer: (1, ...)}``.
        """
        if self.max_batch == 1:
            return run(x)
        batch, index = self._join(key, x)
        if index == 0:
            self._lead(batch, run)
        else:
            with self._cores.idle():
                batch.done.wait()
        if batch.error is not None:
            raise batch.error
        mine = batch.outputs[index]
        return mine if mine is not None else run(x)

    def _join(self, key: Hashable, x: torch.Tensor) -> tuple[_Batch, int]:
        with self._cond:
            batch = self._open.get(key)
            if batch is None:
                batch = self._open[key] = _Batch(key)
            index = len(batch.inputs)
            batch.inputs.append(x)
            if len(batch.inputs) >= self.max_batch:
                self._close(batch)
            self._cond.notify_all()
            return batch, index

    def _close(self, batch: _Batch) -> None:
        batch.closed = True
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    def _delay(self, key: Hashable) -> float:
        """How long a leader of ``key`` waits for others at most."""
        cost = self._cost.get(key)
        if cost is None:
            return self.max_delay_s
        return min(self.max_delay_s, _WAIT_SHARE * cost)

    def _may_gain(self, batch: _Batch) -> bool:
        """Whether a batch that the requests on their way could still make might be exact
        (called under the lock): not when every size it could reach is known to change the
        numbers, so that its requests run one by one anyway (a small convolution network,
        whose kernels depend on the batch size)."""
        have = len(batch.inputs)
        reach = min(self.max_batch, have + self._coming)
        return any(self._exact.get((batch.key, n), True) for n in range(have + 1, reach + 1))

    def _lead(self, batch: _Batch, run: Forward) -> None:
        deadline = time.monotonic() + self._delay(batch.key)
        with self._cond:
            with self._cores.idle():
                while not batch.closed and self._coming > 0 and self._may_gain(batch):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            self._close(batch)
        try:
            batch.outputs = self._run(batch, run)
        except BaseException as exc:
            batch.error = exc
        finally:
            batch.done.set()

    def _timed(self, key: Hashable, run: Forward, x: torch.Tensor) -> Outputs:
        """``run(x)``, its time per image added to the key's running mean."""
        started = time.perf_counter()
        outputs = run(x)
        each = (time.perf_counter() - started) / x.shape[0]
        known = self._cost.get(key)
        self._cost[key] = each if known is None else known + _SMOOTHING * (each - known)
        return outputs

    def _run(self, batch: _Batch, run: Forward) -> list[Outputs | None]:
        n = len(batch.inputs)
        if n == 1:
            return [self._timed(batch.key, run, batch.inputs[0])]
        exact = self._exact.get((batch.key, n))
        if exact is False:
            return [None] * n  # each runs alone, in its own thread
        rows = _rows(self._timed(batch.key, run, torch.cat(batch.inputs)), n)
        self.batches += 1
        if rows is None:
            self._exact[(batch.key, n)] = False
            return [None] * n
        if exact is None:  # first batch of this size: check it against each image alone
            alone = [run(x) for x in batch.inputs]
            exact = all(_same(a, b) for a, b in zip(rows, alone, strict=True))
            self._exact[(batch.key, n)] = exact
            if not exact:
                return list(alone)
        return list(rows)

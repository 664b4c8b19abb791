"""A data set as a model's input batches: a torch ``DataLoader`` over some of its images.

Each image is decoded and preprocessed by :func:`cnnviz.imaging.preprocess` (the model's own
size, colour mode and normalisation, as for feature maps), once. Unreadable files are not
fatal: they come out as a zero image flagged ``ok = False``, for the caller to skip and count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from cnnviz.data.datasets import Dataset
from cnnviz.data.masks import InvalidMaskError, fit_mask
from cnnviz.errors import InvalidImageError
from cnnviz.imaging.preprocess import preprocess

__all__ = ["MaskedInputs", "ModelInputs", "model_batches"]

T = TypeVar("T")


class ModelInputs(TorchDataset[tuple[torch.Tensor, int, bool]]):
    """Images ``indices`` of ``dataset`` as ``(x (C, H, W) float32 normalised, index, ok)``."""

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int],
        *,
        size: tuple[int, int],
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.size = size
        self.channels = channels
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, bool]:
        index = self.indices[item]
        try:
            image = self.dataset.image(index)
            x = preprocess(
                image, size=self.size, channels=self.channels, mean=self.mean, std=self.std
            )[0]
            return x, index, True
        except (InvalidImageError, OSError, ValueError):
            return torch.zeros((self.channels, *self.size)), index, False


class MaskedInputs(ModelInputs):
    """:class:`ModelInputs` with each image's concept mask, fitted as the image is:
    ``(x, index, ok, mask (H, W) uint8, mask_ok)`` at the model's input size ``(H, W)``.

    A missing or bad mask (:class:`~cnnviz.data.masks.InvalidMaskError`, or one of another
    size than its image) gives an all-zero mask with ``mask_ok`` False; the image is still
    ``ok``. An unreadable image has neither.
    """

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, bool, torch.Tensor, bool]:  # type: ignore[override]
        index = self.indices[item]
        empty = torch.zeros(self.size, dtype=torch.uint8)
        try:
            image = self.dataset.image(index)
            x = preprocess(
                image, size=self.size, channels=self.channels, mean=self.mean, std=self.std
            )[0]
        except (InvalidImageError, OSError, ValueError):
            return torch.zeros((self.channels, *self.size)), index, False, empty, False
        try:
            mask = self.dataset.mask(index)
        except (InvalidMaskError, OSError):
            return x, index, True, empty, False
        if mask.shape != (image.height, image.width):
            return x, index, True, empty, False
        return x, index, True, fit_mask(mask, self.size), True


def model_batches(
    inputs: TorchDataset[T],
    *,
    batch_size: int,
    workers: int = 0,
    device: torch.device | str = "cpu",
    collate: Callable[[list[T]], Any] | None = None,
) -> DataLoader[T]:
    """The batches of ``inputs`` in order: of :class:`ModelInputs`,
    ``(x (N, C, H, W), index (N,), ok (N,))``; ``collate`` makes a batch of its items where
    torch's stacking does not.

    ``workers`` loader processes decode ahead of the model (0: in this process); memory is
    pinned for a CUDA ``device`` so that copies to it overlap the compute.
    """
    device = torch.device(device)
    return DataLoader(
        inputs,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )

"""The full-size overlay: the box the model saw is the box Pillow's crop cuts, and the map is
drawn there alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cnnviz.attribution import overlay_full
from cnnviz.imaging.preprocess import fit_box


@pytest.mark.parametrize(("width", "height"), [(40, 16), (16, 40), (33, 17), (16, 16)])
def test_the_box_is_the_part_that_crop_scales(width: int, height: int) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    fitted = ImageOps.fit(image, (8, 12), method=Image.Resampling.BILINEAR)
    box = fit_box(image.size, (12, 8), "crop")
    again = image.resize((8, 12), Image.Resampling.BILINEAR, box=box)
    assert np.array_equal(np.array(fitted), np.array(again))
    assert fit_box(image.size, (12, 8), "stretch") == (0, 0, width, height)


def test_the_map_lands_on_the_box_and_nowhere_else() -> None:
    attribution = torch.zeros(4, 4)
    attribution[:, :2] = 1.0  # the left half of what the model saw
    image = torch.zeros(3, 8, 16)  # black: only the overlay colours a pixel
    png = overlay_full(attribution, image, (4.0, 0.0, 12.0, 8.0), signed=False, opacity=1.0)
    picture = np.array(Image.open(io.BytesIO(png)))
    assert picture.shape == (8, 16, 3)
    assert not picture[:, :4].any() and not picture[:, 12:].any()  # margins untouched
    left, right = picture[:, 4:6].astype(int), picture[:, 10:12].astype(int)
    # turbo: 1 is dark red, 0 dark blue; the halves keep their colours at full size.
    assert (left[..., 0] > left[..., 2]).all() and (right[..., 2] > right[..., 0]).all()

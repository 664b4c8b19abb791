"""Decoding, preprocessing, colormaps, grids and PNG encoding, each against an oracle."""

from __future__ import annotations

import io
import struct
import zlib

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from cnnviz.errors import ImageTooLargeError, InvalidArgumentError, InvalidImageError
from cnnviz.imaging import (
    PAD_INDEX,
    apply_palette,
    colormap_lut,
    decode_image,
    denormalize,
    encode_png,
    grid_layout,
    normalize,
    palette,
    preprocess,
    quantize,
    tile_grid,
    to_tensor,
    upscale,
    value_range,
)

MAX_PIXELS = 1_000_000


def image_bytes(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width×height`` RGB, and one empty IDAT: what a
    decompression bomb looks like before its pixels are decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))


# --- decode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_decode_accepts_every_allowed_format(fmt: str) -> None:
    source = Image.new("RGB", (20, 10), (200, 40, 40))
    image = decode_image(image_bytes(source, fmt), max_pixels=MAX_PIXELS)
    assert image.size == (20, 10)
    assert image.format == fmt


def test_decode_takes_the_first_frame_of_an_animated_gif() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    data = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image = decode_image(data, max_pixels=MAX_PIXELS)
    assert image.convert("RGB").getpixel((4, 4)) == (255, 0, 0)


def test_decode_refuses_empty_data() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"", max_pixels=MAX_PIXELS)


def test_decode_refuses_bytes_that_are_no_image() -> None:
    with pytest.raises(InvalidImageError, match="cannot identify"):
        decode_image(b"hello, this is text and not a picture", max_pixels=MAX_PIXELS)


def test_decode_names_a_refused_format() -> None:
    tiff = image_bytes(Image.new("RGB", (4, 4)), "TIFF")
    with pytest.raises(InvalidImageError, match=r"unsupported image format TIFF.*PNG, JPEG"):
        decode_image(tiff, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_refuses_a_truncated_image(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = image_bytes(Image.fromarray(noise), fmt)
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)


def test_decode_checks_pixels_from_the_header_before_decoding() -> None:
    # The IDAT is empty: decoding would fail as truncated, so this error proves it never ran.
    with pytest.raises(ImageTooLargeError, match=r"2000×1000 = 2000000 pixels.*1000000"):
        decode_image(png_header_only(2000, 1000), max_pixels=MAX_PIXELS)


def test_decode_refuses_a_decompression_bomb() -> None:
    # 30000² = 900 Mpx, past Pillow's own bomb limit too; the file is under 100 bytes.
    with pytest.raises(ImageTooLargeError):
        decode_image(png_header_only(30_000, 30_000), max_pixels=10**9)


def test_decode_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = image_bytes(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=MAX_PIXELS).size == (20, 40)


def test_decode_drafts_a_large_jpeg_at_a_reduced_scale() -> None:
    data = image_bytes(Image.new("RGB", (1024, 768), (10, 200, 30)), "JPEG")
    image = decode_image(data, max_pixels=MAX_PIXELS, draft_size=(64, 64))
    assert min(image.size) >= 64 and image.size[0] <= 128


# --- preprocess -----------------------------------------------------------------------------


def test_preprocess_normalises_each_channel() -> None:
    image = Image.new("RGB", (10, 10), (255, 0, 51))
    x = preprocess(image, size=(4, 6), channels=3, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.2))
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.float32
    expected = torch.tensor([(1 - 0.5) / 0.5, (0 - 0.5) / 0.25, (0.2 - 0.2) / 0.2])
    torch.testing.assert_close(x[0, :, 2, 3], expected, atol=1e-6, rtol=0)


def test_normalize_works_per_channel_on_a_batch_or_an_image_and_denormalize_undoes_it() -> None:
    mean, std = (0.5, 0.5, 0.2), (0.5, 0.25, 0.2)
    pixels = torch.tensor([1.0, 0.0, 0.2]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    x = normalize(pixels, mean, std)
    assert x.shape == (2, 3, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[1, :, 1, 0], torch.tensor([1.0, -2.0, 0.0]))
    torch.testing.assert_close(normalize(pixels[0], torch.tensor(mean), torch.tensor(std)), x[0])
    torch.testing.assert_close(denormalize(x, mean, std), pixels)


def test_preprocess_to_one_channel_uses_luminance() -> None:
    image = Image.new("RGB", (8, 8), (100, 100, 100))
    x = preprocess(image, size=(8, 8), channels=1, mean=(0.0,), std=(1.0,))
    assert x.shape == (1, 1, 8, 8)
    torch.testing.assert_close(x, torch.full_like(x, 100 / 255))


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_tensor(image, 3).min().item() == 1.0


def test_sixteen_bit_grey_keeps_its_range() -> None:
    values = np.full((4, 4), 65535, dtype=np.uint16)
    values[0, 0] = 0
    image = Image.open(io.BytesIO(image_bytes(Image.fromarray(values), "PNG")))
    x = to_tensor(image, 1)
    assert x.max().item() == 1.0 and x[0, 0, 0].item() == 0.0


def test_crop_keeps_the_centre_and_stretch_keeps_everything() -> None:
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, :25] = (255, 0, 0)  # a red left strip, far from the centre square
    pixels[:, 25:] = (0, 255, 0)
    image = Image.fromarray(pixels)
    cropped = preprocess(image, size=(32, 32), channels=3, mean=(0,) * 3, std=(1,) * 3)
    stretched = preprocess(
        image, size=(32, 32), channels=3, mean=(0,) * 3, std=(1,) * 3, fit="stretch"
    )
    assert cropped[0, 0].max().item() == 0.0  # no red
    assert stretched[0, 0, :, 0].min().item() == 1.0  # red left edge


# --- colormaps ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["viridis", "gray", "magma", "inferno", "plasma", "cividis"])
def test_quantized_colours_are_matplotlibs(name: str) -> None:
    values = torch.rand(1, 50, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    indices = quantize(values.float(), torch.zeros(1), torch.ones(1))
    colours = apply_palette(indices, palette(name))
    expected = matplotlib.colormaps[name].resampled(255)(values.numpy(), bytes=True)[..., :3]
    # float32 and float64 may put a value that lies on a bin edge in neighbouring bins.
    differs = (colours.numpy().astype(int) - expected.astype(int)).__abs__().max(axis=-1)
    assert (differs > 0).mean() < 0.001


def test_gray_runs_from_black_to_white() -> None:
    lut = colormap_lut("gray")
    assert lut.shape == (255, 3) and lut.dtype == torch.uint8
    assert lut[0].tolist() == [0, 0, 0] and lut[-1].tolist() == [255, 255, 255]
    assert palette("gray")[PAD_INDEX].tolist() == [255, 255, 255]


def test_an_unknown_colormap_is_refused_with_suggestions() -> None:
    with pytest.raises(InvalidArgumentError, match=r"unknown colormap 'viridiss'.*'viridis'"):
        colormap_lut("viridiss")


def test_channel_and_layer_ranges() -> None:
    maps = torch.tensor([[[0.0, 1.0]], [[2.0, 6.0]]])  # (2, 1, 2)
    lo, hi = value_range(maps, "channel")
    assert lo.tolist() == [0.0, 2.0] and hi.tolist() == [1.0, 6.0]
    lo, hi = value_range(maps, "layer")
    assert lo.tolist() == [0.0, 0.0] and hi.tolist() == [6.0, 6.0]


def test_a_constant_channel_gets_the_first_colour() -> None:
    maps = torch.full((1, 3, 3), 7.0)
    assert quantize(maps, torch.tensor([7.0]), torch.tensor([7.0])).max().item() == 0


# --- grids ----------------------------------------------------------------------------------


def test_layout_numbers() -> None:
    layout = grid_layout(5, (2, 3), padding=1)
    assert (layout.rows, layout.columns) == (2, 3)
    assert layout.size == (2 * 3 + 1, 3 * 4 + 1)
    assert layout.origin(0) == (1, 1) and layout.origin(4) == (4, 5)
    assert layout.channels == (0, 1, 2, 3, 4)
    assert grid_layout(3, (2, 2), columns=10).columns == 3


@pytest.mark.parametrize(("count", "columns", "padding"), [(7, 3, 2), (4, 2, 0), (2, 1, 1)])
def test_tile_grid_matches_torchvision_make_grid(count: int, columns: int, padding: int) -> None:
    tiles = torch.randint(0, 255, (count, 3, 5, 4), dtype=torch.uint8)
    expected = make_grid(tiles.float(), nrow=columns, padding=padding, pad_value=9.0)
    layout = grid_layout(count, (5, 4), columns=columns, padding=padding)
    grid = tile_grid(tiles.permute(0, 2, 3, 1), layout, fill=9)
    assert torch.equal(grid.permute(2, 0, 1).float(), expected)


def test_upscale_makes_blocks() -> None:
    tiles = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.uint8)
    assert upscale(tiles, 2)[0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_a_grid_over_the_pixel_limit_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="over the limit"):
        grid_layout(512, (64, 64), max_pixels=1000)


# --- PNG ------------------------------------------------------------------------------------


def test_palette_png_decodes_to_the_palette_colours() -> None:
    indices = torch.tensor([[0, 254, PAD_INDEX], [100, 100, 0]], dtype=torch.uint8)
    colours = palette("magma")
    image = Image.open(io.BytesIO(encode_png(indices, palette=colours)))
    assert image.mode == "P"
    assert np.array_equal(np.array(image.convert("RGB")), apply_palette(indices, colours).numpy())


@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 3)])
def test_grey_and_rgb_pngs_round_trip(shape: tuple[int, ...]) -> None:
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8)
    decoded = np.array(Image.open(io.BytesIO(encode_png(pixels, compress_level=0))))
    assert np.array_equal(decoded, pixels.numpy())


def test_png_refuses_a_bad_compress_level() -> None:
    with pytest.raises(InvalidArgumentError, match=r"0\.\.9"):
        encode_png(torch.zeros((2, 2), dtype=torch.uint8), compress_level=10)

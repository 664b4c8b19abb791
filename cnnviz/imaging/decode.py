"""Decoding untrusted image bytes with Pillow, from an allowlist of formats.

Only PNG, JPEG, WebP, BMP and GIF (its first frame) are parsed at all: other formats are never
handed to a Pillow plugin, and are named in the error when their signature is recognised. The
pixel count is checked from the header, before a single pixel is decoded, so a small file that
claims a huge canvas (a decompression bomb) costs nothing. Pillow's own bomb guard
(``Image.MAX_IMAGE_PIXELS``, a process-wide setting that this module leaves alone) raises
before ours for canvases past twice its limit; both end as :class:`ImageTooLargeError`.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from cnnviz.errors import ImageTooLargeError, InvalidImageError

__all__ = ["ALLOWED_FORMATS", "decode_base64", "decode_image"]

# Pillow's format names; GIF and animated WebP give their first frame.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_ALLOWED_TEXT = "PNG, JPEG, WebP, BMP or GIF"

# Signatures of formats that are refused, only to say which format was sent.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "HDR"),
    (b"P1", "PBM"),
    (b"P2", "PGM"),
    (b"P3", "PPM"),
    (b"P4", "PBM"),
    (b"P5", "PGM"),
    (b"P6", "PPM"),
)


def _sniff(data: bytes) -> str | None:
    """The name of a refused format recognised from its first bytes, if any."""
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIC"
        return "an ISO media file (MP4/MOV/HEIF)"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")):
        return "SVG/XML"
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only; raise for an empty, unknown, refused or oversized image."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes); send a PNG, JPEG, WebP, BMP or GIF")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning is only raised where warnings are errors (tests); it means the same.
        raise ImageTooLargeError(
            f"the image is too large: {exc}; at most {max_pixels} pixels are accepted"
        ) from None
    except UnidentifiedImageError:
        other = _sniff(data)
        if other is not None:
            raise InvalidImageError(
                f"unsupported image format {other}; send {_ALLOWED_TEXT}"
            ) from None
        raise InvalidImageError(
            f"cannot identify the image ({len(data)} bytes starting {data[:8]!r}); "
            f"send {_ALLOWED_TEXT}"
        ) from None
    except Exception as exc:  # a corrupt header can raise anything inside a plugin
        raise InvalidImageError(f"cannot read the image header: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"the image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}×{height} = {width * height} pixels; "
            f"at most {max_pixels} pixels are accepted"
        )
    return image


def decode_image(
    data: bytes, *, max_pixels: int, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``data`` into a loaded Pillow image, upright (EXIF orientation applied).

    ``max_pixels`` caps width × height, checked from the header before decoding.
    ``draft_size`` ``(height, width)`` lets a JPEG decode at a reduced scale that is still at
    least that large: a 12-megapixel photo for a 224×224 model then decodes 8× smaller.
    The mode is whatever the file holds (``RGB``, ``L``, ``P``, ``RGBA``, ``I;16``, ...);
    :func:`cnnviz.imaging.preprocess.to_tensor` converts it.

    Raises :class:`InvalidImageError` for empty, unidentifiable, refused, truncated or corrupt
    data, and :class:`ImageTooLargeError` for too many pixels.
    """
    image = _open(data, max_pixels)
    try:
        if draft_size is not None and image.format == "JPEG":
            height, width = draft_size
            image.draft(image.mode, (width, height))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is too large: {exc}") from None
    except Exception as exc:  # Pillow reports bad data with OSError, SyntaxError, ValueError...
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason or isinstance(exc, EOFError):
            raise InvalidImageError(
                f"the {image.format} image is truncated ({len(data)} bytes): {reason}"
            ) from None
        raise InvalidImageError(f"the {image.format} image is corrupt: {reason}") from None
    return image


def decode_base64(text: str) -> bytes:
    """The bytes of an image file sent as base64 text (a ``data:`` URL works too).

    Raises :class:`InvalidImageError` for text that is not base64.
    """
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(
            "the 'image' field is not valid base64; send the image file's bytes in "
            "base64 (or upload them as multipart/form-data)"
        ) from None

"""Reading a request that carries one image: JSON with base64 (or a sample name), or multipart.

Shared by every synchronous endpoint that takes an image (feature maps, attributions): the
encoding rules, the error messages and the limits live here once. The options are a pydantic
model per endpoint; the JSON body is that model plus ``image`` / ``sample``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from cnnviz.data.shapes import sample_image
from cnnviz.imaging.decode import decode_base64, decode_image
from service.errors import ApiError

Options = TypeVar("Options", bound=BaseModel)


class ImageBody(Protocol):
    """A JSON body model: the options plus exactly one of ``image`` (base64) or ``sample``."""

    image: str | None
    sample: str | None


@dataclass(frozen=True)
class ImageRequest(Generic[Options]):
    """What a request asks for, either encoding: the options and one image source."""

    options: Options
    image_base64: str | None = None
    image_bytes: bytes | None = None
    sample: str | None = None

    def image(self) -> bytes:
        """The uploaded image bytes, base64 decoded where needed (runs in the torch pool)."""
        if self.image_bytes is not None:
            return self.image_bytes
        return decode_base64(self.image_base64 or "")

    def decoded(self, max_pixels: int, draft_size: tuple[int, int] | None) -> Image.Image:
        """The sample, or the image decoded under the pixel cap (blocking: the torch pool)."""
        if self.sample is not None:
            return sample_image(self.sample)
        return decode_image(self.image(), max_pixels=max_pixels, draft_size=draft_size)


def invalid(exc: ValidationError, where: str) -> RequestValidationError:
    """A pydantic error as FastAPI's, located in the ``body`` or the ``form``."""
    errors = [{**error, "loc": (where, *error["loc"])} for error in exc.errors()]
    return RequestValidationError(errors)


def is_json(media: str) -> bool:
    """``application/json`` or a ``+json`` type: what the JSON routes read."""
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def require_json(request: Request) -> None:
    """415 for a body that is not JSON, before FastAPI reads it: the job routes read JSON
    only, and a form or text body would otherwise be a puzzling 422 about a dictionary."""
    content_type = request.headers.get("content-type", "")
    if not is_json(content_type.partition(";")[0].strip().lower()):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"unsupported content type {content_type or '(none)'!r}; a job is submitted as "
            "application/json (images in it as base64)",
        )


@dataclass(frozen=True)
class ImageRequestReader(Generic[Options]):
    """How one endpoint reads its request: ``body_model`` validates a JSON body (the options
    plus ``image`` or ``sample``); ``options_model`` the form fields, where ``list_fields``
    may repeat, ``max_fields`` of them at most."""

    body_model: type[Options]
    options_model: type[Options]
    list_fields: Collection[str]
    max_fields: int

    async def __call__(self, request: Request) -> ImageRequest[Options]:
        """Parse a JSON or multipart request; 415 for any other content type, 422 for bad
        fields."""
        content_type = request.headers.get("content-type", "")
        media = content_type.partition(";")[0].strip().lower()
        if is_json(media):
            try:
                # Strict: in JSON, `true` is not 1 nor "3" a number (form fields are all text).
                create = self.body_model.model_validate_json(await request.body(), strict=True)
            except ValidationError as exc:
                raise invalid(exc, "body") from None
            source: ImageBody = create  # type: ignore[assignment]
            return ImageRequest(create, image_base64=source.image, sample=source.sample)
        if media == "multipart/form-data":
            return await _read_form(request, self.options_model, self.list_fields, self.max_fields)
        raise ApiError(
            415,
            "unsupported_media_type",
            f"unsupported content type {content_type or '(none)'!r}; send application/json "
            "with a base64 'image' (or a 'sample'), or multipart/form-data with a file field "
            "'image'",
        )


async def _read_form(
    request: Request, options_model: type[Options], list_fields: Collection[str], max_fields: int
) -> ImageRequest[Options]:
    async with request.form(max_files=1, max_fields=max_fields) as form:
        data: dict[str, Any] = {}
        image: bytes | None = None
        for key in dict.fromkeys(form.keys()):
            values = form.getlist(key)
            if key == "image":
                upload = values[0]
                if not isinstance(upload, UploadFile):
                    raise ApiError(
                        422,
                        "invalid_request",
                        "in multipart/form-data, 'image' must be a file field "
                        "(curl: -F image=@picture.png)",
                    )
                image = await upload.read()
            elif key in list_fields:
                data[key] = values
            else:
                data[key] = values[0] if len(values) == 1 else values
    sample = data.pop("sample", None)
    try:
        options = options_model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, "form") from None
    if (image is None) == (sample is None):
        raise ApiError(
            422, "invalid_request", "give exactly one of a file field 'image' or a field 'sample'"
        )
    if sample is not None and not isinstance(sample, str):
        raise ApiError(422, "invalid_request", "'sample' must be a single text field")
    return ImageRequest(options, image_bytes=image, sample=sample)

"""The exceptions the core raises.

Every error is a :class:`CnnvizError` and also a standard exception type, so callers that
know nothing of cnnviz can still catch ``LookupError`` or ``ValueError``. Messages name the
bad value and, where there is one, the way out. The HTTP layer maps each class to a status
code and a machine-readable ``code``; the core knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable

SHOWN_CHARACTERS = 80


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters when longer.

    Names come from callers: an echoed 60,000-character name would make the message the
    attack. The cut says how long the value was, which is all the caller needs to see.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, str | bytes) else ""
    return f"{text[:limit]}…{length}"


class CnnvizError(Exception):
    """Root of every error raised by cnnviz.

    ``listing`` says where the valid choices are listed, for whoever shows the message to
    point at (the service adds its route): ``("models",)``, ``("layers", model)``,
    ``("datasets",)``, or nothing. The core itself knows no routes.
    """

    code = "cnnviz_error"
    listing: tuple[str, ...] = ()

    def __init__(self, *args: object, listing: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        if listing:
            self.listing = listing


class UnknownModelError(CnnvizError, LookupError):
    """A model name that the registry does not hold."""

    code = "unknown_model"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown model {shown(name)}; known models: {', '.join(self.known) or '(none)'}",
            listing=("models",),
        )


class UnknownLayerError(CnnvizError, LookupError):
    """A layer name that the model does not have."""

    code = "unknown_layer"

    def __init__(self, name: str, model: str, suggestions: Iterable[str] = ()) -> None:
        self.name = name
        self.model = model
        self.suggestions = list(suggestions)
        hint = (
            f"; did you mean {', '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        )
        super().__init__(
            f"unknown layer {shown(name)} of model {model!r}{hint}", listing=("layers", model)
        )


class LayerShapeError(CnnvizError, ValueError):
    """A layer whose output does not have the shape an operation needs."""

    code = "unsupported_layer"


class ModelLoadError(CnnvizError, RuntimeError):
    """A registered model that cannot be built or whose weights cannot be loaded."""

    code = "model_unavailable"

    def __init__(self, name: str, cause: str) -> None:
        self.name = name
        self.cause = cause
        super().__init__(f"model {shown(name)} cannot be loaded: {cause}")


class ModelNameTakenError(CnnvizError, ValueError):
    """A model name that a registration may not take: the built-in model's, or the models
    file's."""

    code = "model_name_taken"

    def __init__(self, name: str, holder: str) -> None:
        self.name = name
        self.holder = holder
        super().__init__(
            f"model name {shown(name)} is held by {holder}; register under another name"
        )


class ModelChangedError(CnnvizError, RuntimeError):
    """A job's model whose weights are no longer the ones it was submitted for."""

    code = "model_changed"

    def __init__(self, name: str, expected: str, found: str | None) -> None:
        self.name = name
        now = f"has weights {found[:12]}…" if found else "is gone"
        super().__init__(
            f"model {shown(name)} {now}, not the {expected[:12]}… this job was submitted for "
            "(it was registered again or removed meanwhile); submit the job again"
        )


class RegistryConfigError(CnnvizError, ValueError):
    """A models file that cannot be read or has an invalid entry."""

    code = "registry_config"


class InvalidImageError(CnnvizError, ValueError):
    """Bytes that are not an image cnnviz accepts."""

    code = "invalid_image"


class ImageTooLargeError(InvalidImageError):
    """An image with more pixels than allowed (decompression bombs included)."""

    code = "image_too_large"


class InvalidArgumentError(CnnvizError, ValueError):
    """An argument out of its valid range, e.g. a channel index past the layer's width."""

    code = "invalid_argument"


class NoKernelError(LayerShapeError):
    """A layer asked for its filter weights that has no convolution kernel of its own."""

    code = "no_kernel"

"""Segmentation methods, one per module, behind :class:`~bigseg.methods.base.Method`."""
from __future__ import annotations

from pydantic import ValidationError

from bigseg.errors import ParameterError, validation_message
from bigseg.methods.base import Method
from bigseg.methods.cellpose import Cellpose
from bigseg.methods.pixel_classifier import PixelClassifier
from bigseg.methods.stardist import StarDist
from bigseg.methods.threshold import Threshold
from bigseg.methods.watershed import Watershed

METHODS: dict[str, type[Method]] = {m.model_fields["name"].default: m
                                    for m in (Threshold, Watershed, Cellpose, StarDist, PixelClassifier)}


def parameters(cls: type[Method]) -> dict:
    """A method's parameters (name -> pydantic field), without its ``name``."""
    return {k: f for k, f in cls.model_fields.items() if k != "name"}


def get_method(name: str | Method, **params) -> Method:
    """A method instance by name, with its parameters validated."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ParameterError(f"method: unknown method '{name}'; choose one of {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](**{k: v for k, v in params.items() if v is not None})
    except ValidationError as err:
        raise ParameterError(validation_message(err, METHODS[name], "method")) from None


__all__ = ["METHODS", "Cellpose", "Method", "PixelClassifier", "StarDist", "Threshold", "Watershed", "get_method",
           "parameters"]

"""Segmentation methods, one per module, behind :class:`~bigseg.methods.base.Method`."""
from __future__ import annotations

import dataclasses

from bigseg.errors import ParameterError
from bigseg.methods.base import Method
from bigseg.methods.cellpose import Cellpose
from bigseg.methods.pixel_classifier import PixelClassifier
from bigseg.methods.stardist import StarDist
from bigseg.methods.threshold import Threshold
from bigseg.methods.watershed import Watershed

METHODS: dict[str, type[Method]] = {m.name: m for m in (Threshold, Watershed, Cellpose, StarDist, PixelClassifier)}


def get_method(name: str, **params) -> Method:
    """A method instance by name, with its parameters checked by name."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ParameterError(f"unknown method '{name}'; choose one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ParameterError(f"method '{name}' has no parameter {', '.join(unknown)}; "
                             f"its parameters are {', '.join(sorted(fields))}")
    return cls(**{k: v for k, v in params.items() if v is not None})


__all__ = ["METHODS", "Cellpose", "Method", "PixelClassifier", "StarDist", "Threshold", "Watershed", "get_method"]

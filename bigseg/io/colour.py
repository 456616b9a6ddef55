"""Brightfield colour images (RGB or RGBA, uint8): which images they are, and their stains.

A stain's concentration is scikit-image's colour deconvolution (:func:`skimage.color.rgb2hed`, Ruifrok &
Johnston's haematoxylin-eosin-DAB matrix) of the R, G, B channels; it is computed pixel by pixel, so a block's
stains equal the same region of the whole image's.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from skimage.color import rgb2hed

from bigseg.errors import InputError

#: The stains of :func:`skimage.color.rgb2hed`, in its output order.
STAINS = ("hematoxylin", "eosin", "dab")
Stain = Literal["hematoxylin", "eosin", "dab"]
#: The measured colour channels of an RGB(A) image (alpha is not measured).
RGB = ("r", "g", "b")


def is_rgb(n_channels: int, dtype) -> bool:
    """An RGB or RGBA image: 3 or 4 channels of uint8."""
    return n_channels in (3, 4) and np.dtype(dtype) == np.uint8


def check_stain(stain: str | None, n_channels: int, dtype, url: str) -> None:
    """Refuse a stain for an image that is not RGB(A) uint8, saying what the image is."""
    if stain is not None and not is_rgb(n_channels, dtype):
        raise InputError(f"{url} has {n_channels} channel(s) of {np.dtype(dtype)}, but input.stain={stain} needs an "
                         "RGB or RGBA image (3 or 4 channels of uint8, e.g. a brightfield or H&E slide); leave "
                         "input.stain unset for this image")


def stains(rgb: np.ndarray) -> np.ndarray:
    """The three stain concentrations, float32 (3, ...), of RGB(A) uint8 channels (C, ...) (alpha dropped)."""
    return np.asarray(rgb2hed(np.asarray(rgb)[:3], channel_axis=0), np.float32)


def stain(rgb: np.ndarray, name: str) -> np.ndarray:
    """One stain's concentration, float32 (...), of RGB(A) uint8 channels (C, ...)."""
    return stains(rgb)[STAINS.index(name)]


def measured(channels: np.ndarray) -> np.ndarray:
    """What the table measures of an RGB(A) image's channels (C, ...): R, G, B, then the stains (6, ...)."""
    return np.concatenate([channels[:3].astype(np.float32), stains(channels)])


def channel_names(n_channels: int, dtype) -> tuple[str, ...]:
    """The table's names for the measured intensities: r, g, b and the stains for RGB(A), else c0, c1, ..."""
    if is_rgb(n_channels, dtype):
        return RGB + STAINS
    return tuple(f"c{c}" for c in range(n_channels))

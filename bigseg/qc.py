"""A quality-control picture: object outlines over the image, from a low-resolution level (cheap)."""
from __future__ import annotations

import math

import numpy as np
from skimage.color import hsv2rgb
from skimage.segmentation import find_boundaries

from bigseg.io import store
from bigseg.io.ome import ImageView, open_array

#: The picture uses the finest level with at most this many pixels per plane.
MAX_PIXELS = 2048 * 2048
#: Outline colours: 1024 fully saturated hues (a table: no float image of the outlines is made).
PALETTE = (hsv2rgb(np.stack([np.arange(1024) / 1024, np.ones(1024), np.ones(1024)], axis=-1)[None])[0]
           * 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8: the image in grey (1st-99.5th percentile), each object's outline in its own colour."""
    lo, hi = np.percentile(image, (1, 99.5)) if image.size else (0, 1)
    grey = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    edges = find_boundaries(labels, mode="inner")
    hue = (labels[edges] * 0.618033988749895) % 1.0  # golden-ratio hues: neighbours differ
    rgb[edges] = PALETTE[(hue * len(PALETTE)).astype(np.intp) % len(PALETTE)]
    return rgb


def write_overlay(view: ImageView, labels_url: str, label_paths: list[str], zarr_format: int, url: str,
                  time: bool = False) -> str:
    """Write a PNG of the middle plane (3D) or the whole plane (2D) at a level small enough to read whole (of
    the view's timepoint: with ``time``, the label arrays have the t axis first)."""
    i = picture_level(view, len(label_paths))
    lv = view.at_level(view.level + i)
    region = picture_plane(lv)
    plane = lv.read(region).reshape(lv.shape[-2:])
    index = (view.timepoint,) * time + region
    labels = np.asarray(open_array(labels_url, label_paths[i], zarr_format)[index]).reshape(lv.shape[-2:])
    return write_picture(plane, labels, url)


def picture_level(view: ImageView, n_levels: int) -> int:
    """The level (counted from the segmented one, below ``n_levels``) whose plane the picture shows."""
    for i in range(n_levels):
        lv = view.at_level(view.level + i)
        if math.prod(lv.shape[-2:]) <= MAX_PIXELS:
            return i
    return n_levels - 1


def picture_plane(lv: ImageView) -> tuple[slice, ...]:
    """The middle plane (3D) or the whole plane (2D) of a level."""
    return tuple(slice(s // 2, s // 2 + 1) for s in lv.shape[:-2]) + tuple(slice(0, s) for s in lv.shape[-2:])


def write_picture(plane: np.ndarray, labels: np.ndarray, url: str, zoom: int = 1) -> str:
    """Write :func:`overlay` of one plane and its labels as a PNG, each pixel ``zoom`` x ``zoom`` pixels."""
    import imageio.v3 as iio
    rgb = overlay(plane, labels)
    if zoom > 1:
        rgb = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
    fs, local = store.filesystem(url)
    with fs.open(local, "wb") as f:
        f.write(iio.imwrite("<bytes>", rgb, extension=".png", compress_level=1))  # zlib 1: a quarter of the time, no larger
    return url

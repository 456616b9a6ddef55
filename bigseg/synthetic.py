"""Synthetic nuclei images (with their ground truth) for the demo, the tests and the benchmark."""
from __future__ import annotations

import math
import os

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree


def nuclei(shape: tuple[int, ...], radius: tuple[float, float] = (4.0, 7.0), fill: float = 0.15,
           seed: int = 0, noise: float = 40.0, overlap: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """Bright balls (discs in 2D) on a dark, noisy background; some of them touch.

    Returns ``(image uint16, truth int32)``. ``overlap`` < 1 lets neighbours overlap slightly, so that
    touching nuclei need a watershed to be split.
    """
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    r_mean = sum(radius) / 2
    unit = math.pi * 4 / 3 * r_mean**3 if ndim == 3 else math.pi * r_mean**2
    m = max(1, int(3 * fill * math.prod(shape) / unit))
    centres = rng.uniform(0, 1, (m, ndim)) * np.asarray(shape)
    radii = rng.uniform(*radius, m)
    keep = np.ones(m, bool)
    for i, j in sorted(cKDTree(centres).query_pairs(2 * radius[1])):
        if keep[i] and keep[j] and np.linalg.norm(centres[i] - centres[j]) < overlap * (radii[i] + radii[j]):
            keep[j] = False
    centres, radii = centres[keep], radii[keep]
    n = min(len(centres), max(1, int(fill * math.prod(shape) / unit)))
    truth = np.zeros(shape, np.int32)
    for label, (c, r) in enumerate(zip(centres[:n], radii[:n]), start=1):
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = sum(((g + 0.5 - ci) / r) ** 2 for g, ci in zip(grids, c)) <= 1
        crop = truth[tuple(slice(a, b) for a, b in zip(lo, hi))]
        crop[inside & (crop == 0)] = label
    signal = ndi.gaussian_filter((truth > 0).astype(np.float32), 1.0)
    image = 200 + 800 * signal * rng.uniform(0.7, 1.0, truth.max() + 1)[truth] + rng.normal(0, noise, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), truth


def write_ome_zarr(path: str | os.PathLike, data: np.ndarray, axes: str, chunks: tuple[int, ...],
                   version: str = "0.5", levels: int = 3, scale: dict[str, float] | None = None,
                   translation: dict[str, float] | None = None, unit: str | None = None) -> str:
    """Write ``data`` as an OME-Zarr image with ome-zarr-py (NGFF 0.4 on Zarr v2 or 0.5 on Zarr v3).

    ``unit`` (an NGFF unit such as ``"micrometer"``) is given to the spatial axes.
    ``translation`` (physical units per axis name) moves the whole image: it is added to every level's
    translation, so level 0's first voxel lies at ``translation``.
    """
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image
    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(os.fspath(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    factors = tuple(2**i for i in range(1, levels))
    write_image(data, root, axes=list(axes), fmt=fmt, scale_factors=factors, scale=scale,
                storage_options={"chunks": chunks})
    key = "multiscales" if version == "0.4" else "ome"
    attrs = root.attrs[key]
    multiscales = attrs if version == "0.4" else attrs["multiscales"]
    if unit:  # ome-zarr-py 0.18 drops units given with the axes
        for axis in multiscales[0]["axes"]:
            if axis["name"] in "zyx":
                axis["unit"] = unit
    if translation:
        offset = [translation.get(a, 0.0) for a in axes]
        for ds in multiscales[0]["datasets"]:
            transforms = [t for t in ds["coordinateTransformations"] if t["type"] != "translation"]
            old = next((t["translation"] for t in ds["coordinateTransformations"] if t["type"] == "translation"),
                       [0.0] * len(axes))
            ds["coordinateTransformations"] = transforms + [
                {"type": "translation", "translation": [o + t for o, t in zip(old, offset)]}]
    root.attrs[key] = attrs
    return os.fspath(path)

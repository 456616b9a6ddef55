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
    keep = _apart(centres, radii, radius[1], overlap)
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


def _apart(centres: np.ndarray, radii: np.ndarray, r_max: float, overlap: float) -> np.ndarray:
    """Which balls to keep so that no two kept ones are closer than ``overlap`` times their radii summed: in
    index order, a ball is kept unless an earlier kept ball is too close (decided in rounds, vectorised)."""
    keep = np.ones(len(centres), bool)
    pairs = cKDTree(centres).query_pairs(2 * r_max, output_type="ndarray")  # i < j
    if not len(pairs):
        return keep
    i, j = pairs.T
    close = np.linalg.norm(centres[i] - centres[j], axis=1) < overlap * (radii[i] + radii[j])
    i, j = i[close], j[close]
    state = np.zeros(len(centres), np.int8)  # 0 undecided, 1 kept, -1 dropped
    while True:
        undecided = state == 0
        dropped = np.zeros(len(centres), bool)
        dropped[j[state[i] == 1]] = True  # an earlier neighbour is kept
        blocked = np.zeros(len(centres), bool)
        blocked[j[state[i] != -1]] = True  # an earlier neighbour may still be kept
        state[undecided & dropped] = -1
        state[undecided & ~dropped & ~blocked] = 1
        if not (state == 0).any():
            return state == 1


def slide(shape: tuple[int, int], tissue: float = 0.4, seed: int = 0, radius: tuple[float, float] = (4.0, 7.0),
          fill: float = 0.15, noise: float = 40.0, overlap: float = 0.85, blobs: float = 2.0,
          autofluorescence: float = 40.0, tile: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """A 2D whole-slide fluorescence image: a few large irregular tissue regions (``tissue`` of the area, see
    :func:`tissue_mask`) filled with nuclei as in :func:`nuclei` (``fill`` of the tissue) on a faint
    ``autofluorescence``, glass elsewhere (background noise only). ``blobs`` is about how many tissue regions
    span the longer side.

    Returns ``(image uint16, truth int32)``, made tile by tile: 16384 x 16384 in about 15 s.
    """
    if len(shape) != 2:
        raise ValueError(f"slide() makes 2D images; got shape {shape}")
    rng = np.random.default_rng(seed)
    field, level = _tissue_field(shape, tissue, seed, blobs)
    unit = math.pi * (sum(radius) / 2) ** 2
    tissue_area = tissue * math.prod(shape)
    centres = rng.uniform(0, 1, (int(3 * fill * math.prod(shape) / unit), 2)) * shape  # 3x as many as needed
    radii = rng.uniform(*radius, len(centres))
    inside = np.ones(len(centres), bool)  # the whole disc in tissue: its centre and its 4 extreme points
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        inside &= _field_at(field, shape, centres + radii[:, None] * (dy, dx)) > level
    centres, radii = centres[inside], radii[inside]
    keep = _apart(centres, radii, radius[1], overlap)
    centres, radii = centres[keep], radii[keep]
    n = min(len(centres), int(fill * tissue_area / unit))
    truth = _paint_discs(shape, centres[:n], radii[:n])
    tiles = [(core, _tissue_tile(field, level, shape, core)) for core in _tiles(shape, tile)]
    for core, in_tissue in tiles:  # no nucleus pixel on glass (a disc can graze a ragged tissue border)
        if isinstance(in_tissue, np.ndarray):
            truth[core][~in_tissue] = 0
    brightness = rng.uniform(0.7, 1.0, n + 1).astype(np.float32)
    image = np.empty(shape, np.uint16)
    halo = 5  # the nuclei's blur (sigma 1, truncated at 4 sigma) reaches this far
    for t, (core, in_tissue) in enumerate(tiles):
        values = 200 + noise * np.random.default_rng([seed, t]).standard_normal(
            tuple(c.stop - c.start for c in core), np.float32)
        if in_tissue is not False:  # glass: noise only
            ext = tuple(slice(max(c.start - halo, 0), min(c.stop + halo, s)) for c, s in zip(core, shape))
            inner = tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(core, ext))
            signal = ndi.gaussian_filter((truth[ext] > 0).astype(np.float32), 1.0)[inner]
            values += autofluorescence * in_tissue + 800 * signal * brightness[truth[core]]
        image[core] = np.clip(values, 0, 65535)
    return image, truth


def tissue_mask(shape: tuple[int, int], tissue: float = 0.4, seed: int = 0, blobs: float = 2.0,
                tile: int = 1024) -> np.ndarray:
    """Where :func:`slide` (same ``shape``, ``tissue``, ``seed``, ``blobs``) puts tissue: a smooth random field
    above its ``1 - tissue`` quantile, so the regions cover ``tissue`` of the area (up to interpolation)."""
    field, level = _tissue_field(shape, tissue, seed, blobs)
    out = np.empty(shape, bool)
    for core in _tiles(shape, tile):
        out[core] = _tissue_tile(field, level, shape, core)
    return out


def _tiles(shape, tile: int) -> list[tuple[slice, ...]]:
    return [tuple(slice(i * tile, min((i + 1) * tile, s)) for i, s in zip(index, shape))
            for index in np.ndindex(*(math.ceil(s / tile) for s in shape))]


#: Cells of the tissue field along the longer side (tissue is drawn at this resolution, then interpolated).
TISSUE_CELLS = 256


def _tissue_field(shape, tissue: float, seed: int, blobs: float) -> tuple[np.ndarray, float]:
    """A low-resolution smooth random field (large blobs with ragged borders, low near the slide's edges) and
    the level above which it is tissue."""
    if not 0 < tissue <= 1:
        raise ValueError(f"tissue={tissue}: give the tissue fraction of the area, in (0, 1]")
    rng = np.random.default_rng([seed, 1])
    cells = tuple(max(2, math.ceil(TISSUE_CELLS * s / max(shape))) for s in shape)
    coarse = ndi.gaussian_filter(rng.standard_normal(cells), TISSUE_CELLS / (4 * blobs))
    ragged = ndi.gaussian_filter(rng.standard_normal(cells), TISSUE_CELLS / 96)
    edge = np.minimum.reduce([np.minimum(g, 1 - g) for g in np.meshgrid(
        *(np.linspace(0, 1, c) for c in cells), indexing="ij")])  # 0 at the slide's edge, 0.5 at its centre
    margin = 2 * np.clip(1 - edge / 0.15, 0, None) ** 2  # glass margins: sections lie inside the slide
    field = (coarse / coarse.std() + 0.12 * ragged / ragged.std() - margin).astype(np.float32)
    level = -np.inf if tissue >= 1 else float(np.quantile(field, 1 - tissue))
    return field, level


def _field_at(field: np.ndarray, shape, points: np.ndarray) -> np.ndarray:
    """The field, bilinearly interpolated, at image coordinates ``points`` (n x 2)."""
    cells = np.asarray(points, float) * (np.asarray(field.shape) / np.asarray(shape)) - 0.5
    return ndi.map_coordinates(field, cells.T, order=1, mode="nearest")


def _tissue_tile(field: np.ndarray, level: float, shape, core: tuple[slice, slice]) -> np.ndarray | bool:
    """Tissue in the image region ``core``: True or False if all of it is, else a bool array (the field
    bilinearly interpolated there, axis by axis)."""
    (lo_y, w_y, cells_y), (lo_x, w_x, cells_x) = (_interpolation(c, n, s) for c, n, s in zip(core, field.shape, shape))
    cells = field[cells_y, cells_x]
    if cells.min() > level or cells.max() <= level:  # interpolation stays within the cells' range
        return bool(cells.min() > level)
    rows = cells[:, lo_x] * (1 - w_x) + cells[:, lo_x + 1] * w_x
    return rows[lo_y] * (1 - w_y)[:, None] + rows[lo_y + 1] * w_y[:, None] > level


def _interpolation(region: slice, cells: int, size: int) -> tuple[np.ndarray, np.ndarray, slice]:
    """Linear interpolation from ``cells`` field cells to the pixels of ``region`` (of an axis of ``size``):
    per pixel the lower cell (counted from the first cell used) and its neighbour's weight, and the slice of
    cells used."""
    u = np.clip((np.arange(region.start, region.stop) + 0.5) * cells / size - 0.5, 0, cells - 1)
    lo = np.minimum(np.floor(u).astype(int), cells - 2)
    first = int(lo.min())
    return lo - first, (u - lo).astype(np.float32), slice(first, int(lo.max()) + 2)


def _paint_discs(shape, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Label image of discs (label i + 1 for disc i); where discs overlap, a pixel goes to the disc whose centre
    is nearer in whole-pixel steps. Vectorised over discs, one pass per pixel offset (each over the discs
    large enough to reach it)."""
    truth = np.zeros(shape, np.int32)
    if not len(centres):
        return truth
    order = np.argsort(-radii, kind="stable")  # largest first: the discs an offset can reach are a prefix
    centres, radii, labels = centres[order], radii[order], (order + 1).astype(np.int32)
    reach = int(math.ceil(radii[0])) + 1
    offsets = np.array([(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)])
    norms = np.sqrt((offsets**2).sum(1))
    offsets, norms = offsets[np.argsort(norms, kind="stable")], np.sort(norms, kind="stable")
    base = np.floor(centres).astype(np.int64)
    frac_y, frac_x = (0.5 - (centres - base)).T.astype(np.float32)  # pixel centre minus disc centre, offset 0
    inv_r2 = (1 / radii**2).astype(np.float32)
    reaching = np.searchsorted(-radii, -(norms - math.sqrt(0.5)), side="right")  # discs with r >= |off| - 0.71
    for (dy, dx), k in zip(offsets, reaching):
        ok = np.flatnonzero(((frac_y[:k] + dy) ** 2 + (frac_x[:k] + dx) ** 2) * inv_r2[:k] <= 1)
        ys, xs = base[ok, 0] + dy, base[ok, 1] + dx
        within = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
        ok, ys, xs = ok[within], ys[within], xs[within]
        free = truth[ys, xs] == 0
        truth[ys[free], xs[free]] = labels[ok[free]]
    return truth


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

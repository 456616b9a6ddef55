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


def movie(shape: tuple[int, ...], radius: tuple[float, float] = (4.0, 7.0), fill: float = 0.15,
          speed: float = 2.0, rotation: float = 1.0, divisions: int = 3, seed: int = 0, noise: float = 40.0,
          overlap: float = 0.85) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A time-lapse of nuclei (``shape`` = (T, Y, X) or (T, Z, Y, X)) with known motion and divisions.

    The nuclei (placed as in :func:`nuclei`, so some touch) move as one rigid sheet: a drift of ``speed``
    voxels per frame in a random yx direction plus a rotation of ``rotation`` degrees per frame about the
    image centre in the yx plane, so each nucleus has its own velocity (a few voxels per frame) and neighbours
    never pass through each other. Nuclei enter and leave through the image borders. ``divisions`` nuclei
    (those with the most room around them) each divide once, at frames spread over the movie, into two
    daughters of half the mother's area (volume) that start touching and move apart in the yx plane to about
    their diameter.

    Returns ``(image uint16, truth uint32, links int64 (n, 2))``: ``truth[t]`` labels frame ``t`` with ids
    unique over the whole movie (consecutive, frame by frame); each row of ``links`` is a true link
    ``(id at t, id at t + 1)``: the same nucleus in consecutive frames, or a mother (at t) and one of its
    daughters (at t + 1). The same ``seed`` gives the same movie.
    """
    frames, space = int(shape[0]), tuple(int(s) for s in shape[1:])
    ndim = len(space)
    if ndim not in (2, 3) or frames < 2:
        raise ValueError(f"movie() makes (T, Y, X) or (T, Z, Y, X) movies with T >= 2; got shape {shape}")
    rng = np.random.default_rng([seed, 5])
    centre = (np.asarray(space, float) - 1) / 2
    reach = math.hypot(*space[-2:]) / 2 + speed * frames + radius[1]  # any body point seen in the movie
    lo = np.array([0.0] * (ndim - 2) + [centre[-2] - reach, centre[-1] - reach])
    hi = np.array([float(space[0])] * (ndim - 2) + [centre[-2] + reach, centre[-1] + reach])
    r_mean = sum(radius) / 2
    unit = math.pi * 4 / 3 * r_mean**3 if ndim == 3 else math.pi * r_mean**2
    volume = float(np.prod(hi - lo))
    body = lo + rng.uniform(0, 1, (max(1, int(3 * fill * volume / unit)), ndim)) * (hi - lo)
    radii = rng.uniform(*radius, len(body))
    keep = _apart(body, radii, radius[1], overlap)
    n = min(int(keep.sum()), max(1, int(fill * volume / unit)))
    body, radii = body[keep][:n], radii[keep][:n]
    angle = rng.uniform(0, 2 * math.pi)
    drift = np.zeros(ndim)
    drift[-2:] = speed * np.array([math.sin(angle), math.cos(angle)])
    omega = math.radians(rotation)

    def place(points: np.ndarray, t: int) -> np.ndarray:
        """Where body-frame ``points`` lie at frame ``t``."""
        c, s = math.cos(omega * t), math.sin(omega * t)
        rel = points - centre
        out = points + drift * t
        out[..., -2] = centre[-2] + c * rel[..., -2] - s * rel[..., -1] + drift[-2] * t
        out[..., -1] = centre[-1] + s * rel[..., -2] + c * rel[..., -1] + drift[-1] * t
        return out

    mothers, birth = _mothers(body, radii, divisions, frames, space, place)
    direction = rng.normal(size=(len(mothers), ndim))
    direction[:, :-2] = 0  # daughters move apart in the yx plane (a thin z stack keeps both in view)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r_daughter = radii[mothers] * 2 ** (-1 / ndim)
    brightness = rng.uniform(0.7, 1.0, n)
    brightness = np.concatenate([brightness, np.repeat(brightness[mothers], 2)])
    n_all = n + 2 * len(mothers)
    ids = np.zeros((frames, n_all), np.int64)  # label of each nucleus (daughters after the others) per frame
    truth = np.zeros((frames, *space), np.uint32)
    image = np.empty((frames, *space), np.uint16)
    next_id = 1
    for t in range(frames):
        points, sizes = place(body, t), radii.copy()
        alive = np.ones(n_all, bool)
        alive[mothers[birth <= t]] = False
        spread = r_daughter * np.clip(0.5 + 0.25 * (t - birth), 0.5, 1.0)
        offset = direction * spread[:, None]
        daughters = np.stack([place(body[mothers] + offset, t), place(body[mothers] - offset, t)], 1)
        points = np.concatenate([points, daughters.reshape(-1, ndim)])
        sizes = np.concatenate([sizes, np.repeat(r_daughter, 2)])
        alive[n:] = np.repeat(birth <= t, 2)
        index = _paint_balls(space, points, sizes, alive)  # nucleus index + 1 per voxel
        seen = np.flatnonzero(np.bincount(index.ravel(), minlength=n_all + 1)[1:])
        ids[t, seen] = np.arange(next_id, next_id + seen.size)
        next_id += seen.size
        truth[t] = np.concatenate([[0], ids[t]])[index]
        signal = ndi.gaussian_filter((index > 0).astype(np.float32), 1.0)
        values = 200 + 800 * signal * np.concatenate([[0.0], brightness])[index] \
            + np.random.default_rng([seed, 6, t]).normal(0, noise, space)
        image[t] = np.clip(values, 0, 65535)
    links = []
    for t in range(frames - 1):
        both = (ids[t] > 0) & (ids[t + 1] > 0)
        links.append(np.stack([ids[t, both], ids[t + 1, both]], 1))
        for k in np.flatnonzero(birth == t + 1):
            for d in (n + 2 * k, n + 2 * k + 1):
                if ids[t, mothers[k]] and ids[t + 1, d]:
                    links.append(np.array([[ids[t, mothers[k]], ids[t + 1, d]]]))
    return image, truth, np.concatenate(links).astype(np.int64)


def _mothers(body: np.ndarray, radii: np.ndarray, divisions: int, frames: int, space: tuple[int, ...],
             place) -> tuple[np.ndarray, np.ndarray]:
    """The nuclei that divide (inside the image, a radius from its borders, from a frame before their
    division to two frames after it; those with most room around them first) and the frame each divides at (spread
    over the movie)."""
    if divisions <= 0 or frames < 4:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    births = np.linspace(2, frames - 2, divisions).round().astype(np.int64)
    dist, near = cKDTree(body).query(body, k=2)
    room = (dist[:, 1] - radii[near[:, 1]]) / radii  # gap to the nearest neighbour, in own radii
    mothers: list[int] = []
    for birth in births:
        inside = np.ones(len(body), bool)
        for t in range(max(birth - 1, 0), min(birth + 3, frames)):
            at = place(body, t)
            inside &= ((at >= radii[:, None]) & (at <= np.asarray(space) - 1 - radii[:, None])).all(1)
        inside[mothers] = False
        if inside.any():
            mothers.append(int(np.flatnonzero(inside)[np.argmax(room[inside])]))
    births = births[:len(mothers)]
    return np.asarray(mothers, np.int64), births


def _paint_balls(shape: tuple[int, ...], centres: np.ndarray, radii: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Index + 1 of the ball each voxel is in (0 outside all), for the balls marked ``alive``; where balls
    overlap, a voxel goes to the ball it lies deepest in (relative to the ball's radius)."""
    index = np.zeros(shape, np.int32)
    depth = np.full(shape, np.inf, np.float32)
    for i in np.flatnonzero(alive):
        c, r = centres[i], radii[i]
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
        if (hi <= lo).any():
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.ogrid[box]
        d = sum(((g + 0.5 - ci) / r) ** 2 for g, ci in zip(grids, c)).astype(np.float32)
        wins = (d <= 1) & (d < depth[box])
        index[box][wins] = i + 1
        depth[box][wins] = d[wins]
    return index

"""Foreground skipping: which blocks hold anything to segment, decided from a low-resolution level before any
block is read.

Most of a whole slide is glass and most of a light-sheet volume is dark medium. The mask is the finest level with
at most ``bigseg.foreground-voxels`` voxels, thresholded (Otsu, or ``foreground.threshold``), or an existing label
image of the image (``foreground.mask``, e.g. a tissue mask). It is dilated by the halo (in that level's voxels,
rounded up, plus one voxel for the rounding of level shapes), so a block is kept whenever foreground lies in its core
or within its halo; the other blocks are *background*: never read at full resolution, no fragments.

Inside a kept block, only the box around the dilated mask (``ForegroundMask.kept``) is labelled, and only that box
and a halo around it are read: a block at the edge of the tissue segments the tissue, not the glass beside it. The
labels in the box are the uncropped block's (every voxel's context lies in what is read); outside it they are 0,
as in a background block.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import dask.config
import numpy as np
from scipy import ndimage as ndi

import bigseg.defaults  # noqa: F401 - bigseg.foreground-voxels
from bigseg.blocks import BlockGrid, extend, intersect, region_voxels
from bigseg.errors import InputError
from bigseg.io.ome import ImageView


@dataclass(frozen=True)
class ForegroundMask:
    """Where the mask came from and which blocks it keeps."""

    #: the image level (or, with a label mask, the label image's level) the mask was read from
    source: str
    #: voxels of the segmented level per mask voxel, along each axis
    factor: tuple[float, ...]
    #: the intensity threshold (None for a label mask)
    threshold: float | None
    #: per block id: True = the block is segmented
    active: np.ndarray
    #: per block id: the box (start, stop per axis, global voxels) of the block's extended region that is labelled
    kept: np.ndarray | None = None

    def kept_region(self, block) -> tuple[slice, ...] | None:
        """The part of ``block.extended`` that is labelled (None: all of it)."""
        if self.kept is None:
            return None
        region = tuple(slice(int(a), int(b)) for a, b in self.kept[block.id])
        return None if region == block.extended else region

    def read_region(self, block, halo: tuple[int, ...], shape: tuple[int, ...],
                    align: tuple[int, ...] | None) -> tuple[slice, ...] | None:
        """What an active block's task reads: its kept box with ``halo`` around it, inside ``block.extended``
        (None: all of the extended region)."""
        kept = self.kept_region(block)
        return None if kept is None else intersect(extend(kept, halo, shape, align), block.extended)

    @property
    def background(self) -> int:
        return int(self.active.size - self.active.sum())

    def identity(self) -> dict:
        """What a resumed job must share: the mask's source and threshold and the blocks it keeps."""
        digest = hashlib.sha1(np.packbits(self.active).tobytes()).hexdigest()
        return {"source": self.source, "threshold": self.threshold, "background": self.background,
                "active_sha1": digest}

    def describe(self) -> dict:
        """For the label metadata."""
        return {"source": self.source, "threshold": self.threshold, "blocks_background": self.background}


def mask_voxels() -> int:
    """The mask is read from the finest level with at most this many voxels."""
    return int(dask.config.get("bigseg.foreground-voxels", default=2**22))


@dataclass(frozen=True)
class ForegroundMap:
    """The low-resolution foreground, dilated by the halo: which blocks of any grid over the image to keep."""

    source: str
    factor: tuple[float, ...]
    threshold: float | None
    grown: np.ndarray

    def blocks(self, grid: BlockGrid) -> ForegroundMask:
        """The mask's verdict on each block of ``grid``: kept when foreground lies in its core (or within its
        halo), and each kept one's labelled box."""
        active = np.zeros(len(grid), bool)
        kept = np.zeros((len(grid), len(grid.shape), 2), np.int64)
        for block in grid:
            active[block.id] = bool(self.grown[self._low(block.core)].any())
            if active[block.id]:
                kept[block.id] = self._box(block.extended)
        return ForegroundMask(self.source, self.factor, self.threshold, active, kept)

    def _low(self, region: tuple[slice, ...]) -> tuple[slice, ...]:
        """The mask voxels that cover ``region`` (at least one per axis)."""
        return tuple(slice(int(c.start // f), max(int(math.ceil(c.stop / f)), int(c.start // f) + 1))
                     for c, f in zip(region, self.factor))

    def _box(self, region: tuple[slice, ...]) -> list[tuple[int, int]]:
        """The box of ``region`` (global voxels) that covers its dilated mask voxels."""
        low = self._low(region)
        where = np.argwhere(self.grown[low])
        lo, hi = where.min(axis=0), where.max(axis=0) + 1
        return [(max(r.start, int((s.start + a) * f)), min(r.stop, int(math.ceil((s.start + b) * f))))
                for r, s, a, b, f in zip(region, low, lo, hi, self.factor)]


def foreground_map(settings, view: ImageView, halo: tuple[int, ...], dark: bool = False) -> ForegroundMap | None:
    """The foreground of ``view`` from a low-resolution level (or a label mask), dilated by ``halo``; None when
    skipping is off or there is nothing coarser to decide from.

    ``settings`` is the job's ``foreground`` section; ``dark``: objects are darker than the background, so the
    foreground is below the threshold."""
    if settings.skip_background is False:
        return None
    explicit = settings.skip_background or settings.mask is not None or settings.threshold is not None
    if settings.mask is not None:
        data, level_shape, source = _label_mask(view, settings.mask)
        threshold, foreground = None, data > 0
    else:
        small = view.finest_level(mask_voxels())
        if small.level == view.level and not explicit:
            return None  # no coarser level: not a whole-slide-like image, every block is read anyway
        data = small.read(tuple(slice(0, s) for s in small.shape)).astype(np.float32)
        level_shape, source = small.shape, f"level {small.level}"
        threshold = settings.threshold if settings.threshold is not None else _otsu(data)
        foreground = data < threshold if dark else data > threshold
    factor = tuple(s / m for s, m in zip(view.shape, level_shape))
    radius = tuple(int(math.ceil(h / f)) + 1 for h, f in zip(halo, factor))
    grown = ndi.maximum_filter(foreground, size=tuple(2 * r + 1 for r in radius), mode="constant") \
        if foreground.any() else foreground
    return ForegroundMap(source, factor, None if threshold is None else float(threshold), grown)


def foreground_blocks(fmap: ForegroundMap | None, grid: BlockGrid) -> ForegroundMask | None:
    """The blocks of ``grid`` to segment, or None when every block is (no map, or a single block)."""
    if fmap is None or len(grid) == 1:
        return None
    return fmap.blocks(grid)


def read_voxels(grid: BlockGrid, mask: ForegroundMask | None, halo: tuple[int, ...],
                shape: tuple[int, ...]) -> list[int]:
    """The voxels each active block's task reads (what the segment stage's time goes with)."""
    out = []
    for block in grid:
        if mask is None or mask.active[block.id]:
            read = None if mask is None else mask.read_region(block, halo, shape, grid.align)
            out.append(region_voxels(read or block.extended))
    return out


def _otsu(data: np.ndarray) -> float:
    from skimage.filters import threshold_otsu
    lo, hi = float(data.min()), float(data.max())
    return hi if lo == hi else float(threshold_otsu(data))


def _label_mask(view: ImageView, name: str) -> tuple[np.ndarray, tuple[int, ...], str]:
    """An existing label image of the image as the mask: its finest level within :func:`mask_voxels` whose shape is
    the shape of one of the image's levels at or below the segmented one."""
    labels = view.image.label_image(name, "foreground.mask", "name one of its label images, e.g. a tissue mask")
    image_shapes = {view.at_level(lv).shape
                    for lv in range(view.level, len(view.image.levels))}
    candidates = []
    for level in range(len(labels.levels)):
        lview = labels.view(level)
        if lview.ndim == view.ndim and lview.shape in image_shapes:
            candidates.append(lview)
    if not candidates:
        raise InputError(f"foreground.mask: label image '{name}' has levels of shape {labels.level_shapes}, none of "
                         f"which is the shape of a level of the image at or below level {view.level} "
                         f"({sorted(image_shapes)}); write the mask on the image's pyramid")
    small = [c for c in candidates if math.prod(c.shape) <= mask_voxels()]
    chosen = small[0] if small else candidates[-1]
    data = chosen.read(tuple(slice(0, s) for s in chosen.shape))
    return data, chosen.shape, f"labels/{name} level {chosen.level}"

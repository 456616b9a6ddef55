"""The method interface: how a segmentation method plugs into the block-wise pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Method:
    """A segmentation method, run on one block at a time.

    Subclasses are frozen dataclasses whose fields are the method's parameters. The pipeline calls
    :meth:`prepare` once per job on the client (for job-wide values such as a global threshold),
    :meth:`setup` once per worker process (to load models), and ``method(block)`` once per block.
    """

    name: ClassVar[str]
    #: How fragments are joined across block boundaries: "touch" (exact for connected components)
    #: or "iou" (predictions of both blocks compared over their overlap).
    stitch_rule: ClassVar[str] = "iou"
    #: Objects smaller than this many voxels are dropped after stitching (exact: whole objects);
    #: ``None`` = the method's default, :meth:`default_min_size`.
    min_size: int | None = None

    def check(self, ndim: int) -> None:
        """Raise :class:`~bigseg.errors.ParameterError` if the parameters do not fit a ``ndim``-D image."""

    def resources(self) -> dict | None:
        """Dask worker resources one block task needs, e.g. ``{"GPU": 1}`` for a model on a GPU."""
        return None

    def default_min_size(self, ndim: int) -> int:
        return 0

    def object_min_size(self, ndim: int) -> int:
        return self.default_min_size(ndim) if self.min_size is None else int(self.min_size)

    def touch_connectivity(self, ndim: int) -> int:
        """For the "touch" rule: 1 = voxels touch by faces only, ``ndim`` = by faces, edges and corners."""
        return ndim

    def alignment(self, ndim: int) -> tuple[int, ...]:
        """Blocks are read from multiples of this (a network's total downsampling factor), so that a block
        sees the same pixel grid as the whole image."""
        return (1,) * ndim

    def halo(self, ndim: int) -> tuple[int, ...]:
        """Voxels of context each block needs on every side."""
        return (0,) * ndim

    def prepare(self, view) -> "Method":
        """Job-wide set-up on the client (e.g. a global threshold); returns the method to run."""
        return self

    def setup(self) -> None:
        """Per-worker-process set-up, such as loading a model; called before each block, so cache
        (:func:`bigseg.methods._models.load`)."""

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Label one block (core + halo); returns integer labels of the same shape, 0 = background."""
        raise NotImplementedError

    def params(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

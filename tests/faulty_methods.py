"""Methods that inject faults into the real pipeline (imported by the workers, so they live in a module).

They segment exactly like ``threshold``; the faults are around the segmentation, never instead of it.
"""
from __future__ import annotations

import os
import uuid

import numpy as np

from bigseg.methods.threshold import Threshold
from bigseg.units import VoxelSize


class FlakyThreshold(Threshold):
    """Raises an I/O error on the first attempt at each block (the attempts are files in ``log_dir``)."""

    log_dir: str = ""

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        key = f"{block.shape}-{float(block.sum()):.0f}"
        first = not any(name.startswith(key) for name in os.listdir(self.log_dir))
        open(os.path.join(self.log_dir, f"{key}-{uuid.uuid4().hex}"), "w").close()
        if first:
            raise OSError(f"transient read error (injected) on block {key}")
        return super().__call__(block, voxel_size)


class BrokenThreshold(Threshold):
    """Fails deterministically on every block whose data contains the value ``poison``."""

    poison: float = 60000

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        if np.any(block == self.poison):
            raise ValueError("this block always fails (injected)")
        return super().__call__(block, voxel_size)

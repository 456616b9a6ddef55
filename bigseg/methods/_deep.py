"""What the deep-model methods share: one model per worker process, global intensity normalisation
(percentiles computed once per job, so every block is normalised alike) and GPU resources."""
from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from bigseg.errors import ParameterError
from bigseg.methods import _models
from bigseg.methods._sample import global_percentiles
from bigseg.methods.base import Method, describe
from bigseg.units import VoxelSize


class DeepMethod(Method):
    """``model`` is a pretrained name or a path; ``gpu=True`` sends blocks to workers with a ``GPU`` resource."""

    #: (module to import, extra that installs it): checked before anything runs.
    package: ClassVar[tuple[str, str]] = ("", "")
    model: str = describe("a pretrained model name or the path of a trained model", default="")
    gpu: bool = describe("run the model on GPU workers (workers with the GPU resource)", default=False)
    percentiles: tuple[float, float] = describe(
        "intensity percentiles mapped to 0 and 1 (computed once per job)", default=(1.0, 99.8))
    intensity_range: tuple[float, float] | None = describe(
        "intensities mapped to 0 and 1; default: from the percentiles", default=None)

    def resources(self) -> dict | None:
        return {"GPU": 1} if self.gpu else None

    def is_path(self) -> bool:
        return os.sep in self.model or os.path.exists(self.model)

    def check(self, voxel_size: VoxelSize) -> None:
        module, extra = self.package
        try:
            __import__(module)
        except ImportError:
            raise _models.missing_package(self.name, module, extra) from None
        if self.is_path() and not os.path.exists(self.model):
            raise ParameterError(f"method.model: {self.model} does not exist; give the path of a trained "
                                 f"{self.name} model or a pretrained model name")

    def prepare(self, view) -> "DeepMethod":
        method = self.model_copy(update={"model": os.path.abspath(self.model)}) if self.is_path() else self
        if method.intensity_range is not None:
            return method
        return method.model_copy(update={"intensity_range": global_percentiles(view, *self.percentiles)})

    def job_values(self) -> dict:
        return {"intensity_range": list(self.intensity_range) if self.intensity_range else None}

    def normalized(self, block: np.ndarray) -> np.ndarray:
        """``block`` as float32 with the job's intensity range mapped to 0..1, in one new array (the same values as
        ``(x - lo) / (hi - lo)`` in float32, without its two temporaries: fresh memory is slow to fault in)."""
        lo, hi = self.intensity_range
        out = np.array(block, np.float32)  # a copy: the block itself stays as read
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
        return out

    def loaded(self, ndim: int):
        """This process's model (loaded on first use, then reused for every block)."""
        return _models.load((self.name, self.model, ndim, self.gpu), lambda: self.load(ndim))

    def load(self, ndim: int):
        raise NotImplementedError

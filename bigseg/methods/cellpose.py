"""``cellpose``: Cellpose models (cellpose 3: ``cyto3``, ``nuclei``; cellpose 4: ``cpsam``) or a trained model file."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

from bigseg.errors import ParameterError
from bigseg.methods import _models
from bigseg.methods._deep import DeepMethod
from bigseg.methods.base import PositiveLength, describe, length_help
from bigseg.units import VoxelSize

PRETRAINED_HINT = ("Cellpose downloads pretrained weights on first use, which needs the network: copy the weights "
                   "file into a folder and set CELLPOSE_LOCAL_MODELS_PATH to it, or pass --model /path/to/model")
#: Cellpose's own default object diameter (pixels) when none is given.
DEFAULT_DIAMETER = 30.0


def cellpose_major() -> int:
    try:
        from importlib.metadata import version
        return int(version("cellpose").split(".")[0])
    except Exception:
        raise _models.missing_package("cellpose", "cellpose", "cellpose") from None


class Cellpose(DeepMethod):
    """``diameter`` (pixels) is the expected cell diameter: it sets the halo (2 diameters) and Cellpose's
    rescaling. Works with the cellpose 3 and 4 APIs."""

    name: Literal["cellpose"] = "cellpose"
    description = "Cellpose (cellpose 3: cyto3, nuclei; cellpose 4: cpsam) or a trained Cellpose model file"
    bytes_per_voxel = 500  # flows, probabilities and the network's activations: like StarDist's
    package = ("cellpose", "cellpose")
    model: str = describe("cpsam | cyto3 | nuclei | the path of a trained Cellpose model", default="cpsam")
    diameter: PositiveLength | None = describe(length_help("expected cell diameter (in the xy plane); default "
                                                           "Cellpose's 30 pixels"), default=None)
    flow_threshold: float = describe("Cellpose flow error threshold", default=0.4, ge=0)
    cellprob_threshold: float = describe("Cellpose cell probability threshold", default=0.0)
    anisotropy: float | None = describe("3D: z spacing / xy spacing; default: from the image's voxel size",
                                        default=None, gt=0)

    def alignment(self, ndim: int) -> tuple[int, ...]:
        return (16,) * ndim  # Cellpose pads images to multiples of 16 for its U-Net

    def diameter_pixels(self, voxel_size: VoxelSize) -> float | None:
        """The diameter in xy pixels, as Cellpose wants it."""
        if self.diameter is None:
            return None
        return self.voxels(self.diameter, voxel_size, "method.diameter")[-1]

    def halo(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        if self.diameter is None:
            return (int(math.ceil(2 * DEFAULT_DIAMETER)),) * voxel_size.ndim
        return tuple(int(math.ceil(2 * d)) for d in self.voxels(self.diameter, voxel_size, "method.diameter"))

    def load(self, ndim: int):
        major = cellpose_major()
        from cellpose import models
        try:
            if self.is_path():
                return models.CellposeModel(gpu=self.gpu, pretrained_model=self.model)
            if major >= 4:
                return models.CellposeModel(gpu=self.gpu, pretrained_model=self.model)
            return models.CellposeModel(gpu=self.gpu, model_type=self.model)
        except (OSError, ValueError, RuntimeError) as err:
            if self.is_path():
                raise ParameterError(f"cannot load Cellpose model {self.model}: {err}") from None
            raise ParameterError(f"cannot load pretrained Cellpose model '{self.model}' ({type(err).__name__}). "
                                 + PRETRAINED_HINT) from None

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        model = self.loaded(block.ndim)
        kwargs = dict(diameter=self.diameter_pixels(voxel_size), flow_threshold=self.flow_threshold,
                      cellprob_threshold=self.cellprob_threshold, normalize=False)
        if cellpose_major() < 4:
            kwargs["channels"] = [0, 0]
        if block.ndim == 3:
            anisotropy = self.anisotropy or voxel_size.anisotropy()
            kwargs.update(do_3D=True, z_axis=0, anisotropy=anisotropy if anisotropy != 1.0 else None)
        masks = model.eval(self.normalized(block), **kwargs)[0]
        return np.asarray(masks)

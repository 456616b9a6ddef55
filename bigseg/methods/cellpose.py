"""``cellpose``: Cellpose models (cellpose 3: ``cyto3``, ``nuclei``; cellpose 4: ``cpsam``) or a trained model file."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bigseg.errors import ParameterError
from bigseg.methods import _models
from bigseg.methods._deep import DeepMethod

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


@dataclass(frozen=True)
class Cellpose(DeepMethod):
    """``diameter`` (pixels) is the expected cell diameter: it sets the halo (2 diameters) and Cellpose's
    rescaling. Works with the cellpose 3 and 4 APIs."""

    name = "cellpose"
    model: str = "cpsam"
    diameter: float | None = None
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    anisotropy: float | None = None
    package: tuple[str, str] = ("cellpose", "cellpose")

    def check(self, ndim: int) -> None:
        super().check(ndim)
        if self.diameter is not None and self.diameter <= 0:
            raise ParameterError(f"diameter {self.diameter} must be positive (expected cell size in pixels)")

    def alignment(self, ndim: int) -> tuple[int, ...]:
        return (16,) * ndim  # Cellpose pads images to multiples of 16 for its U-Net

    def halo(self, ndim: int) -> tuple[int, ...]:
        return (int(math.ceil(2 * (self.diameter or DEFAULT_DIAMETER))),) * ndim

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

    def __call__(self, block: np.ndarray) -> np.ndarray:
        model = self.loaded(block.ndim)
        kwargs = dict(diameter=self.diameter, flow_threshold=self.flow_threshold,
                      cellprob_threshold=self.cellprob_threshold, normalize=False)
        if cellpose_major() < 4:
            kwargs["channels"] = [0, 0]
        if block.ndim == 3:
            kwargs.update(do_3D=True, z_axis=0, anisotropy=self.anisotropy)
        masks = model.eval(self.normalized(block), **kwargs)[0]
        return np.asarray(masks)

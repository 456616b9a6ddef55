"""The method interface: how a segmentation method plugs into the block-wise pipeline."""
from __future__ import annotations

import math
from typing import Annotated, ClassVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from bigseg.errors import ParameterError
from bigseg.stitch_rules import Output, Overlap, StitchRule
from bigseg.units import (EXAMPLE_LENGTH, EXAMPLE_VOLUME, VoxelSize, check_length, check_positive_length,
                          check_volume)

#: A length: voxels (a number) or a physical length (``"8um"``); converted per axis with the voxel size.
Length = Annotated[float | str, AfterValidator(check_length)]
#: A length that must be more than 0.
PositiveLength = Annotated[float | str, AfterValidator(check_positive_length)]
#: One length for every axis, or one per axis (z, y, x).
Lengths = Annotated[float | str | list[float | str], AfterValidator(check_length)]
#: A volume (an area in 2D): voxels (a number) or a physical volume (``"20um^3"``).
Volume = Annotated[float | str, AfterValidator(check_volume)]


#: Parameters of the thresholding methods that another method refuses with a reason of their own.
THRESHOLDING_PARAMETERS = ("dark_objects",)


def describe(text: str, **kwargs):
    """A parameter's description: its help on the command line, in the JSON schema and in the web form."""
    return Field(description=text, **kwargs)


class Method(BaseModel):
    """A segmentation method, run on one block at a time.

    Subclasses are frozen pydantic models whose fields are the method's parameters (the job file's
    ``method:`` section, the CLI's method flags and the HTTP body are generated from them). The pipeline
    calls :meth:`check` and :meth:`prepare` once per job on the client (job-wide values such as a global
    threshold), and ``method(block, voxel_size)`` once per block on a worker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    #: One line for ``--help`` and the web form.
    description: ClassVar[str] = ""
    #: Working memory per voxel of a block (input, filters, labels): bounds the default block size.
    bytes_per_voxel: ClassVar[int] = 40
    min_size: Volume | None = describe(
        f"drop objects smaller than this after stitching (whole objects): {EXAMPLE_VOLUME}; "
        "default: the method's own", default=None)

    @model_validator(mode="before")
    @classmethod
    def _thresholding_parameters(cls, data):
        """A thresholding parameter given to a method without a threshold is refused with why, not as an
        unknown field."""
        if isinstance(data, dict):
            for field in THRESHOLDING_PARAMETERS:
                if field in data and field not in cls.model_fields:
                    name = cls.model_fields["name"].default
                    raise ValueError(f"{field} is for the methods with a threshold (threshold, watershed) and {name} "
                                     f"has none: drop {field} ({name} takes the image as it is), or choose method "
                                     "threshold or watershed")
        return data

    def check(self, voxel_size: VoxelSize) -> None:
        """Raise :class:`~bigseg.errors.ParameterError` if the parameters do not fit the image."""

    def resources(self) -> dict | None:
        """Dask worker resources one block task needs, e.g. ``{"GPU": 1}`` for a model on a GPU."""
        return None

    def default_min_size(self, voxel_size: VoxelSize) -> int:
        return 0

    def object_min_size(self, voxel_size: VoxelSize) -> int:
        if self.min_size is None:
            return self.default_min_size(voxel_size)
        return int(math.ceil(self.voxels_volume(self.min_size, voxel_size, "min_size")))

    def stitch_rule(self, ndim: int) -> StitchRule:
        """How fragments are joined across block boundaries (default: predictions of both blocks compared
        over their overlap)."""
        return Overlap()

    def output(self) -> Output:
        """What the label values are: object ids (stitched) or class numbers (a semantic class map)."""
        return Output.INSTANCES

    def alignment(self, ndim: int) -> tuple[int, ...]:
        """Blocks are read from multiples of this (a network's total downsampling factor), so that a block
        sees the same pixel grid as the whole image."""
        return (1,) * ndim

    def halo(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        """Voxels of context each block needs on every side."""
        return (0,) * voxel_size.ndim

    def prepare(self, view) -> "Method":
        """Job-wide set-up on the client (e.g. a global threshold); returns the method to run."""
        return self

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        """Label one block (core + halo); returns integer labels of the same shape, 0 = background."""
        raise NotImplementedError

    def fragment_source(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        """What the segment stage keeps of one block (core + halo): the core of it becomes the block's fragments
        through the stitch rule (:meth:`~bigseg.stitch_rules.StitchRule.fragments`). The labels by default; a
        method whose rule labels the core itself (:class:`~bigseg.stitch_rules.Touch` uses ``core > 0``) may
        return its foreground instead and save labelling the whole block."""
        return self(block, voxel_size)

    def job_values(self) -> dict:
        """Values computed once per job by :meth:`prepare` (part of a resumed job's identity)."""
        return {}

    @staticmethod
    def voxels(value, voxel_size: VoxelSize, field: str) -> tuple[float, ...]:
        """A :data:`Length` parameter in voxels along each axis."""
        try:
            return voxel_size.voxels(value)
        except ValueError as err:
            raise ParameterError(f"{field}: {err}") from None

    @staticmethod
    def voxels_volume(value, voxel_size: VoxelSize, field: str) -> float:
        try:
            return voxel_size.volume_voxels(value)
        except ValueError as err:
            raise ParameterError(f"{field}: {err}") from None


def length_help(text: str) -> str:
    return f"{text}: {EXAMPLE_LENGTH}"

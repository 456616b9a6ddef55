"""The job spec: one validated, versioned model of everything that makes a job.

The CLI flags, a job file (YAML or JSON), the Python API and the HTTP API are four spellings of
:class:`JobSpec`. Lengths (``method.diameter``, ``method.sigma``, ``blocks.halo``) are voxels or physical units
(``8um``); ``method.min_size`` is a number of voxels or a volume (``20um^3``).
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from bigseg.io.colour import Stain
from bigseg.measure.tracks import Tracking
from bigseg.methods import METHODS, Method
from bigseg.methods.base import Lengths, PositiveLength, describe, length_help
from bigseg.methods.watershed import Watershed

#: The job-file format this bigseg reads and writes; a file from a newer bigseg is refused.
SPEC_VERSION = 1


def _fspath(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value


Url = Annotated[str, BeforeValidator(_fspath)]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: ``input.timepoints`` as text: all of them, or start:stop (stop excluded; either may be left out) with an
#: optional :step.
TIMEPOINT_RANGE = re.compile(r"all|\d*:\d*(:[1-9]\d*)?")


def _timepoints(value):
    """``5`` is short for ``[5]`` and ``"0,5,9"`` for ``[0, 5, 9]``; a list is sorted; ``all`` and
    ``start:stop[:step]`` are kept as text (resolved against the image's timepoints when the job is planned)."""
    given = value
    if isinstance(value, str):
        if TIMEPOINT_RANGE.fullmatch(value.replace(" ", "")):
            return value.replace(" ", "")
        value = value.split(",")
    points = [_timepoint(v) for v in value] if isinstance(value, (list, tuple, range)) else [_timepoint(value)]
    if not points or None in points:
        raise ValueError(f"'{given}' is not all, start:stop or a list of timepoints (0 or more), e.g. 0:10 or 0,5,9")
    if len(set(points)) != len(points):
        raise ValueError("names a timepoint twice; give each once, e.g. 0,5,9")
    return sorted(points)


def _timepoint(value) -> int | None:
    """A timepoint (an integer 0 or more, or its digits), else None."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class InputSpec(Section):
    """Which image, and which part of it."""

    url: Url = describe("OME-Zarr image: a local path or a URL (s3://, https://, file://)")
    level: int = describe("resolution level to segment", default=0, ge=0)
    channel: int | None = describe("channel to segment (default 0)", default=None, ge=0)
    timepoint: int | None = describe("timepoint to segment (default 0)", default=None, ge=0)
    timepoints: Annotated[str | list[int], BeforeValidator(_timepoints)] | None = describe(
        "a time-lapse: the timepoints to segment (all, start:stop with stop excluded, or a list, e.g. 0,5,9), each "
        "with the same job-wide values (from the first of them), into one label image with a t axis and one "
        "table with a t column", default=None)
    stain: Stain | None = describe("for an RGB(A) uint8 image (brightfield, H&E): segment this stain's "
                                   "concentration (colour deconvolution of R, G, B) instead of a channel",
                                   default=None)

    @model_validator(mode="after")
    def _stain_or_channel(self):
        if self.stain is not None and self.channel is not None:
            raise ValueError("channel and stain exclude each other (the stain is computed from the R, G, B "
                             "channels); leave input.channel unset")
        if self.timepoint is not None and self.timepoints is not None:
            raise ValueError("timepoint and timepoints exclude each other (one timepoint, or a time-lapse of "
                             "several); give one of them")
        return self


class BlocksSpec(Section):
    """How the image is cut into blocks."""

    shape: list[Annotated[int, Field(gt=0)]] | None = describe(
        "block shape (z,y,x), a multiple of the chunk shape; default: from the chunks and the workers",
        default=None)
    halo: Lengths | None = describe(length_help("context read around each block, one value or one per axis; "
                                                "default: what the method needs"), default=None)


class StitchSpec(Section):
    """How objects cut by block boundaries are joined."""

    iou_threshold: float = describe("IoU above which two blocks' predictions of an object are joined",
                                    default=0.5, gt=0, lt=1)


class OutputSpec(Section):
    """Where the label image goes."""

    name: Annotated[str, AfterValidator(_label_name)] | None = describe(
        "label name: IMAGE/labels/NAME (default: the method's name)", default=None)
    url: Url | None = describe("write a standalone label image here instead of IMAGE/labels/NAME", default=None)
    overwrite: bool = describe("replace an existing label image of that name (an unfinished job of the same "
                               "settings is resumed without it)", default=False)


class ForegroundSpec(Section):
    """Which blocks are worth reading: a mask from a low-resolution level (or a label image), dilated by the halo."""

    skip_background: bool | None = describe(
        "skip blocks with no foreground in the low-resolution mask (never read at full resolution); default: on "
        "for whole-slide-like images (a pyramid level coarser than the segmented one fits the mask budget)",
        default=None)
    threshold: float | None = describe("intensity above which the low-resolution level is foreground (below, "
                                       "for dark objects); default: Otsu of that level", default=None)
    mask: str | None = describe("an existing label image of the image (IMAGE/labels/NAME, e.g. a tissue mask) "
                                "whose nonzero voxels are the foreground", default=None)


def _names(value):
    """``"shape,colocalization"`` (or one name) is short for a list of names."""
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


#: Column families beyond size, position, bounding box and intensities (``measure.features``).
Feature = Literal["shape", "colocalization", "neighbours"]


class MeasureSpec(Section):
    """What the measurements table holds beyond size, position, bounding box and intensity statistics."""

    features: Annotated[list[Feature], BeforeValidator(_names)] = describe(
        "column families: shape (second moments: axis lengths, eccentricity, orientation; and from each object's "
        "crop: solidity, extent, perimeter or surface area, circularity or sphericity), colocalization "
        "(Pearson's r and Manders' M1/M2 of each pair of measured channels; 2 or more), neighbours "
        "(nearest-neighbour distance, neighbours within neighbour_radius, touching objects)", default_factory=list)
    crops: bool | None = describe(
        "with shape: the crop pass too (solidity, extent, equivalent diameter, perimeter or surface area, "
        "circularity or sphericity: each object's crop read once; the costly part of the table); off: the "
        "second-moment columns only; default: on", default=None)
    channels: list[Annotated[int, Field(ge=0)]] | None = describe(
        "the channels measured (intensity and colocalization columns); default: all (R, G, B and the stains "
        "of an RGB image)", default=None)
    colocalization_thresholds: list[float] | None = describe(
        "per measured channel, the intensity above which it counts for Manders' M1/M2; default: each channel's "
        "Otsu threshold, once per job from the job sample", default=None)
    parent: Annotated[str, AfterValidator(lambda v: _label_name(v))] | None = describe(
        "a label image of the same image (IMAGE/labels/NAME, e.g. nuclei): each object gets the id of the NAME "
        "object that holds most of its voxels (parent_NAME, 0 if none) and that share (parent_NAME_overlap); "
        "NAME's table gets the number and the total size of its children", default=None)
    neighbour_radius: PositiveLength = describe(length_help(
        "neighbours: centroids within this distance count as neighbours (a number: voxels along x)"),
        default=20.0)

    @model_validator(mode="after")
    def _unique(self):
        if len(set(self.features)) != len(self.features):
            raise ValueError("names a feature twice; give each once, e.g. shape,colocalization")
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError("channels: names a channel twice; give each once, e.g. 0,1")
        return self


class TrackSpec(Tracking):
    """Tracking: objects of a time-lapse job linked between consecutive timepoints."""

    enabled: bool = describe(
        "link each object to the object it continues at the previous timepoint (input.timepoints, 2 or more): "
        "track_id and parent_track_id (the track that divided into this one) columns in the table, and a tracks "
        "table (labels/NAME/tracks.parquet: start, end, length, mean speed)", default=False)


def _track_enabled(value):
    """``track: true`` is short for ``track: {enabled: true}``."""
    return {"enabled": value} if isinstance(value, bool) else value


class OptionsSpec(Section):
    skip_bad_blocks: bool = describe("leave blocks whose input cannot be read unlabelled (and report them) "
                                     "instead of failing", default=False)
    keep_work: bool = describe("keep the work folder (intermediate files) after the job", default=False)


def _label_name(value: str) -> str:
    from bigseg.io.labels import NAME
    if not NAME.match(value) or value in (".", ".."):
        raise ValueError(f"'{value}' is not allowed; use letters, digits, '_', '-' or '.', not a path (e.g. nuclei)")
    return value


def _method_by_name(value):
    """``method: watershed`` is short for ``method: {name: watershed}``."""
    return {"name": value} if isinstance(value, str) else value


MethodSpec = Annotated[Union[tuple(METHODS.values())], Field(discriminator="name"),  # noqa: UP007
                       BeforeValidator(_method_by_name)]

#: Fields that change how a job runs, not what it writes: left out of a job's identity.
RUN_OPTIONS = {"output": {"overwrite"}, "options": {"keep_work"}}


class JobSpec(Section):
    """One segmentation job."""

    version: int = describe(f"job-file format version (this bigseg writes {SPEC_VERSION})", default=SPEC_VERSION,
                            ge=1, le=SPEC_VERSION)
    input: InputSpec
    method: MethodSpec = Field(default_factory=Watershed, description="the method and its parameters")
    blocks: BlocksSpec = Field(default_factory=BlocksSpec)
    stitch: StitchSpec = Field(default_factory=StitchSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    foreground: ForegroundSpec = Field(default_factory=ForegroundSpec)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    track: Annotated[TrackSpec, BeforeValidator(_track_enabled)] = Field(default_factory=TrackSpec)
    options: OptionsSpec = Field(default_factory=OptionsSpec)

    @model_validator(mode="after")
    def _parent_is_another_label_image(self):
        if self.measure.parent is not None and self.measure.parent == self.label_name:
            raise ValueError(f"measure.parent: '{self.measure.parent}' is the label image this job writes; name "
                             "another one (the parents, e.g. nuclei for foci)")
        return self

    @field_validator("method", mode="wrap")
    @classmethod
    def _keep_method_instances(cls, value, handler):
        """A Method object (e.g. a subclass defined in a notebook) is used as it is."""
        return value if isinstance(value, Method) else handler(value)

    @classmethod
    def from_file(cls, path, overrides: list[str] = ()) -> "JobSpec":
        """A job file (YAML or JSON), with ``section.field=value`` overrides."""
        from bigseg.spec.files import from_file
        return from_file(path, overrides)

    def to_yaml(self) -> str:
        from bigseg.spec.files import to_yaml
        return to_yaml(self)

    @property
    def label_name(self) -> str:
        return self.output.name or self.method.name

    def identity(self) -> dict:
        """What must be equal for a job to resume another: everything but the run options."""
        return self.model_dump(mode="json", exclude=RUN_OPTIONS)

    def to_dict(self) -> dict:
        """The job as plain data (what a job file holds); unset optional values are left out."""
        return self.model_dump(mode="json", exclude_none=True)

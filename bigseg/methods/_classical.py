"""What the classical methods share: the image they threshold and its threshold.

A block becomes the *signal* (objects bright: the image, or its inverse with ``dark_objects``), less its
background (``background``), smoothed (``sigma``), then compared with one threshold for the whole job
(``threshold``, or ``threshold_method`` applied once per job to the sample) or with its neighbourhood
(``threshold_method: local``). Every step is local and reaches :meth:`Classical.filter_reach` voxels, which
the halo covers: block-wise results equal the whole image's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import PrivateAttr, model_validator
from scipy import ndimage as ndi

from bigseg.errors import ParameterError
from bigseg.methods._filters import (BackgroundMethod, background_reach, local_reach, local_threshold, odd_window,
                                     subtract_background)
from bigseg.methods._sample import SampleImage, histogram_threshold, sample_image
from bigseg.methods.base import Lengths, Method, describe, length_help
from bigseg.units import VoxelSize

#: scipy's Gaussian reaches this many sigmas; the halo must cover it for exact block-wise smoothing.
TRUNCATE = 4.0
ThresholdMethod = Literal["otsu", "li", "triangle", "yen", "mean", "local"]


@dataclass(frozen=True)
class JobValues:
    """What :meth:`Classical.prepare` computes from the job sample: the intensity the signal is measured from
    (the sample's minimum, or its maximum for dark objects: the inverted image then gives the same signal to
    the last bit) and the threshold of the signal (None: given by the user, or local)."""

    reference: float = 0.0
    signal_threshold: float | None = None


class Classical(Method):
    sigma: Lengths = describe(length_help("Gaussian smoothing (one value, or one per axis z,y,x)"), default=1.0)
    threshold: float | None = describe(
        "intensity threshold (objects are above it, below it with dark_objects; with a background: of the "
        "background-subtracted image); default: computed once per job by threshold_method", default=None)
    threshold_method: ThresholdMethod = describe(
        "how the threshold is found: once per job from the image's sample (otsu, li, triangle, yen, mean), or "
        "voxel by voxel from its neighbourhood (local: scikit-image threshold_local over local_window)",
        default="otsu")
    local_window: Lengths = describe(length_help(
        "threshold_method local: the neighbourhood a voxel is compared with, larger than the objects (rounded "
        "up to an odd number of voxels per axis)"), default=31.0)
    local_offset: float = describe(
        "threshold_method local: subtracted from the neighbourhood's Gaussian-weighted mean (scikit-image's "
        "offset); negative: objects must be that much brighter (darker) than their surroundings", default=0.0)
    dark_objects: bool = describe("objects are darker than the background (e.g. brightfield): the image is "
                                  "inverted before everything else", default=False)
    background: BackgroundMethod = describe(
        "background subtracted before thresholding: none, rolling-ball (scikit-image rolling_ball; slow in 3D "
        "beyond a radius of ~10 voxels) or tophat (white top-hat with a ball footprint; fast)", default="none")
    background_radius: Lengths = describe(length_help(
        "radius of the rolling ball or the top-hat ball, larger than the objects (whole voxels per axis)"),
        default=20.0)

    _job: JobValues | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_threshold(self):
        if self.threshold is not None and self.threshold_method == "local":
            raise ValueError("threshold and threshold_method 'local' exclude each other: drop threshold, or choose "
                             "a job-wide threshold_method")
        return self

    def check(self, voxel_size: VoxelSize) -> None:
        self.sigma_voxels(voxel_size)
        self.window_voxels(voxel_size)
        radii = self.background_radii(voxel_size)
        if self.background != "none" and not any(radii):
            raise ParameterError("method.background_radius: is 0 voxels along every axis; give at least 1 voxel "
                                 "(larger than the objects)")

    def sigma_voxels(self, voxel_size: VoxelSize) -> tuple[float, ...]:
        return self.voxels(self.sigma, voxel_size, "method.sigma")

    def window_voxels(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        return tuple(odd_window(w) for w in self.voxels(self.local_window, voxel_size, "method.local_window"))

    def background_radii(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        return tuple(int(round(r)) for r in self.voxels(self.background_radius, voxel_size,
                                                         "method.background_radius"))

    def smoothing_radius(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        return tuple(int(TRUNCATE * s + 0.5) if s > 0 else 0 for s in self.sigma_voxels(voxel_size))

    def filter_reach(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        """Voxels of context the foreground needs per axis: background, smoothing and local threshold, one
        after the other."""
        parts = [background_reach(self.background, self.background_radii(voxel_size)),
                 self.smoothing_radius(voxel_size)]
        if self.threshold_method == "local":
            parts.append(local_reach(self.window_voxels(voxel_size)))
        return tuple(sum(p) for p in zip(*parts))

    @property
    def reference(self) -> float:
        return self._job.reference if self._job is not None else 0.0

    def signal(self, block: np.ndarray) -> np.ndarray:
        return as_signal(block, self.reference, self.dark_objects)

    def contrast(self, signal: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
        """The signal less its background (the signal itself without one)."""
        return subtract_background(signal, self.background, radii)

    def smooth(self, data: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        sigma = self.sigma_voxels(voxel_size)
        if not any(sigma):
            return data
        return ndi.gaussian_filter(data, sigma, mode="nearest", truncate=TRUNCATE)

    def filtered(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        """The image that is thresholded: signal, less its background, smoothed (float32)."""
        return self.smooth(self.contrast(self.signal(block), self.background_radii(voxel_size)), voxel_size)

    def foreground(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        return self.above_threshold(self.filtered(block, voxel_size), voxel_size)

    def above_threshold(self, image: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        if self.threshold_method == "local":
            return image > local_threshold(image, self.window_voxels(voxel_size), self.local_offset)
        return image > self.signal_threshold()

    def signal_threshold(self) -> float:
        """The threshold of the filtered signal."""
        t = self._signal_threshold()
        if t is None:
            raise RuntimeError("prepare() must set the threshold before blocks are segmented")
        return t

    def _signal_threshold(self) -> float | None:
        if self.threshold is not None:  # the image's intensity, or the background-subtracted one
            return -self.threshold if self.dark_objects and self.background == "none" else self.threshold
        return self._job.signal_threshold if self._job is not None else None

    def prepare(self, view) -> "Classical":
        if self.threshold is not None:
            return self
        sample = sample_image(view)  # never empty: the plan refuses an image with no readable sample first
        job = JobValues(float(sample.values.max() if self.dark_objects else sample.values.min()))
        if self.threshold_method != "local":
            contrast = self._sample_contrast(sample, job.reference, view.voxel_size)
            job = JobValues(job.reference, histogram_threshold(contrast, self.threshold_method))
        method = self.model_copy()
        method._job = job
        return method

    def _sample_contrast(self, sample: SampleImage, reference: float, voxel_size: VoxelSize) -> np.ndarray:
        """What the job-wide threshold is computed from: the sample's signal less its background (filtered
        at the sample level, with the radius in that level's voxels), not smoothed; the voxels within the
        filter's reach of an unreadable chunk are left out."""
        data = as_signal(sample.data, reference, self.dark_objects)
        if self.background == "none" or data.size == 0:
            return data.ravel() if sample.readable is None else data[sample.readable]
        radii = tuple(max(1, int(round(r / s))) if r else 0
                      for r, s in zip(self.background_radii(voxel_size), sample.step))
        valid = None
        if sample.readable is not None:
            data[~sample.readable] = np.median(data[sample.readable])
            size = tuple(2 * r + 1 for r in background_reach(self.background, radii))
            valid = ~ndi.maximum_filter(~sample.readable, size=size, mode="constant", cval=False)
        contrast = self.contrast(data, radii)
        return contrast.ravel() if valid is None else contrast[valid]

    def job_values(self) -> dict:
        """The threshold in the image's intensities (with a background: of the background-subtracted image),
        and the exact values the blocks use."""
        return {"threshold": self.reported_threshold(), "reference": self.reference,
                "signal_threshold": self._signal_threshold()}

    def reported_threshold(self) -> float | None:
        t = self._signal_threshold()
        if self.threshold is not None or t is None:
            return self.threshold
        if self.background != "none":
            return t
        return self.reference - t if self.dark_objects else self.reference + t


def as_signal(block: np.ndarray, reference: float, dark: bool) -> np.ndarray:
    """The block as float32 with objects bright, measured from ``reference``: ``block - reference``, or
    ``reference - block`` for dark objects (exact for integer intensities below 2**24)."""
    data = np.asarray(block, dtype=np.float32)
    ref = np.float32(reference)
    return ref - data if dark else data - ref

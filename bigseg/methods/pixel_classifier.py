"""``pixel-classifier``: an ilastik-style random forest on multiscale intensity, edge and texture features,
trained from sparse scribbles; its foreground probability becomes objects by threshold and connected
components or a distance-transform watershed, or its most probable class per pixel is written as a
semantic class map (``instances="classes"``: label values are the scribble class numbers).

Train with :func:`train` (or ``bigseg train-pixel-classifier``), which saves a ``.joblib`` file that the
method loads by path, once per worker process.
"""
from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
from pydantic import PrivateAttr

from bigseg.errors import ParameterError
from bigseg.methods import _models
from bigseg.methods.base import Method, PositiveLength, describe, length_help
from bigseg.stitch_rules import Output, Overlap, StitchRule, Touch
from bigseg.units import VoxelSize
from bigseg.methods.watershed import split_touching

FORMAT = "bigseg-pixel-classifier-1"


def features(image: np.ndarray, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Per-pixel features (..., F): Gaussian intensity, gradient magnitude and Hessian eigenvalues at
    several scales (skimage's ``multiscale_basic_features``)."""
    from skimage.feature import multiscale_basic_features
    return multiscale_basic_features(np.asarray(image, np.float32), intensity=True, edges=True, texture=True,
                                     sigma_min=sigma_min, sigma_max=sigma_max).astype(np.float32)


def train(image: np.ndarray, scribbles: np.ndarray, path: str, foreground: int = 2, sigma_min: float = 1.0,
          sigma_max: float = 8.0, n_estimators: int = 100, seed: int = 0) -> str:
    """Fit a random forest to the scribbled pixels (``scribbles``: 0 = unlabelled, 1..K = classes) and save it.

    ``foreground`` is the class that becomes objects.
    """
    try:
        import joblib
        from sklearn.ensemble import RandomForestClassifier
    except ImportError:
        raise _models.missing_package("pixel-classifier", "scikit-learn", "pixel-classifier") from None
    if image.shape != scribbles.shape:
        raise ParameterError(f"scribbles {scribbles.shape} and image {image.shape} differ in shape")
    classes = np.unique(scribbles[scribbles > 0])
    if len(classes) < 2 or foreground not in classes:
        raise ParameterError(f"scribbles need at least two classes including the foreground class {foreground}; "
                             f"found classes {classes.tolist()}")
    feats = features(image, sigma_min, sigma_max)
    mask = scribbles > 0
    clf = RandomForestClassifier(n_estimators=n_estimators, n_jobs=1, random_state=seed, min_samples_leaf=2)
    clf.fit(feats[mask], scribbles[mask])
    joblib.dump({"format": FORMAT, "classifier": clf, "sigma_min": sigma_min, "sigma_max": sigma_max,
                 "foreground": int(foreground), "classes": classes.tolist(), "ndim": image.ndim}, path)
    return path


class PixelClassifier(Method):
    """``model``: a ``.joblib`` file from :func:`train`. ``instances``: ``"components"`` (exact stitching),
    ``"watershed"`` (touching objects split; ``diameter`` sets its halo and seed spacing) or ``"classes"``
    (a semantic class map, one label value per scribble class, measured per class)."""

    name: Literal["pixel-classifier"] = "pixel-classifier"
    description = "ilastik-style random forest trained from scribbles (bigseg train-pixel-classifier)"
    bytes_per_voxel = 200  # the feature stack (float32, a few tens of features) and the class probabilities
    model: str = describe("the .joblib file written by bigseg train-pixel-classifier", default="")
    prob_thresh: float = describe("foreground probability threshold", default=0.5, ge=0, le=1)
    instances: Literal["components", "watershed", "classes"] = describe(
        "components | watershed (objects) or classes (a semantic class map: one label value per scribble class)",
        default="components")
    diameter: PositiveLength = describe(length_help("instances=watershed: expected object diameter"), default=12.0)
    _sigma_max: float = PrivateAttr(8.0)  # read from the model file in prepare()

    def stitch_rule(self, ndim: int) -> StitchRule:
        return Touch(ndim) if self.instances == "components" else Overlap()

    def output(self) -> Output:
        return Output.CLASSES if self.instances == "classes" else Output.INSTANCES

    def check(self, voxel_size: VoxelSize) -> None:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise _models.missing_package(self.name, "scikit-learn", "pixel-classifier") from None
        if not self.model or not os.path.exists(self.model):
            raise ParameterError(f"method.model: pixel classifier '{self.model}' does not exist; train one with "
                                 "bigseg train-pixel-classifier and give its path")

    def prepare(self, view) -> "PixelClassifier":
        content = self.load()
        if content["ndim"] != view.ndim:
            raise ParameterError(f"pixel classifier {self.model} was trained on {content['ndim']}D images but the "
                                 f"image is {view.ndim}D; train one on {view.ndim}D data")
        method = self.model_copy(update={"model": os.path.abspath(self.model)})  # workers resolve it alike
        method._sigma_max = float(content["sigma_max"])
        return method

    def diameter_voxels(self, voxel_size: VoxelSize) -> tuple[float, ...]:
        return self.voxels(self.diameter, voxel_size, "method.diameter")

    def halo(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        features_reach = int(4 * self._sigma_max + 0.5) + 4  # Gaussian (truncate 4) + gradient/Hessian steps
        if self.instances != "watershed":
            return (features_reach,) * voxel_size.ndim
        return tuple(features_reach + int(math.ceil(2 * d)) for d in self.diameter_voxels(voxel_size))

    def load(self) -> dict:
        import joblib
        content = joblib.load(self.model)
        if not isinstance(content, dict) or content.get("format") != FORMAT:
            raise ParameterError(f"{self.model} is not a bigseg pixel classifier; train one with "
                                 "bigseg train-pixel-classifier")
        return content

    def probabilities(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Class probabilities (pixels, classes), the class numbers of the columns, and the foreground class."""
        model = _models.load(("pixel-classifier", os.path.abspath(self.model)), self.load)
        feats = features(block, model["sigma_min"], model["sigma_max"])
        clf = model["classifier"]
        return clf.predict_proba(feats.reshape(-1, feats.shape[-1])), clf.classes_, model["foreground"]

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        from skimage.measure import label
        proba, classes, foreground = self.probabilities(block)
        if self.instances == "classes":
            return np.asarray(classes)[np.argmax(proba, axis=1)].reshape(block.shape).astype(np.uint32)
        fg = proba[:, list(classes).index(foreground)].reshape(block.shape) > self.prob_thresh
        if self.instances == "components":
            return label(fg, connectivity=block.ndim)
        seeds = tuple(max(1, int(round(d / 4))) for d in self.diameter_voxels(voxel_size))
        return split_touching(fg, seeds, voxel_size.spacing)

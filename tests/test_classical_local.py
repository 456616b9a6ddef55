"""The classical methods' local filters (adaptive threshold, background subtraction), dark objects and the
gradient watershed: block-wise runs against the monolithic run (one block covering the image) and against
scikit-image applied to the whole array."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, restoration

import bigseg
from bigseg.cli import main
from bigseg.errors import ParameterError
from bigseg.methods import get_method
from bigseg.methods._filters import (background_reach, ball_footprint, local_reach, local_threshold,
                                     subtract_background)
from bigseg.synthetic import nuclei, write_ome_zarr
from bigseg.units import VoxelSize
from conftest import add_corner_objects
from matching import match, same_partition

#: 2D: 192x192 in chunks of 32; 3D: 32x64x96 in chunks of 8x32x32 (z spacing 2 um, y and x 1 um).
BLOCKS_2D = [(64, 64), (32, 96)]
BLOCKS_3D = [(16, 32, 32), (16, 64, 32)]


def _image(ndim: int, seed: int, ramp: float = 400.0) -> np.ndarray:
    """Synthetic nuclei, some centred where blocks meet, on a background that rises by ``ramp`` along x."""
    shape, corner = ((192, 192), (64, 64)) if ndim == 2 else ((32, 64, 96), (16, 32, 32))
    image, _ = nuclei(shape, seed=seed)
    image = add_corner_objects(image, corner)
    rise = np.linspace(0, ramp, shape[-1])
    return (image + rise).astype(np.uint16)


def _write(tmp_path, image: np.ndarray, name: str) -> str:
    if image.ndim == 2:
        return write_ome_zarr(tmp_path / f"{name}.zarr", image, "yx", (32, 32))
    return write_ome_zarr(tmp_path / f"{name}.zarr", image, "zyx", (8, 32, 32), scale={"z": 2.0, "y": 1.0, "x": 1.0},
                          unit="micrometer")


def _labels(result) -> np.ndarray:
    return zarr.open_array(result.labels + "/0", mode="r")[:]


def _runs(client, path, method, blocks, halo=None, **params):
    """The monolithic run, then one block-wise run per block shape (each computes its own job-wide values)."""
    shape = zarr.open_array(path + "/s0", mode="r").shape
    mono = bigseg.segment(path, method, name="mono", client=client, block=shape, **params)
    assert mono.blocks == 1
    runs = [bigseg.segment(path, method, name=f"b{i}", client=client, block=b, halo=halo, **params)
            for i, b in enumerate(blocks)]
    assert all(r.blocks > 2 for r in runs)
    return mono, runs


def _signal(image: np.ndarray) -> np.ndarray:
    """The image as the methods measure it: float32, from the sample's (here level 0's) minimum."""
    return image.astype(np.float32) - np.float32(image.min())


def _smooth(data: np.ndarray, sigma) -> np.ndarray:
    return ndi.gaussian_filter(data, sigma, mode="nearest", truncate=4.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_local_threshold_blockwise_equals_monolithic_and_scikit_image(client, tmp_path, ndim):
    image = _image(ndim, seed=30 + ndim)
    path = _write(tmp_path, image, "local")
    if ndim == 2:
        params, sigma, window = {"local_window": 21}, 1.0, (21, 21)
    else:  # physical lengths: 15 um is 7 voxels along z (rounded up to odd), 15 along y and x
        params, sigma, window = {"local_window": "15um", "sigma": "1um"}, (0.5, 1.0, 1.0), (7, 15, 15)
    mono, runs = _runs(client, path, "threshold", BLOCKS_2D if ndim == 2 else BLOCKS_3D,
                       threshold_method="local", local_offset=-25, **params)
    smoothed = _smooth(_signal(image), sigma)
    reference = measure.label(smoothed > filters.threshold_local(smoothed, window, method="gaussian", offset=-25),
                              connectivity=ndim)
    assert mono.threshold is None and mono.objects > 40
    assert same_partition(reference, _labels(mono))
    for run in runs:
        assert same_partition(reference, _labels(run)), run.block_shape


BACKGROUNDS = [(2, "rolling-ball", 8), (2, "tophat", 8), (3, "tophat", 6), (3, "rolling-ball", 4)]


@pytest.mark.parametrize("ndim,background,radius", BACKGROUNDS)
def test_background_subtraction_blockwise_equals_monolithic_and_scikit_image(client, tmp_path, ndim, background,
                                                                              radius):
    image = _image(ndim, seed=40 + ndim)
    path = _write(tmp_path, image, background)
    sigma = 1.0 if ndim == 2 else (0.5, 1.0, 1.0)
    mono, runs = _runs(client, path, "threshold", BLOCKS_2D if ndim == 2 else BLOCKS_3D, background=background,
                       background_radius=radius, sigma="1um" if ndim == 3 else 1.0)
    signal = _signal(image)
    if background == "rolling-ball":
        contrast = signal - restoration.rolling_ball(signal, radius=radius)
    else:
        shape = morphology.disk if ndim == 2 else morphology.ball
        contrast = morphology.white_tophat(signal, footprint=shape(radius, decomposition="sequence"))
    otsu = filters.threshold_otsu(contrast)  # the job-wide threshold, of the whole background-subtracted image
    reference = measure.label(_smooth(contrast, sigma) > otsu, connectivity=ndim)
    assert mono.threshold == otsu and mono.objects > (40 if ndim == 2 else 20)
    assert same_partition(reference, _labels(mono))
    for run in runs:
        assert run.threshold == otsu
        assert same_partition(reference, _labels(run)), run.block_shape


DARK_CASES = [(2, "threshold", {}), (2, "watershed", {}), (2, "threshold", {"threshold_method": "local",
                                                                            "local_offset": -25}),
              (3, "watershed", {"background": "tophat", "background_radius": 5, "split": "gradient", "halo": 16})]


@pytest.mark.parametrize("ndim,method,params", DARK_CASES)
def test_dark_objects_in_the_inverted_image_are_the_same_objects(client, tmp_path, ndim, method, params):
    """``max - image`` with dark_objects gives the labels of the image without, whatever the blocking: both
    become the same signal (image - its sample minimum = sample maximum - inverted image), so the job-wide
    threshold is the same number to the last bit. (Otsu of the inverted image itself is not: its histogram
    bins and ties fall the other way; here it is 4.5 grey values off and 48 voxels (2D) change side.)"""
    image = _image(ndim, seed=50 + ndim, ramp=0)
    inverted = image.max() - image
    bright_path, dark_path = _write(tmp_path, image, "bright"), _write(tmp_path, inverted, "dark")
    block = (BLOCKS_2D if ndim == 2 else BLOCKS_3D)[0]
    bright = bigseg.segment(bright_path, method, name="bright", client=client, block=block, **params)
    dark = bigseg.segment(dark_path, method, name="dark", client=client, block=block, dark_objects=True, **params)
    assert bright.blocks > 2 and bright.objects > 20
    assert same_partition(_labels(bright), _labels(dark))
    if params.get("threshold_method") == "local":
        assert dark.threshold is None
    elif "background" in params:  # the threshold of the background-subtracted image: the same number
        assert dark.threshold == bright.threshold
    else:  # in the image's intensities
        assert dark.threshold == pytest.approx(int(image.max()) - bright.threshold, abs=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradient_watershed_blockwise_matches_monolithic(client, tmp_path, ndim):
    image, truth = nuclei((192, 192) if ndim == 2 else (32, 64, 96), seed=60 + ndim)
    image = add_corner_objects(image, (64, 64) if ndim == 2 else (16, 32, 32))
    path = _write(tmp_path, image, "gradient")
    # 3D: blocks 16 deep, so a halo of 16 (about 1.3 diameters) instead of the default 29
    mono, runs = _runs(client, path, "watershed", BLOCKS_2D if ndim == 2 else BLOCKS_3D, split="gradient",
                       halo=None if ndim == 2 else 16)
    ref = _labels(mono)
    assert mono.objects > (40 if ndim == 2 else 20)
    assert match(truth, ref).f1 > 0.9
    for run in runs:
        m = match(ref, _labels(run))
        assert m.f1 >= 0.995, (run.block_shape, m)
        assert m.splits + m.merges <= 0.002 * m.n_ref, (run.block_shape, m)
    if ndim == 2:  # the default halo (2 diameters beyond the filters) holds every clump of touching nuclei whole
        assert same_partition(ref, _labels(runs[0])) and same_partition(ref, _labels(runs[1]))


def test_too_small_a_halo_breaks_exactness(client, tmp_path):
    """The default halo is what makes the block-wise runs above exact: a smaller one is not."""
    image = _image(2, seed=70)
    path = _write(tmp_path, image, "halo")
    for i, params in enumerate(({"background": "tophat", "background_radius": 8}, {"threshold_method": "local"})):
        method = get_method("threshold", **params)
        default = method.halo(VoxelSize.isotropic(2))
        exact = bigseg.segment(path, method, name=f"exact{i}", client=client, block=(64, 64))
        assert exact.halo == default
        mono = bigseg.segment(path, method, name=f"mono{i}", client=client, block=(192, 192))
        small = bigseg.segment(path, method, name=f"small{i}", client=client, block=(64, 64),
                               halo=[h // 3 for h in default])
        assert same_partition(_labels(mono), _labels(exact))
        assert not same_partition(_labels(mono), _labels(small)), params


def _reach_of_change(fn, base: np.ndarray, where: tuple[int, ...], value: float) -> tuple[int, ...]:
    """How far (per axis) from ``where`` the output of ``fn`` changes when that one voxel is set to ``value``."""
    changed = base.copy()
    changed[where] = value
    moved = np.argwhere(fn(changed) != fn(base))
    return tuple(int(np.abs(moved[:, a] - where[a]).max()) for a in range(base.ndim))


def test_halo_parts_are_the_filters_real_footprints():
    """Each filter's reach, computed from its parameters, is exactly how far one voxel's change travels."""
    impulse = np.zeros((61, 81), np.float32)
    window = (15, 31)  # Gaussian sigma (window - 1) / 6 reaching 4 sigmas: 9 and 20 voxels, beyond window / 2
    assert local_reach(window) == (9, 20)
    assert _reach_of_change(lambda x: local_threshold(x, window, 0.0), impulse, (30, 40), 1.0) == (9, 20)

    flat = np.full((31, 41, 41), 100, np.float32)  # a dent widens the ball's apex by the kernel's semi-axes
    radii = (3, 6, 8)
    assert background_reach("rolling-ball", radii) == radii
    rolled = _reach_of_change(lambda x: subtract_background(x, "rolling-ball", radii), flat, (15, 20, 20), 0.0)
    assert rolled == radii

    # top-hat = image - opening (erosion, then dilation): a plateau exactly the footprint's shape survives the
    # opening until one voxel on its rim is lowered, and then vanishes up to its opposite rim: 2 radii away
    for radii in ((4, 4, 4), (2, 4, 6), (0, 5, 5)):
        reach = background_reach("tophat", radii)
        assert reach == tuple(2 * r for r in radii)
        point = np.zeros((2 * max(radii) + 1,) * 3, np.float32)
        point[(max(radii),) * 3] = 1
        shape = morphology.dilation(point, footprint=ball_footprint(radii))
        plateau = np.pad(shape, 10) * 100
        centre = tuple(s // 2 for s in plateau.shape)
        for axis, r in enumerate(radii):
            if r == 0:
                continue
            rim = tuple(c + (r if a == axis else 0) for a, c in enumerate(centre))
            got = _reach_of_change(lambda x: subtract_background(x, "tophat", radii), plateau, rim, 0.0)
            assert got[axis] == reach[axis], (radii, axis, got)


def test_parameters_that_do_not_fit_are_one_line(capsys, tmp_path):
    for method in ("cellpose", "stardist", "pixel-classifier"):
        assert main(["segment", str(tmp_path / "any.zarr"), "--method", method, "--dark-objects"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert f"{method} has none" in err[0] and "drop dark_objects" in err[0], err[0]
    with pytest.raises(ParameterError, match="exclude each other"):
        get_method("threshold", threshold=500, threshold_method="local")


def test_threshold_of_a_coarser_sample_level_uses_the_radius_in_its_voxels(tmp_path, monkeypatch):
    """An image too big to sample whole: the background of the sample level (here level 1, voxels twice as
    large) is filtered with the radius in that level's voxels (8 -> 4), then Otsu: an estimate of the
    whole image's threshold, the same for every blocking."""
    from bigseg.io.ome import open_image
    from bigseg.methods import _sample
    image = _image(2, seed=80)
    path = _write(tmp_path, image, "coarse")
    monkeypatch.setattr(_sample, "SAMPLE_VOXELS", image.size // 4)
    _sample.clear_sample_cache()
    try:
        view = open_image(path).view()
        prepared = get_method("threshold", background="tophat", background_radius=8).prepare(view)
        level1 = zarr.open_array(path + "/s1", mode="r")[:]
        contrast = morphology.white_tophat(_signal(level1), footprint=morphology.disk(4, decomposition="sequence"))
        assert prepared.job_values()["threshold"] == filters.threshold_otsu(contrast)
    finally:
        _sample.clear_sample_cache()


@pytest.mark.parametrize("shape, spacing", [((300, 400), (1.0, 1.0)), ((40, 90, 70), (2.0, 0.5, 0.5))])
def test_watershed_distance_transform_is_scipys_to_the_bit(shape, spacing):
    from bigseg.methods.watershed import distance_transform
    rng = np.random.default_rng(3)
    fg = ndi.gaussian_filter(rng.random(shape), 2) > 0.5  # blobs touching each other and the edges
    ours = distance_transform(fg, spacing)
    assert ours.dtype == np.float32 and fg.mean() > 0.2
    assert np.array_equal(ours, ndi.distance_transform_edt(fg, sampling=spacing).astype(np.float32))

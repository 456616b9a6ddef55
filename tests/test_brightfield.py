"""Brightfield / H&E inputs: nuclei segmented on the haematoxylin stain of an RGB(A) slide, block-wise equal to
the whole image; the table measured per RGB channel and per stain; --stain on a non-RGB image refused."""
from __future__ import annotations

import importlib.util
import os

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage as ndi
from skimage import filters, measure
from skimage.color import rgb2hed
from skimage.segmentation import mark_boundaries

import bigseg
from bigseg.cli import main
from bigseg.io.ome import open_image
from bigseg.methods import _sample
from conftest import checksums, write_image
from matching import match, same_partition

BLOCK = (128, 128)  # 3 x 4 blocks of the 300 x 500 slide


@pytest.fixture(scope="module")
def histo() -> np.ndarray:
    """StarDist's H&E example (300 x 500 RGB uint8, dark nuclei on a pink background), as (3, y, x)."""
    found = importlib.util.find_spec("stardist")  # its data, without importing it (and TensorFlow)
    if found is None:
        pytest.skip("stardist is not installed (pip install -e '.[test]')")
    rgb = iio.imread(os.path.join(os.path.dirname(found.origin), "data", "images", "histo.jpg"))
    assert rgb.shape == (300, 500, 3) and rgb.dtype == np.uint8
    return np.moveaxis(rgb, -1, 0)


@pytest.fixture(scope="module")
def histo_zarr(histo, tmp_path_factory) -> str:
    return write_image(tmp_path_factory.mktemp("he") / "histo.zarr", histo, "cyx", (1, 128, 128), levels=3)


def _hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The reference stain: scikit-image's colour deconvolution of the whole (3, y, x) slide."""
    return rgb2hed(np.moveaxis(rgb, 0, -1))[..., 0].astype(np.float32)


def _labels(result) -> np.ndarray:
    return zarr.open_array(result.labels + "/0", mode="r")[:]


def _picture(path, rgb: np.ndarray, labels: np.ndarray) -> None:
    """Outlines over the slide, for a person to look at (not asserted)."""
    iio.imwrite(path, (mark_boundaries(np.moveaxis(rgb, 0, -1), labels, color=(0, 1, 0)) * 255).astype(np.uint8))


def test_threshold_on_hematoxylin_equals_a_whole_image_reference(client, tmp_path, histo, histo_zarr):
    h = _hematoxylin(histo)
    smoothed = ndi.gaussian_filter(h, 1.0, mode="nearest", truncate=4.0)
    ref = measure.label(smoothed > filters.threshold_otsu(h), connectivity=2)
    sizes = np.bincount(ref.ravel())
    ref[sizes[ref] < 30] = 0  # min_size=30
    mono = bigseg.segment(histo_zarr, "threshold", name="mono", client=client, stain="hematoxylin", min_size=30,
                          block=h.shape)
    blocks = bigseg.segment(histo_zarr, "threshold", name="blocks", client=client, stain="hematoxylin",
                            min_size=30, block=BLOCK)
    assert mono.blocks == 1 and blocks.blocks == 12
    # the job-wide threshold is Otsu of the stain (the sample is level 0 here), whatever the blocking
    assert mono.threshold == blocks.threshold == pytest.approx(filters.threshold_otsu(h), rel=1e-6)
    assert same_partition(ref, _labels(mono))
    assert same_partition(ref, _labels(blocks))
    _picture(tmp_path / "threshold_over_histo.png", histo, _labels(blocks))
    assert 150 <= blocks.objects <= 230  # the slide's dark nuclei, touching ones as one (looked at once: 189)


def test_watershed_on_hematoxylin_blockwise_matches_monolithic(client, tmp_path, histo, histo_zarr):
    kwargs = dict(client=client, stain="hematoxylin", diameter=24)
    mono = bigseg.segment(histo_zarr, "watershed", name="ws_mono", block=histo.shape[1:], **kwargs)
    blocks = bigseg.segment(histo_zarr, "watershed", name="ws_blocks", block=BLOCK, **kwargs)
    assert mono.blocks == 1 and blocks.blocks == 12 and mono.threshold == blocks.threshold
    m = match(_labels(mono), _labels(blocks))
    assert m.f1 >= 0.995, m
    _picture(tmp_path / "watershed_over_histo.png", histo, _labels(blocks))
    assert 230 <= blocks.objects <= 340  # touching nuclei split, a few long ones too (looked at once: 299)


def test_table_of_an_rgba_slide_is_per_rgb_channel_and_per_stain(client, tmp_path, histo):
    alpha = np.full((1, *histo.shape[1:]), 255, np.uint8)
    path = write_image(tmp_path / "rgba.zarr", np.concatenate([histo, alpha]), "cyx", (1, 128, 128), levels=2)
    res = bigseg.segment(path, "watershed", name="n", client=client, stain="hematoxylin", diameter=24, block=BLOCK)
    labels = _labels(res)
    table = pd.read_parquet(res.table).sort_values("label", ignore_index=True)
    assert len(table) == res.objects > 150 and table["blocks_spanned"].max() >= 2
    names = ("r", "g", "b", "hematoxylin", "eosin", "dab")
    intensity = [c for c in table if "_intensity_" in c]
    assert sorted(intensity) == sorted(f"{s}_intensity_{n}" for s in ("mean", "min", "max", "std", "sum")
                                       for n in names)  # alpha is not measured, no c0..c3
    hed = np.moveaxis(rgb2hed(np.moveaxis(histo, 0, -1)).astype(np.float32), -1, 0)
    values = np.concatenate([histo.astype(np.float64), hed.astype(np.float64)])
    for row, obj in zip(table.itertuples(), ndi.find_objects(labels)):
        inside = labels[obj] == row.label
        for name, channel in zip(names, values):
            v = channel[obj][inside]
            np.testing.assert_allclose(getattr(row, f"mean_intensity_{name}"), v.mean(), rtol=1e-9, atol=1e-12)
            assert getattr(row, f"min_intensity_{name}") == v.min()
            assert getattr(row, f"max_intensity_{name}") == v.max()
            np.testing.assert_allclose(getattr(row, f"std_intensity_{name}"), v.std(), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(getattr(row, f"sum_intensity_{name}"), v.sum(), rtol=1e-9, atol=1e-12)
    # the nuclei are the haematoxylin: more of it, and darker in red, than the whole slide on average
    assert table["mean_intensity_hematoxylin"].median() > values[3].mean()
    assert table["mean_intensity_r"].median() < values[0].mean()


@pytest.mark.parametrize("voxels, step", [(20_000, 1), (5_000, 2)])
def test_the_job_sample_at_a_low_level_is_the_stain(monkeypatch, histo_zarr, voxels, step):
    """Job-wide values come from the stain at the sample's level (level 2, 75 x 125: whole, or a subsample
    when even it is too large), not from a colour channel."""
    monkeypatch.setattr(_sample, "SAMPLE_VOXELS", voxels)
    _sample.clear_sample_cache()
    view = open_image(histo_zarr).view(0, None, None, "eosin")
    level2 = zarr.open_array(histo_zarr + "/s2", mode="r")[:, ::step, ::step]
    eosin = rgb2hed(np.moveaxis(level2, 0, -1))[..., 1].astype(np.float32)
    try:
        np.testing.assert_array_equal(np.sort(_sample.job_sample(view)), np.sort(eosin.ravel()))
    finally:
        _sample.clear_sample_cache()


def _fails(capsys, argv, *words) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bigseg: error: "), (code, err)
    for w in words:
        assert w in err[0], err[0]


def test_bad_stain_input_is_one_line_and_writes_nothing(capsys, tmp_path, histo):
    grey = write_image(tmp_path / "grey.zarr", histo[0].astype(np.uint16), "yx", (128, 128), levels=2)
    three = write_image(tmp_path / "three.zarr", histo.astype(np.float32), "cyx", (1, 128, 128), levels=2)
    rgb = write_image(tmp_path / "rgb.zarr", histo, "cyx", (1, 128, 128), levels=2)
    before = {p: checksums(p) for p in (grey, three, rgb)}
    _fails(capsys, ["segment", grey, "--stain", "hematoxylin"], "1 channel(s) of uint16", "input.stain",
           "RGB or RGBA", "uint8")
    _fails(capsys, ["segment", three, "--stain", "eosin"], "3 channel(s) of float32", "input.stain")
    _fails(capsys, ["segment", rgb, "--stain", "hematoxylin", "--channel", "1"], "input: channel and stain exclude",
           "leave input.channel unset")
    _fails(capsys, ["segment", rgb, "--stain", "haematoxylin"], "input.stain", "hematoxylin")
    for path, sums in before.items():
        assert checksums(path) == sums and not os.path.exists(os.path.join(path, "labels")), path

"""The measurements table equals skimage's regionprops_table on the stitched labels read back whole."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from skimage.measure import regionprops_table

import bigseg
from bigseg.synthetic import nuclei, write_ome_zarr
from conftest import write_image


def _reference(labels, channels):
    props = regionprops_table(labels, np.moveaxis(channels, 0, -1),
                              properties=("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min",
                                          "intensity_max", "intensity_std"))
    return pd.DataFrame(props).sort_values("label", ignore_index=True)


@pytest.mark.parametrize("ndim", [2, 3])
def test_table_equals_regionprops_on_stitched_labels(client, tmp_path, ndim):
    shape = (40, 96, 128) if ndim == 3 else (300, 260)
    a, _ = nuclei(shape, seed=7)
    b = (a.astype(np.float64) * 0.5 + np.arange(a.size).reshape(shape) % 97).astype(np.uint16)  # second channel
    data = np.stack([a, b])
    scale = {"z": 2.0, "y": 0.25, "x": 0.5} if ndim == 3 else {"y": 0.25, "x": 0.5}
    axes = "czyx" if ndim == 3 else "cyx"
    chunks = (1, 8, 32, 32) if ndim == 3 else (1, 64, 64)
    translation = {"z": -7.5, "y": 3.25, "x": 120.0} if ndim == 3 else {"y": 3.25, "x": -41.0}
    path = write_ome_zarr(tmp_path / "t.zarr", data, axes, chunks, scale={"c": 1.0, **scale}, levels=2,
                          translation=translation)
    block = (16, 32, 64) if ndim == 3 else (128, 64)
    res = bigseg.segment(path, "watershed", name="n", client=client, block=block, halo=14)
    assert res.blocks >= 12
    labels = zarr.open_array(res.labels + "/0", mode="r")[:]
    table = pd.read_parquet(res.table).sort_values("label", ignore_index=True)
    ref = _reference(labels, data.astype(np.float64))
    assert len(table) == len(ref) == res.objects
    assert np.array_equal(table["label"], ref["label"]) and table["label"].tolist() == list(range(1, res.objects + 1))
    axes_names = "zyx"[-ndim:]
    sc = np.array([scale[a] for a in axes_names])
    tr = np.array([translation[a] for a in axes_names])
    np.testing.assert_array_equal(table["voxel_count"], ref["area"])
    np.testing.assert_allclose(table["volume" if ndim == 3 else "area"], ref["area"] * sc.prod())
    for d, ax in enumerate(axes_names):
        # physical: the voxel index times the scale, plus the image's translation
        np.testing.assert_allclose(table[f"centroid_{ax}"], ref[f"centroid-{d}"] * sc[d] + tr[d], rtol=1e-9)
        np.testing.assert_array_equal(table[f"bbox_min_{ax}"], ref[f"bbox-{d}"])
        np.testing.assert_array_equal(table[f"bbox_max_{ax}"], ref[f"bbox-{d + ndim}"])
    for c in range(2):
        np.testing.assert_allclose(table[f"mean_intensity_c{c}"], ref[f"intensity_mean-{c}"], rtol=1e-9)
        np.testing.assert_array_equal(table[f"min_intensity_c{c}"], ref[f"intensity_min-{c}"])
        np.testing.assert_array_equal(table[f"max_intensity_c{c}"], ref[f"intensity_max-{c}"])
        np.testing.assert_allclose(table[f"std_intensity_c{c}"], ref[f"intensity_std-{c}"], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(table[f"sum_intensity_c{c}"], ref[f"intensity_mean-{c}"] * ref["area"],
                                   rtol=1e-9)
    touches = np.zeros(len(ref), bool)
    for d in range(ndim):
        touches |= (ref[f"bbox-{d}"] == 0).to_numpy() | (ref[f"bbox-{d + ndim}"] == shape[d]).to_numpy()
    np.testing.assert_array_equal(table["touches_border"], touches)
    assert table["blocks_spanned"].min() == 1 and table["blocks_spanned"].max() >= 2
    assert table["blocks_spanned"].max() <= (8 if ndim == 3 else 4)


def test_an_empty_image_gives_an_empty_label_image_and_a_table_with_its_columns(client, tmp_path):
    path = write_image(tmp_path / "flat.zarr", np.zeros((16, 64, 64), np.uint16), "zyx", (8, 32, 32), levels=2)
    res = bigseg.segment(path, "threshold", name="none", client=client)
    assert res.objects == 0 and res.blocks_empty == res.blocks
    table = pd.read_parquet(res.table)
    assert len(table) == 0
    assert {"label", "voxel_count", "volume", "centroid_z", "mean_intensity_c0", "touches_border"} <= set(table)
    assert not zarr.open_array(res.labels + "/0")[:].any()

"""Measurement features through a real job: second-moment shape columns equal scikit-image's regionprops on the
stitched labels read back whole, colocalization columns equal numpy on each object's voxels, and bad settings
are one-line errors with nothing written."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table

import bigseg
from bigseg.cli import main
from bigseg.io.ome import open_image
from bigseg.synthetic import nuclei, write_ome_zarr
from conftest import checksums


def _two_channels(ndim: int, seed: int = 4):
    shape = (32, 96, 96) if ndim == 3 else (256, 224)
    a, _ = nuclei(shape, seed=seed)
    rng = np.random.default_rng(seed)
    b = (0.6 * a + rng.normal(150, 40, shape) * (rng.random(shape) > 0.3)).clip(0).astype(np.uint16)
    return np.stack([a, b])


def _write(tmp_path, data, scale):
    axes = "czyx" if data.ndim == 4 else "cyx"
    chunks = (1, 8, 32, 32) if data.ndim == 4 else (1, 64, 64)
    return write_ome_zarr(tmp_path / "two.zarr", data, axes, chunks, scale={"c": 1.0, **scale}, levels=2,
                          unit="micrometer")


@pytest.mark.parametrize("ndim", [2, 3])
def test_shape_and_colocalization_columns_equal_whole_image_references(client, tmp_path, ndim):
    data = _two_channels(ndim)
    scale = {"z": 2.0, "y": 0.5, "x": 0.75} if ndim == 3 else {"y": 0.5, "x": 0.5}
    path = _write(tmp_path, data, scale)
    block = (16, 32, 32) if ndim == 3 else (64, 64)
    res = bigseg.segment(path, "watershed", name="n", client=client, block=block, halo=14,
                         features="shape,colocalization")
    labels = zarr.open_array(res.labels + "/0", mode="r")[:]
    table = pd.read_parquet(res.table).sort_values("label", ignore_index=True)
    assert len(table) == res.objects > 30 and (table["blocks_spanned"] > 1).sum() > 5
    spacing = tuple(scale[a] for a in "zyx"[-ndim:])
    names = ["axis_major_length", "axis_minor_length", "inertia_tensor_eigvals", "solidity", "extent",
             "equivalent_diameter_area"]
    names += ["eccentricity", "orientation", "perimeter"] if ndim == 2 else []  # solidity on: the crop pass
    ref = pd.DataFrame(regionprops_table(labels, spacing=spacing, properties=["label"] + names))
    ref = ref.sort_values("label", ignore_index=True)
    assert table["label"].tolist() == ref["label"].tolist()
    for column in ref.columns[1:]:
        ours, theirs = table[column].to_numpy(), ref[column].to_numpy()
        if column == "orientation":  # an axis: -pi/2 and pi/2 are one direction (a symmetric object's sign is noise)
            ours, theirs = np.exp(2j * ours), np.exp(2j * theirs)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9, err_msg=column)

    # Manders' thresholds default to each channel's Otsu threshold of the job sample (level 1 here: <= 16 M)
    sample = zarr.open_array(path + "/s0", mode="r")[:]
    thresholds = [threshold_otsu(sample[c].astype(np.float32).ravel()) for c in range(2)]
    meta = zarr.open_group(res.labels, mode="r").attrs["bigseg"]["measure"]
    np.testing.assert_allclose(meta["colocalization_thresholds"], thresholds, rtol=1e-6)
    values = data.astype(np.float64)
    for row in table.itertuples():
        v = values[:, labels == row.label]
        above = v > np.asarray(meta["colocalization_thresholds"])[:, None]
        both = above[0] & above[1]
        assert row.pearson_c0_c1 == pytest.approx(np.corrcoef(v[0], v[1])[0, 1], rel=1e-8, abs=1e-12)
        if above[0].any():
            assert row.manders_m1_c0_c1 == pytest.approx(v[0][both].sum() / v[0][above[0]].sum(), rel=1e-9)
        if above[1].any():
            assert row.manders_m2_c0_c1 == pytest.approx(v[1][both].sum() / v[1][above[1]].sum(), rel=1e-9)


def test_measured_channels_and_given_thresholds(client, tmp_path):
    data = _two_channels(2)
    path = _write(tmp_path, np.concatenate([data, data[:1] // 2]), {"y": 1.0, "x": 1.0})
    res = bigseg.segment(path, "threshold", name="n", client=client, block=(64, 64), channels=[2, 0],
                         features="colocalization", colocalization_thresholds=[100, 300])
    table = pd.read_parquet(res.table)
    assert {"mean_intensity_c2", "mean_intensity_c0", "pearson_c2_c0"} <= set(table.columns)
    assert "mean_intensity_c1" not in table.columns
    labels = zarr.open_array(res.labels + "/0", mode="r")[:]
    row = table.sort_values("voxel_count").iloc[-1]
    v = np.stack([data[0] // 2, data[0]]).astype(np.float64)[:, labels == row["label"]]
    assert row["mean_intensity_c2"] == pytest.approx(v[0].mean())
    above = (v[0] > 100, v[1] > 300)
    assert row["manders_m1_c2_c0"] == pytest.approx(v[0][above[0] & above[1]].sum() / v[0][above[0]].sum())


@pytest.mark.parametrize("flags, message", [
    (["--features", "colocalization"], "colocalization needs 2 or more measured channels"),
    (["--channels", "3"], "not channel 3"),
    (["--parent", "cells"], "has no label image 'cells'"),
    (["--name", "cells", "--parent", "cells"], "is the label image this job writes"),
    (["--features", "shape", "--colocalization-thresholds", "5"], "given without the colocalization feature"),
])
def test_bad_measurement_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    image, _ = nuclei((128, 128), seed=1)
    path = write_ome_zarr(tmp_path / "one.zarr", image, "yx", (64, 64), levels=1)
    before = checksums(path)
    assert main(["segment", path, "--method", "threshold", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert checksums(path) == before and not open_image(path).labels


def test_neighbour_columns_through_a_job_equal_a_whole_table_kdtree_and_numpy(client, tmp_path):
    from scipy.spatial import cKDTree
    data = _two_channels(3)
    path = _write(tmp_path, data[:1], {"z": 2.0, "y": 0.5, "x": 0.75})
    res = bigseg.segment(path, "watershed", name="n", client=client, block=(16, 32, 32), halo=14,
                         features="neighbours", neighbour_radius="6um")
    table = pd.read_parquet(res.table).sort_values("label", ignore_index=True)
    assert len(table) == res.objects > 30
    xyz = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()
    distance, index = cKDTree(xyz).query(xyz, k=2)
    np.testing.assert_allclose(table["nearest_neighbour_distance"], distance[:, 1], rtol=1e-12)
    within = [len(n) - 1 for n in cKDTree(xyz).query_ball_point(xyz, 6.0)]
    assert table["neighbours_within_radius"].tolist() == within and max(within) > 0
    labels = zarr.open_array(res.labels + "/0", mode="r")[:]
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        x, y = a[:-1].ravel(), a[1:].ravel()
        keep = (x != y) & (x > 0) & (y > 0)
        pairs |= set(zip(x[keep].tolist(), y[keep].tolist())) | set(zip(y[keep].tolist(), x[keep].tolist()))
    touching = np.bincount([p[0] for p in pairs], minlength=int(labels.max()) + 1)
    assert table["touching_objects"].tolist() == touching[table["label"]].tolist() and touching.max() > 0
    meta = zarr.open_group(res.labels, mode="r").attrs["bigseg"]["measure"]
    assert meta["neighbour_radius"] == pytest.approx(6.0)

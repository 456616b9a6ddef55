"""``bigseg measure``: a table for a label image that exists, bigseg's or any NGFF label image (arbitrary uint64
ids, an id in several places), equal to scikit-image's regionprops on the whole arrays; bad label images are
one-line errors; an existing table is replaced only by a complete one."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr.writer import write_labels
from skimage.measure import regionprops_table

import bigseg
from bigseg.cli import main
from bigseg.synthetic import nuclei, write_ome_zarr
from conftest import checksums


def _image(tmp_path, shape=(24, 96, 128)):
    a, truth = nuclei(shape, seed=8)
    b = (0.5 * a + 37).astype(np.uint16)
    path = write_ome_zarr(tmp_path / "img.zarr", np.stack([a, b]), "czyx", (1, 8, 32, 32), levels=2,
                          scale={"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5}, unit="micrometer")
    return path, np.stack([a, b]).astype(np.float64), truth


def _foreign(truth: np.ndarray) -> np.ndarray:
    """The truth with huge, scattered uint64 ids; one id also marks a second, far-away object."""
    rng = np.random.default_rng(0)
    ids = np.unique(truth[truth > 0])
    lut = np.zeros(int(truth.max()) + 1, np.uint64)
    lut[ids] = np.uint64(2**62) + rng.choice(2**40, ids.size, replace=False).astype(np.uint64) * np.uint64(7919)
    out = lut[truth]
    first, last = ids[0], ids[-1]
    out[truth == last] = lut[first]  # id of the first object on the last one too
    return out


def test_measure_a_foreign_label_image_equals_regionprops_on_the_whole_arrays(client, tmp_path):
    path, channels, truth = _image(tmp_path)
    labels = _foreign(truth)
    write_labels(labels, zarr.open_group(path, mode="r+"), name="cells", axes="zyx", scaler=None)
    result = bigseg.measure(path, "cells", client=client, block=(8, 32, 64), features="shape")
    table = pd.read_parquet(result.table).sort_values("label", ignore_index=True)
    # regionprops on the whole arrays (it needs ids it can index: the same objects, renumbered by rank)
    ids, rank = np.unique(labels, return_inverse=True)
    ranked = rank.reshape(labels.shape).astype(np.int64)
    ref = pd.DataFrame(regionprops_table(ranked, np.moveaxis(channels, 0, -1), spacing=(2.0, 0.5, 0.5),
                                         properties=("label", "area", "centroid", "bbox", "intensity_mean",
                                                     "intensity_max", "axis_major_length", "axis_minor_length")))
    ref = ref.sort_values("label", ignore_index=True)
    assert len(table) == len(ref) == result.objects == ids.size - 1 > 50
    assert table["label"].to_numpy(np.uint64).tolist() == ids[1:].tolist()
    assert (table["blocks_spanned"] > 1).sum() > 10
    np.testing.assert_array_equal(table["voxel_count"], ref["area"] / (2.0 * 0.5 * 0.5))
    for i, axis in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{axis}"], ref[f"centroid-{i}"], rtol=1e-12)
        np.testing.assert_array_equal(table[f"bbox_min_{axis}"], ref[f"bbox-{i}"])
        np.testing.assert_array_equal(table[f"bbox_max_{axis}"], ref[f"bbox-{i + 3}"])
    for c in range(2):
        np.testing.assert_allclose(table[f"mean_intensity_c{c}"], ref[f"intensity_mean-{c}"], rtol=1e-12)
        np.testing.assert_array_equal(table[f"max_intensity_c{c}"], ref[f"intensity_max-{c}"])
    for name in ("axis_major_length", "axis_minor_length"):
        np.testing.assert_allclose(table[name], ref[name], rtol=1e-6)


def test_measure_replaces_a_segment_jobs_table_with_the_same_rows_and_more_columns(client, tmp_path, capsys):
    path, _, _ = _image(tmp_path)
    res = bigseg.segment(path, "watershed", name="n", client=client, block=(8, 32, 64), halo=(4, 10, 10))
    before = pd.read_parquet(res.table).sort_values("label", ignore_index=True)
    assert main(["measure", path, "--labels", "n", "--features", "colocalization,neighbours",
                 "--neighbour-radius", "5um", "--block", "8,64,64", "--scheduler", client.scheduler.address]) == 0
    assert f"measured {res.objects} objects" in capsys.readouterr().out
    after = pd.read_parquet(res.table).sort_values("label", ignore_index=True)
    assert {"pearson_c0_c1", "nearest_neighbour_distance", "touching_objects"} <= set(after.columns)
    for column in before.columns:
        if column == "blocks_spanned":  # the measure job's own blocks
            continue
        np.testing.assert_allclose(after[column].to_numpy(float), before[column].to_numpy(float), rtol=1e-12,
                                   err_msg=column)
    assert not [p for p in (tmp_path / "img.zarr" / "labels" / "n").iterdir() if ".old-" in p.name]


@pytest.mark.parametrize("data, message", [
    (np.full((24, 96, 128), 1.5, np.float32), "not integers"),
    (np.full((24, 96, 128), -3, np.int32), "negative ids"),
    (np.ones((24, 50, 64), np.uint8), "the shape of no level of the image"),
])
def test_bad_label_images_are_one_line_errors(client, tmp_path, capsys, data, message):
    path, _, _ = _image(tmp_path)
    write_labels(np.zeros(data.shape, np.uint8), zarr.open_group(path, mode="r+"), name="bad", axes="zyx",
                 scaler=None)
    group = zarr.open_group(f"{path}/labels/bad", mode="r+")  # ome-zarr refuses to write these: the array by hand
    level = group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    zarr.create_array(group.store, name=level, data=data, chunks=data.shape, overwrite=True)
    before = checksums(path)
    assert main(["measure", path, "--labels", "bad", "--scheduler", client.scheduler.address]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert checksums(path) == before
    assert not (tmp_path / "img.zarr" / "labels" / "bad" / "measurements.parquet").exists()


def test_measure_names_a_missing_label_image(tmp_path, capsys):
    path, _, _ = _image(tmp_path)
    assert main(["measure", path, "--labels", "nope"]) == 2
    assert "has no label image 'nope'" in capsys.readouterr().err

"""Partial statistics merge exactly: split an object's voxels any way, merge, get the whole's statistics (second
moments and colocalization sums included), and their columns equal scikit-image's and numpy's."""
import numpy as np
import pytest

from bigseg.measure import partials as measure


def test_merging_fragments_gives_the_statistics_of_the_whole():
    rng = np.random.default_rng(0)
    labels = np.zeros((6, 8), np.uint32)
    labels[1:5, 1:7] = 1
    channels = rng.normal(100, 10, (2, 6, 8))
    whole = measure.block_partials(labels, channels, (0, 0), 1)
    left = measure.block_partials(labels[:, :4], channels[:, :, :4], (0, 0), 1)
    right = measure.block_partials(labels[:, 4:], channels[:, :, 4:], (0, 4), 1)
    merged = measure.merge(measure.concat([left, right]), np.array([0, 0]), 1)
    for key in whole:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12)
    values = channels[:, labels == 1]
    np.testing.assert_allclose(np.sqrt(merged["m2"][0] / merged["count"][0]), values.std(axis=1), rtol=1e-12)
    assert merged["bbox_min"].tolist() == [[1, 1]] and merged["bbox_max"].tolist() == [[5, 7]]


def _blockwise(labels: np.ndarray, channels: np.ndarray, block: int, extras: measure.Extras) -> dict:
    """Per-object partials computed block by block (each block's own ids 1..n) and merged by object."""
    parts, groups = [], []
    for origin in np.ndindex(*[-(-s // block) for s in labels.shape]):
        region = tuple(slice(o * block, (o + 1) * block) for o in origin)
        core = labels[region]
        ids = np.unique(core[core > 0])
        if ids.size == 0:
            continue
        local = np.searchsorted(ids, core) + 1
        local[core == 0] = 0
        parts.append(measure.block_partials(local, channels[(slice(None),) + region],
                                            tuple(s.start for s in region), ids.size, extras))
        groups.append(ids - 1)
    return measure.merge(measure.concat(parts), np.concatenate(groups), int(labels.max()))


def _objects(shape, n, seed) -> np.ndarray:
    """Labels 1..n: overlapping random ellipsoids (later ones on top), every label present."""
    from skimage.draw import ellipsoid
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    grid = np.indices(shape)
    for i in range(1, n + 1):
        centre = [rng.uniform(3, s - 3) for s in shape]
        radii = rng.uniform(2, 7, len(shape))
        rot = np.linalg.qr(rng.normal(size=(len(shape), len(shape))))[0]
        d = np.tensordot(rot, grid - np.reshape(centre, (-1,) + (1,) * len(shape)), axes=1)
        labels[(np.square(d / np.reshape(radii, (-1,) + (1,) * len(shape))).sum(0) <= 1)] = i
    present = np.unique(labels[labels > 0])
    return (np.searchsorted(present, labels) + 1) * (labels > 0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_second_moments_and_colocalization_merge_exactly_across_blocks(ndim):
    shape = (40, 70, 60)[-ndim:]
    labels = _objects(shape, 25, seed=ndim).astype(np.uint32)
    rng = np.random.default_rng(1)
    base = rng.normal(1000, 100, shape)
    channels = np.stack([base + rng.normal(0, 50, shape), 0.5 * base + rng.normal(0, 80, shape),
                         rng.normal(300, 30, shape)])
    extras = measure.Extras(moments=True, thresholds=(1000.0, 500.0, 300.0))
    whole = measure.block_partials(labels, channels, (0,) * ndim, int(labels.max()), extras)
    merged = _blockwise(labels, channels, 16, extras)
    assert set(whole) == set(merged) >= {"coord_m2", "cross_m2", "coloc_sum"}
    for key in whole:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-9, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("ndim, spacing", [(2, (1.0, 1.0)), (2, (0.5, 0.5)), (3, (2.0, 0.5, 0.75))])
def test_moment_shape_columns_equal_scikit_image_regionprops(ndim, spacing):
    from skimage.measure import regionprops_table
    from bigseg.measure.columns import shape_columns
    shape = (40, 70, 60)[-ndim:]
    labels = _objects(shape, 30, seed=10 + ndim)
    channels = np.ones((1,) + shape)
    merged = _blockwise(labels, channels, 16, measure.Extras(moments=True))
    ours = shape_columns(merged["coord_m2"], merged["count"], np.asarray(spacing))
    names = ["axis_major_length", "axis_minor_length", "inertia_tensor_eigvals"]
    names += ["eccentricity", "orientation"] if ndim == 2 else []
    ref = regionprops_table(labels, spacing=spacing, properties=["label"] + names)
    assert list(ref["label"]) == list(range(1, int(labels.max()) + 1))
    for name in [c for c in ref if c != "label"]:
        assert name in ours, name
        mine, theirs = ours[name], ref[name]
        if name == "orientation":  # an axis: -pi/2 and pi/2 are one direction
            mine, theirs = np.exp(2j * mine), np.exp(2j * theirs)
        np.testing.assert_allclose(mine, theirs, rtol=1e-7, atol=1e-9, err_msg=name)


def test_colocalization_columns_equal_numpy_on_each_objects_voxels():
    from bigseg.measure.columns import colocalization_columns
    shape = (30, 50, 40)
    labels = _objects(shape, 20, seed=5)
    rng = np.random.default_rng(2)
    a = rng.normal(1000, 200, shape)
    channels = np.stack([a, 0.7 * a + rng.normal(0, 150, shape), rng.normal(500, 100, shape)])
    thresholds = (1000.0, 700.0, 520.0)
    merged = _blockwise(labels, channels, 16, measure.Extras(thresholds=thresholds))
    cols = colocalization_columns(merged, ["dapi", "gfp", "rfp"])
    names = ["dapi", "gfp", "rfp"]
    for i in range(1, int(labels.max()) + 1):
        v = channels[:, labels == i]
        for a_, b_ in [(0, 1), (0, 2), (1, 2)]:
            pair = f"{names[a_]}_{names[b_]}"
            assert cols[f"pearson_{pair}"][i - 1] == pytest.approx(np.corrcoef(v[a_], v[b_])[0, 1], rel=1e-9)
            above_a, above_b = v[a_] > thresholds[a_], v[b_] > thresholds[b_]
            m1 = v[a_][above_a & above_b].sum() / v[a_][above_a].sum()
            m2 = v[b_][above_a & above_b].sum() / v[b_][above_b].sum()
            assert cols[f"manders_m1_{pair}"][i - 1] == pytest.approx(m1, rel=1e-9)
            assert cols[f"manders_m2_{pair}"][i - 1] == pytest.approx(m2, rel=1e-9)

"""Partial statistics merge exactly: split an object's voxels any way, merge, get the whole's statistics."""
import numpy as np

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

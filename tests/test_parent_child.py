"""Parent-child measurements: each child gets the parent holding most of its voxels and that share, each parent
its children's count and total size, equal to numpy on the whole arrays, with objects spanning blocks, through
``segment --parent`` and ``measure --parent``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

import bigseg
from bigseg.cli import main
from bigseg.synthetic import nuclei, write_ome_zarr


@pytest.fixture
def cells(tmp_path):
    """Channel 0: nuclei; channel 1: foci (discs of radius 2-4), most inside nuclei, some across a nucleus'
    edge, some on the background."""
    shape = (256, 320)
    a, truth = nuclei(shape, seed=5)
    rng = np.random.default_rng(5)
    foci = np.full(shape, 100, np.uint16)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    inside = np.argwhere(truth > 0)
    centres = list(inside[rng.choice(len(inside), 60, replace=False)]) + list(rng.integers(0, shape, (15, 2)))
    for (cy, cx), r in zip(centres, rng.uniform(2, 4, len(centres))):
        foci[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 3000
    path = write_ome_zarr(tmp_path / "cells.zarr", np.stack([a, foci]), "cyx", (1, 32, 32), levels=2,
                          scale={"c": 1.0, "y": 0.5, "x": 0.25})
    return path


def _expected(child: np.ndarray, parent: np.ndarray):
    """Per child: the parent with most of its voxels (smallest id of a tie; 0 if none) and the share; per parent:
    the children's count and voxels."""
    best, share = {}, {}
    for c in np.unique(child[child > 0]):
        under = parent[child == c]
        ids, n = np.unique(under[under > 0], return_counts=True)
        if ids.size == 0:
            best[c], share[c] = 0, 0.0
        else:
            k = np.flatnonzero(n == n.max())[0]
            best[c], share[c] = int(ids[k]), n[k] / under.size
    return best, share


def _check(child_table, parent_table, child, parent, pixel_area):
    best, share = _expected(child, parent)
    rows = child_table.set_index("label")
    assert rows["parent_nuclei"].to_dict() == best
    np.testing.assert_allclose([rows["parent_nuclei_overlap"][c] for c in best], [share[c] for c in best],
                               rtol=1e-12)
    counts = pd.Series(best).value_counts()
    sizes = {p: sum((child == c).sum() for c, q in best.items() if q == p) * pixel_area for p in counts.index}
    prow = parent_table.set_index("label")
    assert set(prow.index) == set(np.unique(parent[parent > 0]).tolist())
    for p in prow.index:
        assert prow["n_foci"][p] == counts.get(p, 0)
        assert prow["foci_total_area"][p] == pytest.approx(sizes.get(p, 0.0), rel=1e-12)
    return counts


def test_foci_per_nucleus_through_segment_and_measure(client, cells, capsys):
    nuclei_job = bigseg.segment(cells, "watershed", name="nuclei", client=client, block=(64, 64), halo=14)
    foci_job = bigseg.segment(cells, "threshold", name="foci", client=client, block=(32, 32), channel=1,
                              threshold=1000, parent="nuclei")
    child = zarr.open_array(foci_job.labels + "/0", mode="r")[:]
    parent = zarr.open_array(nuclei_job.labels + "/0", mode="r")[:]
    foci_table = pd.read_parquet(foci_job.table)
    nuclei_table = pd.read_parquet(nuclei_job.table)
    counts = _check(foci_table, nuclei_table, child, parent, 0.5 * 0.25)
    assert counts.get(0, 0) >= 5 and counts.drop(0, errors="ignore").max() >= 2  # foci outside, and several in one
    assert (foci_table["blocks_spanned"] > 1).sum() >= 5 and (nuclei_table["blocks_spanned"] > 1).sum() >= 10
    assert ((foci_table["parent_nuclei_overlap"] > 0) & (foci_table["parent_nuclei_overlap"] < 1)).any()
    # the same from bigseg measure on the existing label images
    assert main(["measure", cells, "--labels", "foci", "--parent", "nuclei", "--block", "96,96",
                 "--scheduler", client.scheduler.address]) == 0
    _check(pd.read_parquet(foci_job.table), pd.read_parquet(nuclei_job.table), child, parent, 0.5 * 0.25)


def test_a_parent_on_another_level_is_refused(client, cells, capsys):
    bigseg.segment(cells, "watershed", name="nuclei", client=client, block=(64, 64), halo=14, level=1)
    assert main(["segment", cells, "--method", "threshold", "--channel", "1", "--name", "foci",
                 "--parent", "nuclei"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none the shape of the measured level 0" in err and len(err.splitlines()) == 1

"""The touch rule's face tasks on small fragment arrays, against every contact found voxel by voxel with numpy."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr

from bigseg.blocks import plan_grid
from bigseg.segment_blocks import JobFiles
from bigseg.stitch import TouchTask, _unique_pairs, touch_edges


def contacts(fragments: np.ndarray, block_shape: tuple[int, ...], connectivity: int) -> set:
    """(block A, fragment A, block B, fragment B) of every two labelled voxels in different blocks that touch
    (offsets of at most ``connectivity`` nonzero steps), A before the face along an axis where the blocks
    differ."""
    grid_shape = tuple(-(-s // b) for s, b in zip(fragments.shape, block_shape))
    out = set()
    for offset in itertools.product((-1, 0, 1), repeat=fragments.ndim):
        if not 0 < np.count_nonzero(offset) <= connectivity:
            continue
        src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, fragments.shape))
        dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, fragments.shape))
        a, b = fragments[src], fragments[dst]
        hit = (a > 0) & (b > 0)
        pos_a = [i + s.start for i, s in zip(np.nonzero(hit), src)]
        pos_b = [p + o for p, o in zip(pos_a, offset)]
        blocks_a = [p // s for p, s in zip(pos_a, block_shape)]
        blocks_b = [p // s for p, s in zip(pos_b, block_shape)]
        crosses = np.zeros(hit.sum(), bool)
        for d, o in enumerate(offset):  # A is before a face it crosses forwards along d
            crosses |= (o == 1) & (blocks_a[d] != blocks_b[d])
        ids_a = np.ravel_multi_index(blocks_a, grid_shape)[crosses]
        ids_b = np.ravel_multi_index(blocks_b, grid_shape)[crosses]
        out |= set(zip(ids_a.tolist(), a[hit][crosses].tolist(), ids_b.tolist(), b[hit][crosses].tolist()))
    return out


@pytest.mark.parametrize("shape, block", [((20, 30, 40), (5, 10, 8)), ((9, 9, 9), (9, 3, 2)), ((64, 70), (16, 16))])
def test_grouped_faces_find_every_contact_and_nothing_else(tmp_path, shape, block):
    rng = np.random.default_rng(len(shape))
    fragments = ((rng.random(shape) < 0.3) * rng.integers(1, 6, shape)).astype(np.uint32)
    grid = plan_grid(shape, block, (1,) * len(shape), block)  # the last blocks along some axes are clipped
    files = JobFiles(str(tmp_path / "work"))
    zarr.create_array(store=files.fragments, shape=shape, shards=block, chunks=block, dtype=np.uint32,
                      fill_value=0)[...] = fragments
    for connectivity in range(1, len(shape) + 1):
        want = contacts(fragments, block, connectivity)
        assert len(want) > 40
        for max_voxels in (1, 4 * np.prod(block), np.prod(shape)):  # one block per group ... one group
            groups = grid.groups(int(max_voxels))
            got = set()
            for group in groups:
                got |= set(map(tuple, touch_edges(TouchTask(group, files, connectivity)).tolist()))
            assert got == want, (connectivity, len(groups))


def test_contact_pairs_are_deduplicated_alike_with_and_without_one_code():
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 50, (2, 1000))
    want = sorted(set(zip(*pairs.tolist())))
    assert sorted(zip(*_unique_pairs(pairs, 50).tolist())) == want  # through one int64 code
    assert sorted(zip(*_unique_pairs(pairs, 2**40).tolist())) == want  # keys too large for one code

"""The block grid on small shapes whose answer you can see."""
import math

import numpy as np
import pytest

from bigseg.blocks import block_budget, plan_grid
from bigseg.errors import ParameterError


def test_grid_covers_the_image_with_clipped_last_blocks():
    grid = plan_grid((10, 25), (5, 10), (2, 3), block_shape=(5, 10))
    assert grid.grid_shape == (2, 3) and len(grid) == 6
    last = grid.block((1, 2))
    assert last.core == (slice(5, 10), slice(20, 25))
    assert last.extended == (slice(3, 10), slice(17, 25))
    assert last.core_in_extended == (slice(2, 7), slice(3, 8))
    assert sum((b.core[0].stop - b.core[0].start) * (b.core[1].stop - b.core[1].start) for b in grid) == 250


def test_halo_is_dropped_along_axes_with_one_block():
    grid = plan_grid((16, 64, 64), (16, 32, 32), (4, 4, 4), block_shape=(16, 32, 32))
    assert grid.halo == (0, 4, 4)


def test_default_block_is_whole_chunks_within_the_budget():
    grid = plan_grid((128, 1024, 1024), (64, 256, 256), (0, 0, 0), max_voxels=2**25)
    assert grid.block_shape == (128, 512, 512)
    assert all(b % c == 0 for b, c in zip(grid.block_shape, (64, 256, 256)))


def test_default_blocks_are_at_least_four_halos_where_memory_allows():
    # a deep model's halo of 96 on a 2048^2 image, 256^2 chunks, and a parallelism budget of 2^18 voxels
    grid = plan_grid((2048, 2048), (256, 256), (96, 96), max_voxels=2**18)
    assert grid.block_shape == (512, 512) and min(grid.block_shape) >= 4 * 96
    # ... but never past the memory bound: a halo of 100 in 3D gets blocks of 2^25 voxels at most, not 400^3
    grid = plan_grid((4096, 4096, 4096), (64, 64, 64), (100, 100, 100), max_voxels=2**18)
    assert grid.block_shape == (320, 320, 320) and math.prod(grid.block_shape) <= 2**25
    # small halos change nothing
    assert plan_grid((128, 1024, 1024), (64, 256, 256), (4, 4, 4), max_voxels=2**25).block_shape == (128, 512, 512)


def test_the_default_block_budget_follows_the_method_memory_and_the_workers():
    # StarDist's ~500 bytes a voxel: 4 M-voxel blocks (2048^2) on a whole slide, not 32 M
    budget, memory = block_budget((16384, 16384), 2, 500)
    assert memory == 2**31 // 500 and budget == memory
    assert plan_grid((16384, 16384), (1024, 1024), (64, 64), max_voxels=budget, memory_voxels=memory).block_shape \
        == (2048, 2048)
    # the classical methods: the 32 M bound, and four blocks per worker on a 128 x 1024 x 1024 volume
    assert block_budget((128, 1024, 1024), 2, 40) == (2**27 // 8, 2**25)


def test_neighbours_include_edges_and_corners_once():
    grid = plan_grid((4, 4, 4), (2, 2, 2), (1, 1, 1), block_shape=(2, 2, 2))
    assert len(grid.neighbour_offsets((0, 0, 0))) == 7
    assert len(grid.neighbour_pairs()) == 28  # 8 blocks, every pair touches
    assert len(grid.face_pairs()) == 12


@pytest.mark.parametrize("block, halo, words", [((3, 10), (0, 0), "not a multiple"),
                                                ((5, 10), (6, 0), "halo 6 is larger"),
                                                ((5, 10, 5), (0, 0), "has 3 values")])
def test_blocks_and_halos_that_do_not_fit_are_refused(block, halo, words):
    with pytest.raises(ParameterError, match=words):
        plan_grid((10, 25), (5, 10), halo, block_shape=block)


@pytest.mark.parametrize("max_voxels", [1, 500, 2000, 10**6])
def test_groups_tile_the_grid_once_within_their_budget(max_voxels):
    grid = plan_grid((10, 25, 30), (2, 5, 5), (1, 1, 1), block_shape=(4, 10, 5))  # 3 x 3 x 6 blocks, some clipped
    groups = grid.groups(max_voxels)
    ids = sorted(b.id for g in groups for b in g.blocks())
    assert ids == list(range(len(grid)))  # every block in exactly one group
    for g in groups:
        core = np.zeros(grid.shape, bool)
        for b in g.blocks():
            core[b.core] = True
        assert core[g.core].all() and core.sum() == core[g.core].size  # the blocks fill the group's core
        assert core.sum() <= max_voxels or len(g.blocks()) == 1
    sizes = {len(g.blocks()) for g in groups}
    assert sizes == {1} if max_voxels == 1 else len(groups) == 1 if max_voxels == 10**6 else max(sizes) > 1

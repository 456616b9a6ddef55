"""Previews: the job restricted to one region, with the full job's job-wide values (threshold, normalisation),
so that the preview is what the full job writes there (up to the numbering of objects).

How the region's objects are found depends on what the method's result depends on:

* a class map (``Output.CLASSES``): voxel by voxel, exact wherever the halo covers the method's footprint,
  so the region is read with the job's halo and segmented as one block;
* a stitch rule whose objects do not depend on the blocking (``touch``: connected components of the whole
  image's foreground): a window around the region is segmented as one block, grown until every object seen
  in the region ends inside it, so that its shape and ``min_size`` are judged on the whole object;
* a rule whose result depends on the blocks (``iou``: each block's own prediction, joined or dropped by its
  neighbours'): the job's own blocks are replayed in this process, the ones under the region first, then
  the neighbours that their objects reach, until no object seen in the region reaches a block not run; they
  are stitched by the job's own stitch code, in memory.

Nothing is written (the blocks' intermediate files live in an in-memory file system); a preview larger than
``bigseg.preview.max-voxels`` stops growing and says which objects may differ from the full job.
"""
from __future__ import annotations

import logging
import re
import uuid

import dask.config
import numpy as np
import zarr

from bigseg.blocks import extend, intersect, region_text, region_voxels, shift
from bigseg.errors import InputError, ParameterError
from bigseg.io import store
from bigseg.io.ome import ImageView, open_array
from bigseg.pipeline import Plan, inner_chunks
from bigseg.relabel import final_ids
from bigseg.segment_blocks import BlockSummary, JobFiles, segment_block
from bigseg.stitch import resolve
from bigseg.stitch_rules import Output

log = logging.getLogger(__name__)
#: Voxels a preview reads at most (windows or replayed blocks with their halo) before it stops growing.
MAX_VOXELS = 2**27
#: A preview's picture is enlarged (whole pixels) until its shorter side has at least this many pixels.
PICTURE_PIXELS = 512


def region_of(region, view: ImageView) -> tuple[slice, ...]:
    """A region given as ``"0:32,1000:1512,2000:2512"`` (``:`` alone is the whole axis), a sequence of
    ``(start, stop)`` pairs or slices, one per spatial axis (z, y, x), checked against the image."""
    axes, shape = ",".join(view.image.spatial_axes), view.shape
    if isinstance(region, str):
        parts = region.split(",")
        bounds = []
        for part in parts:
            m = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", part)
            if m is None:
                raise ParameterError(f"region: '{part}' is not start:stop; write one start:stop per axis "
                                     f"({axes}), e.g. {_example(shape)}")
            bounds.append(tuple(int(v) if v else None for v in m.groups()))
    else:
        try:
            bounds = [(r.start, r.stop) if isinstance(r, slice) else tuple(int(v) for v in r) for r in region]
        except (TypeError, ValueError):
            raise ParameterError(f"region: give one (start, stop) per axis ({axes}), e.g. {_example(shape)}") \
                from None
    if len(bounds) != len(shape) or any(len(b) != 2 for b in bounds):
        raise ParameterError(f"region: has {len(bounds)} ranges but the image is {len(shape)}D ({axes}, shape "
                             f"{tuple(shape)}); give one start:stop per axis, e.g. {_example(shape)}")
    out = tuple(slice(0 if a is None else int(a), s if b is None else int(b)) for (a, b), s in zip(bounds, shape))
    for axis, r, s in zip(view.image.spatial_axes, out, shape):
        if r.start < 0 or r.stop > s:
            raise ParameterError(f"region: {axis} {r.start}:{r.stop} is outside the image (0:{s} along {axis}, "
                                 f"shape {tuple(shape)}); give a region inside it")
        if r.start >= r.stop:
            raise ParameterError(f"region: {axis} {r.start}:{r.stop} is empty; give start < stop")
    return out


def _example(shape) -> str:
    return ",".join(f"{s // 2}:{min(s, s // 2 + 64)}" for s in shape)


def preview(plan: Plan, region) -> np.ndarray:
    """The labels the job of ``plan`` (from :func:`bigseg.pipeline.plan_segmentation`) writes over ``region``:
    object ids numbered 1..n in raster order of first appearance (the full job's numbering differs), or the
    class numbers of a class map."""
    region = region_of(region, plan.view)
    log.info("preview of %s with the job's values %s", region_text(region), plan.method.job_values())
    if plan.method.output() is Output.CLASSES:
        return _method_labels(plan, region).astype(np.uint32)
    if not depends_on_blocks(plan.method, plan.view.ndim):
        return _consecutive(_in_window(plan, region))
    return _consecutive(_replayed(plan, region))


def depends_on_blocks(method, ndim: int) -> bool:
    """Whether the method's stitched objects depend on the job's blocks (a class map's values do not)."""
    return method.output() is not Output.CLASSES and not method.stitch_rule(ndim).independent_of_blocks


def _max_voxels() -> int:
    return int(dask.config.get("bigseg.preview.max-voxels", default=MAX_VOXELS))


def _method_labels(plan: Plan, window: tuple[slice, ...]) -> np.ndarray:
    """The method's labels over ``window``, read with the job's halo as the job reads a block (aligned the same
    way); background blocks of the job (``plan.active``) are 0, as the job leaves them."""
    view = plan.view
    extended = extend(window, plan.halo, view.shape, plan.method.alignment(view.ndim))
    try:
        data = view.read(extended)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or missing chunks
        raise InputError(f"{view.image.url}: cannot read {region_text(extended)} ({type(err).__name__}: {err}); "
                         "repair the image, or preview another region") from None
    labels = np.asarray(plan.method(data, view.voxel_size))[shift(window, _origin(extended))]
    if plan.active is not None:  # as the job: labels only in active blocks' cores, inside their kept boxes
        labelled = np.zeros(labels.shape, bool)
        for block in plan.active_blocks():
            part = intersect(block.core, window)
            kept = plan.kept_region(block)
            if part is not None and kept is not None:
                part = intersect(part, kept)
            if part is not None:
                labelled[shift(part, _origin(window))] = True
        labels[~labelled] = 0
    return labels


def _in_window(plan: Plan, region: tuple[slice, ...]) -> np.ndarray:
    """Objects of a rule independent of the blocking: the rule's fragments of a window around ``region``
    (as if it were one block), the window doubled until no object seen in the region touches a side of the
    window that is inside the image; min_size is judged on whole objects."""
    view, rule = plan.view, plan.method.stitch_rule(plan.view.ndim)
    margin = tuple(max(h, 1) for h in plan.halo)
    while True:
        window = extend(region, margin, view.shape)
        objects = rule.fragments(_method_labels(plan, window))
        inside = objects[shift(region, _origin(window))]
        cut = np.intersect1d(np.unique(inside), _on_open_sides(objects, window, view.shape))
        cut = cut[cut > 0]
        log.info("preview: window %s, %d object(s) of the region reach its sides", region_text(window), cut.size)
        if cut.size == 0:
            break
        if region_voxels(extend(window, margin, view.shape)) > _max_voxels():
            log.warning("preview: %d object(s) in region %s reach beyond %s (bigseg.preview.max-voxels): they "
                        "may be larger, or joined, in the full job", cut.size, region_text(region),
                        region_text(window))
            break
        margin = tuple(2 * m for m in margin)
    sizes = np.bincount(objects.ravel())
    inside = inside.copy()
    inside[sizes[inside] < plan.min_size] = 0
    return inside


def _on_open_sides(labels: np.ndarray, window: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Labels on the sides of ``window`` that are not sides of the image (objects that may go on beyond)."""
    ids = [np.zeros(0, labels.dtype)]
    for d, (w, s) in enumerate(zip(window, shape)):
        if w.start > 0:
            ids.append(np.unique(np.take(labels, 0, axis=d)))
        if w.stop < s:
            ids.append(np.unique(np.take(labels, -1, axis=d)))
    return np.unique(np.concatenate(ids))


def _replayed(plan: Plan, region: tuple[slice, ...]) -> np.ndarray:
    """The full job's labels over ``region`` for a rule that depends on the blocks: the job's blocks under the
    region, then the neighbours their objects reach, segmented and stitched as the job does (same code), in
    an in-memory work folder."""
    grid, view = plan.grid, plan.view
    rule = plan.method.stitch_rule(view.ndim)
    files = JobFiles(f"memory://bigseg-preview-{uuid.uuid4().hex}")
    zarr.create_array(store=files.fragments, shape=view.shape, shards=grid.block_shape,
                      chunks=inner_chunks(grid.block_shape), dtype=np.uint32, fill_value=0, zarr_format=3)
    summaries = [BlockSummary.empty(i) for i in range(len(grid))]
    active = plan.active if plan.active is not None else np.ones(len(grid), bool)
    under = [b for b in grid if active[b.id] and intersect(b.core, region) is not None]
    todo, done, voxels = [b.id for b in under], set(), 0
    try:
        while True:
            for i in todo:
                summaries[i] = segment_block(plan.segment_task(_block(grid, i), files))
            done.update(todo)
            voxels += _read_voxels(grid, todo)
            fn, tasks = rule.edge_tasks(grid, files, summaries, plan.spec.stitch.iou_threshold)
            lookup = resolve(summaries, len(grid), [fn(t) for t in tasks], plan.min_size)
            labels, seen = _final_labels(files, summaries, lookup, under, region)
            todo = sorted(_reached(plan, files, summaries, lookup, done, seen) & set(np.flatnonzero(active)))
            log.info("preview: %d block(s) of the job run (%d voxels read), %d more reached", len(done), voxels,
                     len(todo))
            if not todo:
                return labels
            if voxels + _read_voxels(grid, todo) > _max_voxels():
                log.warning("preview: objects in region %s reach %d more block(s) beyond the %d run "
                            "(bigseg.preview.max-voxels): they may differ in the full job", region_text(region),
                            len(todo), len(done))
                return labels
    finally:
        store.remove(files.work_url)


def _final_labels(files: JobFiles, summaries: list, lookup, under: list, region: tuple[slice, ...]):
    """The stitched ids over ``region`` (from the blocks ``under`` it), and the objects (joined groups of
    boundary fragments) seen there."""
    fragments = open_array(files.fragments, "", 3)
    labels = np.zeros(tuple(s.stop - s.start for s in region), np.uint64)
    seen = set()
    for b in under:
        inside, s = intersect(b.core, region), summaries[b.id]
        piece = fragments[inside]
        lut = final_ids(lookup.boundary_ids.get(b.id, np.zeros(0, np.int64)), int(lookup.interior_base[b.id]),
                        s.n_fragments, np.uint64)
        labels[shift(inside, _origin(region))] = lut[piece]
        ids = np.unique(piece)
        ids = ids[(ids > 0) & (ids <= s.n_boundary)]
        if ids.size:
            seen.update(lookup.boundary_groups[b.id][ids - 1].tolist())
    return labels, seen


def _block(grid, i: int):
    return grid.block(np.unravel_index(i, grid.grid_shape))


def _read_voxels(grid, ids) -> int:
    """Voxels the blocks ``ids`` read (with their halo)."""
    return sum(region_voxels(_block(grid, i).extended) for i in ids)


def _reached(plan: Plan, files: JobFiles, summaries: list, lookup, done: set, seen: set) -> set:
    """Blocks not yet run that hold part of an object seen in the region, or decide about it: a boundary
    fragment of a run block is compared with a neighbour wherever it lies in the neighbour's halo, or (for
    rules that keep it) its prediction over the neighbour's core does."""
    grid, rule = plan.grid, plan.method.stitch_rule(plan.view.ndim)
    fragments = open_array(files.fragments, "", 3)
    seen = np.fromiter(seen, np.int64, len(seen))
    out = set()
    for i in done:
        k = summaries[i].n_boundary
        if not k or not np.isin(lookup.boundary_groups[i], seen).any():
            continue
        block = _block(grid, i)
        for offset in grid.neighbour_offsets(block.index):
            index = tuple(a + o for a, o in zip(block.index, offset))
            other = grid.flat_id(index)
            if other in done or other in out:
                continue
            ids = [np.zeros(0, np.uint32)]
            near = intersect(block.core, grid.extended(index))  # this block's fragments in its halo
            if near is not None:
                ids.append(np.unique(fragments[near]))
            if rule.keeps_halo and intersect(block.extended, grid.core(index)) is not None:
                ids.append(np.unique(store.load_array(files.halo_slab(i, offset))))  # its prediction there
            ids = np.unique(np.concatenate(ids)).astype(np.int64)
            ids = ids[(ids > 0) & (ids <= k)]
            if ids.size and np.isin(lookup.boundary_groups[i][ids - 1], seen).any():
                out.add(other)
    return out


def write_picture(view: ImageView, region, labels: np.ndarray, url: str) -> str:
    """A PNG of the region's image with the outlines of its preview ``labels`` (the middle plane in 3D)."""
    from bigseg import qc
    region = region_of(region, view)
    zoom = max(1, PICTURE_PIXELS // min(labels.shape[-2:]))  # small regions drawn large enough to judge
    if view.ndim == 3:
        middle = labels.shape[0] // 2
        plane = view.read((slice(region[0].start + middle, region[0].start + middle + 1), *region[1:]))[0]
        return qc.write_picture(plane, labels[middle], url, zoom)
    return qc.write_picture(view.read(region), labels, url, zoom)


def _origin(region: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.start for s in region)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n in the order they first appear in raster order (0 stays 0)."""
    values, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    objects = np.flatnonzero(values)
    ids = np.zeros(values.size, np.uint32)
    ids[objects[np.argsort(first[objects], kind="stable")]] = np.arange(1, objects.size + 1, dtype=np.uint32)
    return ids[inverse].reshape(labels.shape)

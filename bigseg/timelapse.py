"""Time-lapse jobs: which timepoints a job segments (``input.timepoints``, checked against the image before
anything runs), and the tracking stage that links their objects (``track``).

A time-lapse job segments each selected timepoint as a job of that one timepoint would, with the same job-wide
values (computed once, from the first selected timepoint): its t axis is a batch axis of the block grid
(:meth:`bigseg.blocks.BlockGrid.over`), so every block-wise mechanism runs over (t, block) and no object joins
across timepoints. The label image has the image's whole t axis (the timepoints not selected stay 0), so that it
lies over its image; the table's ``t`` is the timepoint's index in the image.
"""
from __future__ import annotations

from bigseg.errors import InputError, ParameterError
from bigseg.io import store
from bigseg.io.ome import OmeImage


def selected_timepoints(spec, image: OmeImage) -> tuple[int, ...] | None:
    """The timepoints of ``image`` that the job ``spec`` segments, in order (None: one timepoint, a job without
    a t axis); raises a one-line error for a selection the image does not have and for tracking without a
    time-lapse."""
    selection, track = spec.input.timepoints, spec.track.enabled
    has_t = "t" in image.axis_names
    if selection is None:
        if track:
            fix = "select 2 or more with input.timepoints (e.g. all)" if has_t else \
                f"{image.url} has no t axis (axes {','.join(image.axis_names)})"
            raise ParameterError(f"track: tracking links objects between timepoints of a time-lapse; {fix}")
        return None
    if not has_t:
        raise InputError(f"input.timepoints: {image.url} has no t axis (axes {','.join(image.axis_names)}); drop "
                         "input.timepoints to segment the image as it is")
    n = image.size("t")
    frames = _resolve(selection, n)
    if track and len(frames) < 2:
        raise ParameterError(f"track: input.timepoints selects {len(frames)} timepoint; tracking links objects "
                             "between timepoints: select 2 or more, or turn tracking off")
    fg = spec.foreground
    if fg.skip_background or fg.mask is not None or fg.threshold is not None:
        raise ParameterError("foreground: background skipping works on one timepoint, not on input.timepoints; "
                             "leave foreground.skip_background, mask and threshold unset (every block is read)")
    if "neighbours" in spec.measure.features or spec.measure.parent is not None:
        raise ParameterError("measure: neighbours and parent work on one timepoint, not on input.timepoints yet; "
                             "drop them, or segment one timepoint (input.timepoint)")
    return frames


def _resolve(selection, n: int) -> tuple[int, ...]:
    """``all``, ``start:stop[:step]`` or a list, as timepoints of an image of ``n``."""
    out_of_range = InputError(f"input.timepoints: {_text(selection)} is out of range: the image has {n} "
                              f"timepoints (0..{n - 1}); give timepoints within that range")
    if isinstance(selection, list):
        if selection[-1] >= n:
            raise out_of_range
        return tuple(selection)
    if selection == "all":
        return tuple(range(n))
    start, stop, *step = selection.split(":")
    start, stop = int(start or 0), int(stop) if stop else n
    if stop > n or start >= n:
        raise out_of_range
    if start >= stop:
        raise ParameterError(f"input.timepoints: {selection} selects no timepoint; give start < stop, e.g. 0:{n}")
    return tuple(range(start, stop, int(step[0]) if step else 1))


def _text(selection) -> str:
    return ",".join(map(str, selection)) if isinstance(selection, list) else selection


def t_scale(image: OmeImage, level: int) -> float:
    """The t axis' scale at ``level``: time per timepoint, in the t axis' unit."""
    return float(image.levels[level].scale[image.axis_names.index("t")])


def track(plan, stages, labels: tuple[str, str, int], parts_url: str, work_url: str, tracks_url: str) -> None:
    """The tracking stage: the steps of :func:`bigseg.measure.tracks.plan` on the job's label image (level 0)
    over the job's spatial blocks, adding the track columns to the table's parts in ``parts_url`` and writing
    the tracks table to ``tracks_url``; each step's tasks are recorded, so a resumed job redoes only the rest."""
    from bigseg.measure import tracks
    view = plan.view
    parts = sorted(store.join(parts_url, name) for name in store.children(parts_url) if name.endswith(".parquet"))
    steps = tracks.plan(labels, [b.core for b in plan.grid.frame], plan.frames, parts, view.voxel_size,
                        t_scale(view.image, view.level), plan.spec.track, work_url, tracks_url, frames=plan.frames)
    for i, tasks in enumerate(steps):
        stages.run("track", tracks.run, tasks, step=f"track-{i}", results=False)

"""The Python API: ``segment(spec | image, ...)`` runs one job on a cluster chosen by profile."""
from __future__ import annotations

import contextlib
import os

import numpy as np

from bigseg.engine.handle import JobHandle
from bigseg.estimate import Estimate
from bigseg.errors import ParameterError
from bigseg.io import store
from bigseg.io.storage import StorageOptions
from bigseg.pipeline import SegmentResult
from bigseg.spec import JobSpec, from_file, from_kwargs


def segment(job, method=None, name: str | None = None, *, profile: str | None = None, client=None,
            scheduler: str | None = None, workers: int | None = None, gpus: int | str | None = None,
            observer=None, cancellation=None, **kwargs) -> SegmentResult:
    """Segment an OME-Zarr image block-wise and write NGFF labels and a measurements table.

    Parameters
    ----------
    job : JobSpec, job-file path (``.yaml``/``.json``) or image path/URL
        The job. With an image, the job is built from ``method``, ``name`` and ``kwargs``.
    method : str or Method
        ``"threshold"``, ``"watershed"`` (default), ``"cellpose"``, ``"stardist"`` or ``"pixel-classifier"``.
    name : str
        Label name: written to ``IMAGE/labels/<name>`` unless ``output`` is given. Default: the method.
    profile : str
        Cluster profile from Dask's config (``bigseg.profiles``); default: ``bigseg.profile`` (``local``).
    client, scheduler, workers, gpus
        A ``distributed.Client`` to use, a scheduler address, or the size of a new local cluster (CPU
        workers, plus one worker per GPU: a count or ``"auto"``; default "auto" for ``gpu=True`` methods).
    observer, cancellation
        Receives the job's events (a :class:`bigseg.engine.events.Observer` or a function of one event); a
        :class:`bigseg.engine.cancel.Cancellation` whose ``cancel()`` stops the job from another thread
        (see :func:`submit`).
    **kwargs
        ``level, channel, timepoint, timepoints, stain`` (input; ``timepoints="all"``, ``"0:10"`` or ``[0, 5, 9]``:
        a time-lapse), ``track`` (link its objects), ``block, halo`` (blocks), ``iou_threshold``, ``output`` (a
        standalone label image URL), ``overwrite``, ``skip_bad_blocks``, ``keep_work``; any other keyword is a
        method parameter (``sigma``, ``diameter``, ``min_size``, ``model``, ...). Lengths take units: ``"8um"``.

    Returns
    -------
    SegmentResult
        Paths of the label image and table, object and block counts, seconds per stage.

    Examples
    --------
    >>> result = bigseg.segment("nuclei.zarr", "watershed", name="nuclei", diameter="8um")  # doctest: +SKIP
    >>> spec = bigseg.JobSpec.from_file("job.yaml"); bigseg.segment(spec, profile="slurm")  # doctest: +SKIP
    """
    from bigseg import pipeline
    with _planned_on_cluster(as_spec(job, method, name, **kwargs), profile, client, scheduler, workers,
                             gpus) as (job_plan, c):
        return pipeline.run(job_plan, c, observer, cancellation)


def dry_run(job, method=None, name: str | None = None, *, profile: str | None = None, client=None,
            scheduler: str | None = None, workers: int | None = None, gpus: int | str | None = None,
            **kwargs) -> Estimate:
    """Plan a job as :func:`segment` would, run one representative block (one with objects, near the image's
    centre) on a worker of the job's cluster, and estimate the job: blocks, halo overhead, peak memory per
    worker, seconds per stage. Nothing is written. Takes :func:`segment`'s arguments (less the observer).

    >>> bigseg.dry_run("nuclei.zarr", "watershed", diameter="8um").summary()  # doctest: +SKIP
    """
    from bigseg.estimate import estimate
    spec = _one_timepoint(as_spec(job, method, name, **kwargs), "a dry run")
    with _planned_on_cluster(spec, profile, client, scheduler, workers, gpus) as (job_plan, c):
        return estimate(job_plan, c)


def _one_timepoint(spec: JobSpec, what: str) -> JobSpec:
    """``spec``, refused when it is a time-lapse (not yet supported by ``what``)."""
    if spec.input.timepoints is not None:
        raise ParameterError(f"input.timepoints: {what} runs on one timepoint; set input.timepoint (e.g. the first "
                             "of the time-lapse) instead")
    return spec


def measure(image, labels: str, *, features=(), channels=None, parent: str | None = None,
            neighbour_radius=None, colocalization_thresholds=None, block=None, profile: str | None = None,
            client=None, scheduler: str | None = None, workers: int | None = None):
    """Measure a label image that exists (``IMAGE/labels/<labels>``, written by bigseg or not: ids arbitrary)
    into ``IMAGE/labels/<labels>/measurements.parquet``, replacing the table there when the new one is complete.

    ``features``, ``channels``, ``parent``, ``neighbour_radius``, ``colocalization_thresholds``: as the job's
    ``measure`` section (see :class:`bigseg.spec.job.MeasureSpec`); ``block``: voxels per task (z,y,x); the
    cluster as for :func:`segment`.

    >>> bigseg.measure("cells.zarr", "nuclei", features="shape", channels=[0, 1])  # doctest: +SKIP
    """
    from bigseg import measure_labels
    from bigseg.spec.files import measure_settings
    settings = measure_settings({k: v for k, v in {
        "features": features, "channels": channels, "parent": parent, "neighbour_radius": neighbour_radius,
        "colocalization_thresholds": colocalization_thresholds}.items() if v is not None})
    with _on_cluster(lambda n: measure_labels.plan(os.fspath(image), labels, settings, n, block), None, profile,
                     client, scheduler, workers, None) as (job_plan, c):
        return measure_labels.run(job_plan, c)


@contextlib.contextmanager
def _planned_on_cluster(spec: JobSpec, profile, client, scheduler, workers, gpus):
    """The job planned for its cluster, and a client of that cluster: the one given, or one opened by profile
    (the plan is checked before a cluster starts when the profile knows its size)."""
    from bigseg import pipeline
    with _on_cluster(lambda n: pipeline.plan(spec, n), lambda p: bool((p.method if p else spec.method).resources()),
                     profile, client, scheduler, workers, gpus) as planned:
        yield planned


@contextlib.contextmanager
def _on_cluster(make_plan, needs_gpu, profile, client, scheduler, workers, gpus):
    """``make_plan(n_workers)`` and a client of the cluster it runs on: the one given, or one opened by profile
    (planned before the cluster starts when the profile knows its size; ``needs_gpu(plan or None)``: whether
    the job needs GPU workers)."""
    from bigseg import cluster
    if client is not None:
        yield make_plan(cluster.n_workers(client)), client
        return
    if scheduler is not None:
        if profile is not None:
            raise ParameterError("a scheduler address and a profile exclude each other: give one")
        profile = {"kind": "address", "address": scheduler}
    _, prof = cluster.resolve_profile(profile)
    previous = store.configure(prof.storage_options) if prof.storage_options else None
    try:
        planned = prof.planned_workers(workers)
        job_plan = make_plan(planned) if planned else None  # checked before a cluster starts
        gpu = bool(needs_gpu(job_plan)) if needs_gpu else False
        with cluster.open_cluster(profile, workers=workers, gpus=gpus, gpu=gpu) as c:  # by name: errors name it
            if prof.storage_options:
                c.register_plugin(StorageOptions(prof.storage_options))
            yield job_plan or make_plan(cluster.n_workers(c)), c
    finally:
        if previous is not None:
            store.configure(previous)


def preview(job, method=None, region=None, *, profile: str | None = None, workers: int | None = None,
            **kwargs) -> np.ndarray:
    """Segment one region of an image as the full job would: the job-wide values (threshold, normalisation)
    come from the whole image's job sample, objects cut by the region's edge are seen whole, and the result
    equals the full job's labels over the region (up to the numbering of objects). Runs in this process, needs
    no cluster, writes nothing.

    Parameters
    ----------
    job, method, **kwargs
        The job, as for :func:`segment` (a spec, a job file, or an image with the method and its parameters).
    region : str or sequence
        ``"0:32,1000:1512,2000:2512"`` (start:stop per spatial axis z,y,x; ``:`` is the whole axis), or one
        ``(start, stop)`` pair or slice per axis.
    profile, workers
        The cluster the full job would run on: its size sets the default blocks, which methods stitched by
        overlap (watershed, deep models) depend on.

    Returns
    -------
    numpy.ndarray
        uint32 labels of the region's shape: objects numbered 1..n, or class numbers for a class map.

    Examples
    --------
    >>> labels = bigseg.preview("nuclei.zarr", "watershed", region="0:16,0:256,0:256", diameter=8)  # doctest: +SKIP
    """
    from bigseg import cluster, pipeline, previews
    if region is None:
        raise ParameterError("region: give the region to preview, one start:stop per axis, e.g. 0:32,0:512,0:512")
    spec = _one_timepoint(as_spec(job, method, None, **kwargs), "a preview")
    view = pipeline.open_view(spec)
    previews.region_of(region, view)  # checked before the job sample is read
    n = cluster.resolve_profile(profile)[1].planned_workers(workers)
    if n is None and spec.blocks.shape is None and previews.depends_on_blocks(spec.method, view.ndim):
        raise ParameterError(f"method '{spec.method.name}' gives results that depend on the job's blocks, which "
                             "depend on the size of the profile's cluster, unknown before it starts: set "
                             "blocks.shape (or the number of workers) as the full job will have it")
    return previews.preview(pipeline.plan_segmentation(spec, n or 1), region)


def submit(job, method=None, name: str | None = None, **kwargs) -> JobHandle:
    """Start :func:`segment` in a thread of this process and return its handle at once: ``handle.cancel()``
    stops the job (its output stays incomplete; the same job run again resumes it), ``handle.result()`` waits
    for the :class:`SegmentResult` (or raises the job's error, :class:`~bigseg.errors.JobCancelled` after a
    cancel). The job is checked here, before the thread starts.

    >>> handle = bigseg.submit("nuclei.zarr", "watershed", observer=print)  # doctest: +SKIP
    >>> handle.cancel(); handle.result()  # doctest: +SKIP
    """
    if "cancellation" in kwargs:
        raise TypeError("submit() makes the job's cancellation itself: use handle.cancel()")
    spec = as_spec(job, method, name, **{k: v for k, v in kwargs.items() if k not in RUN_KEYWORDS})
    run = {k: v for k, v in kwargs.items() if k in RUN_KEYWORDS}
    return JobHandle(lambda cancellation: segment(spec, cancellation=cancellation, **run))


#: ``segment`` keywords that say where and how a job runs, not what it is.
RUN_KEYWORDS = ("profile", "client", "scheduler", "workers", "gpus", "observer")


def as_spec(job, method=None, name: str | None = None, **kwargs) -> JobSpec:
    """A :class:`JobSpec` from a spec, a job file, or an image with keyword arguments."""
    if isinstance(job, JobSpec):
        if method is not None or name is not None or kwargs:
            raise TypeError("segment(spec) takes no method, name or job keywords: change the spec instead "
                            "(spec.model_copy(update=...)) or pass an image path")
        return job
    path = os.fspath(job)
    if path.endswith((".yaml", ".yml", ".json")) and os.path.isfile(path):
        return from_file(path)
    return from_kwargs(path, method or "watershed", name, **kwargs)

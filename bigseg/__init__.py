"""bigseg: segment images too big for one machine's memory, block by block on a Dask cluster."""
from __future__ import annotations

from bigseg.config import JobSpec
from bigseg.errors import BigsegError
from bigseg.io.ome import open_image
from bigseg.pipeline import SegmentResult

__version__ = "0.1.0"


def segment(image, method: str = "watershed", name: str | None = None, *, client=None, scheduler: str | None = None,
            workers: int | None = None, gpus: int | str | None = None, level: int = 0, channel: int | None = None,
            timepoint: int | None = None, block=None, halo=None, output=None, overwrite: bool = False,
            iou_threshold: float = 0.5, skip_bad_blocks: bool = False,
            observer=None, cancellation=None, **params) -> SegmentResult:
    """Segment an OME-Zarr image block-wise and write NGFF labels and a measurements table.

    Parameters
    ----------
    image : str or path
        OME-Zarr image (local path or fsspec URL).
    method : str
        ``"threshold"``, ``"watershed"``, ``"cellpose"``, ``"stardist"`` or ``"pixel-classifier"``; ``params``
        are its parameters (``sigma``, ``threshold``, ``diameter``, ``model``, ``gpu``, ``min_size``, ...).
    name : str
        Label name: written to ``IMAGE/labels/<name>`` unless ``output`` is given. Default: the method.
    client, scheduler, workers, gpus
        A ``distributed.Client`` to use, a scheduler address, or the size of a new local cluster (CPU
        workers, plus one worker per GPU: a count or ``"auto"``; default "auto" for ``gpu=True`` methods).

    overwrite, skip_bad_blocks
        Replace an existing label image (an unfinished job with the same settings is resumed without it);
        leave blocks whose input cannot be read unlabelled instead of failing.
    observer, cancellation
        Receives the job's events (a :class:`bigseg.engine.Observer` or a function of one event); a
        :class:`bigseg.engine.Cancellation` whose ``cancel()`` stops the job from another thread.

    Returns
    -------
    SegmentResult
        Paths of the label image and table, object and block counts, seconds per stage.

    Examples
    --------
    >>> result = bigseg.segment("nuclei.zarr", "watershed", name="nuclei", diameter=10)  # doctest: +SKIP
    >>> result.objects, result.labels, result.table  # doctest: +SKIP
    """
    from bigseg import cluster, pipeline
    spec = JobSpec(image=image, method=method, name=name, params=params, level=level, channel=channel,
                   timepoint=timepoint, block=tuple(block) if block is not None else None, halo=halo,
                   output=output, overwrite=overwrite, iou_threshold=iou_threshold,
                   skip_bad_blocks=skip_bad_blocks)
    if client is None and scheduler is None:  # check everything before a local cluster starts
        job = pipeline.plan(spec, workers or cluster.default_workers())
        if gpus is None and params.get("gpu"):
            gpus = "auto"
        with cluster.connect(workers=workers, gpus=gpus) as c:
            return pipeline.run(job, c, observer, cancellation)
    with cluster.connect(scheduler, workers, client) as c:
        return pipeline.run(pipeline.plan(spec, cluster.n_workers(c)), c, observer, cancellation)


__all__ = ["BigsegError", "JobSpec", "SegmentResult", "open_image", "segment", "__version__"]

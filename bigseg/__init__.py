"""bigseg: segment images too big for one machine's memory, block by block on a Dask cluster."""
from __future__ import annotations

from bigseg import defaults as _defaults  # noqa: F401 - bigseg.yaml under dask.config, before anything reads it
from bigseg.api import dry_run, preview, segment, submit
from bigseg.errors import BigsegError
from bigseg.io.ome import open_image
from bigseg.methods import Method
from bigseg.pipeline import SegmentResult
from bigseg.spec import JobSpec

__version__ = "0.2.0"

__all__ = ["BigsegError", "JobSpec", "Method", "SegmentResult", "dry_run", "open_image", "preview", "segment",
           "submit", "__version__"]

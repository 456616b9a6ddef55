"""bigseg: segment images too big for one machine's memory, block by block on a Dask cluster."""
from __future__ import annotations

from bigseg import defaults as _defaults  # noqa: F401 - bigseg.yaml under dask.config, before anything reads it
from bigseg.api import dry_run, measure, preview, segment, submit
from bigseg.errors import BigsegError
from bigseg.io.ome import open_image
from bigseg.methods import Method
from bigseg.pipeline import SegmentResult
from bigseg.spec import JobSpec

# bigseg.measure is the function (measure a label image); the package bigseg/measure/ is reached by its modules
# (from bigseg.measure import partials), which still works: the import system finds it in sys.modules
__version__ = "0.2.0"

__all__ = ["BigsegError", "JobSpec", "Method", "SegmentResult", "dry_run", "measure", "open_image", "preview",
           "segment", "submit", "__version__"]

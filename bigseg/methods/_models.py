"""Models are loaded once per worker process and reused for every block.

``load(spec, loader)`` keeps one model per spec (a hashable description: method, model name or path,
device) in a per-process cache; ``LOADS`` counts real loads so that tests can prove it.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Hashable

_CACHE: dict[Hashable, Any] = {}
_LOCK = threading.Lock()
#: How many times each spec was really loaded in this process.
LOADS: collections.Counter = collections.Counter()


def load(spec: Hashable, loader: Callable[[], Any]) -> Any:
    with _LOCK:
        if spec not in _CACHE:
            _CACHE[spec] = loader()
            LOADS[spec] += 1
        return _CACHE[spec]


def worker_threads() -> int | None:
    """The threads of the Dask worker this runs in (None outside a worker)."""
    try:
        from distributed import get_worker
        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def load_counts() -> dict:
    """Loads per spec in this process (run on each worker with ``client.run``)."""
    return {repr(k): v for k, v in LOADS.items()}


def missing_package(method: str, package: str, extra: str) -> Exception:
    from bigseg.errors import ParameterError
    return ParameterError(f"method '{method}' needs the package '{package}', which is not installed; "
                          f"install it with: pip install 'bigseg[{extra}]'")

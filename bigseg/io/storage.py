"""Storage options on Dask workers: the same fsspec options as the client process (see
:func:`bigseg.io.store.configure`), applied in every worker, including workers that join later.

    client.register_plugin(StorageOptions(profile.storage_options))

The options (credentials) travel pickled to the scheduler and the workers only; the plugin's ``repr`` and
the logs name the protocols, never the values.
"""
from __future__ import annotations

import logging

from distributed.diagnostics.plugin import WorkerPlugin

from bigseg.io import store

log = logging.getLogger(__name__)


class StorageOptions(WorkerPlugin):
    """Apply ``storage_options`` (``{protocol: {option: value}}``) in each worker process."""

    #: One registration per client: registering again replaces the options.
    name = "bigseg-storage-options"

    def __init__(self, storage_options: dict):
        self._options = store.check_options(storage_options)  # a wrong shape fails here, not on the workers
        self._previous: dict = {}

    def setup(self, worker) -> None:
        self._previous = store.configure(self._options)
        log.debug("storage options applied on %s for %s", getattr(worker, "address", "?"), sorted(self._options))

    def teardown(self, worker) -> None:
        store.configure({p: self._previous.get(p) or {} for p in self._options})

    def __repr__(self) -> str:
        return f"StorageOptions(protocols={sorted(self._options)})"


"""A job running in a thread of this process, with a handle to cancel it and wait for its result."""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Callable, Generic, TypeVar

from bigseg.engine.cancel import Cancellation

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobHandle(Generic[T]):
    """Runs ``job(cancellation)`` in a thread at once.

    ``cancel()`` asks the job to stop (it raises :class:`~bigseg.errors.JobCancelled`, and so does
    ``result()``); ``result()`` returns what the job returned or re-raises its error.

    Examples
    --------
    >>> handle = JobHandle(lambda token: bigseg.segment("a.zarr", cancellation=token))  # doctest: +SKIP
    >>> handle.cancel(); handle.result()  # doctest: +SKIP
    Traceback (most recent call last):
    bigseg.errors.JobCancelled: job cancelled; the output is incomplete: run the same job again to resume
    """

    def __init__(self, job: Callable[[Cancellation], T], name: str = "bigseg-job"):
        self.cancellation = Cancellation()
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        self._future.set_running_or_notify_cancel()
        self._thread = threading.Thread(target=self._main, args=(job,), name=name, daemon=True)
        self._thread.start()

    def _main(self, job) -> None:
        try:
            result = job(self.cancellation)
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the result
            log.debug("job %s ended with %s", self._thread.name, type(err).__name__)
            self._future.set_exception(err)
        else:
            self._future.set_result(result)

    def cancel(self) -> None:
        """Ask the job to stop; returns at once (``wait()`` for the job to have stopped)."""
        self.cancellation.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called (the job may have finished before it saw it)."""
        return self.cancellation.cancelled

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job to end; True if it has."""
        concurrent.futures.wait([self._future], timeout)
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        """What the job returned; re-raises its error; ``TimeoutError`` if it is still running after
        ``timeout`` seconds."""
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

"""A cancellation token: set from any thread, checked by the job, with callbacks that release work at once."""
from __future__ import annotations

import logging
import threading
from typing import Callable

from bigseg.errors import JobCancelled

log = logging.getLogger(__name__)


class Cancellation:
    """Cancel a running job from another thread.

    ``cancel()`` sets the token and runs the registered callbacks (the runner's: cancel the stage's
    pending futures, so that the scheduler releases them and the job's wait wakes up).
    """

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks = list(self._callbacks.values())
        log.info("job cancelled")
        for fn in callbacks:
            _call(fn)

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise JobCancelled()

    def wait(self, timeout: float | None = None) -> bool:
        """True once cancelled (blocks up to ``timeout`` seconds)."""
        return self._event.wait(timeout)

    def on_cancel(self, fn: Callable[[], object]) -> Callable[[], None]:
        """Run ``fn`` when the token is cancelled (at once if it already is); returns a function that
        unregisters it."""
        with self._lock:
            key, self._next = self._next, self._next + 1
            if not self._event.is_set():
                self._callbacks[key] = fn
                return lambda: self._callbacks.pop(key, None)
        _call(fn)
        return lambda: None


def _call(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a callback must not stop the others; the job checks the token itself
        log.exception("a cancellation callback failed")

"""The stage runner: one stage's tasks mapped over the cluster, resumable, observable, cancellable.

Tasks the journal records as finished are skipped; every other task runs to its end before a failure is
raised (so a resumed job redoes only the tasks that failed); each finished batch is reported as a
:class:`~bigseg.engine.events.StageAdvanced`; a cancellation cancels the stage's futures at once (the
scheduler releases them) and raises :class:`~bigseg.errors.JobCancelled`. Tasks already running on a
worker run to their end (Python cannot interrupt them); what they record is kept for the next run.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from bigseg.blocks import region_text
from bigseg.engine import events as ev
from bigseg.engine.cancel import Cancellation
from bigseg.engine.journal import CHECKPOINT_EVERY, Journal, run_and_record
from bigseg.errors import BigsegError, BlockError

log = logging.getLogger(__name__)
#: Retries of a failed task before the job fails (lost workers are handled by Dask itself).
RETRIES = 2
#: Prefix of every task key the runner submits (``bigseg-<step>-<job key>-<i>``).
KEY_PREFIX = "bigseg-"


class StageRunner:
    """Runs a job's stages on ``client``; keeps seconds per stage and the number of resumed tasks per step."""

    def __init__(self, client, journal: Journal, key: str, observer: ev.Observer | None = None,
                 cancellation: Cancellation | None = None, retries: int = RETRIES):
        self.client, self.journal, self.key, self.retries = client, journal, key, retries
        self.observer = ev.as_observer(observer)
        self.cancellation = cancellation or Cancellation()
        self.seconds: dict[str, float] = {}
        self.resumed: dict[str, int] = {}

    def run(self, name: str, fn, tasks: list, step: str | None = None, resources=None,
            results: bool = True, order: list[int] | None = None) -> list:
        """Results of ``fn`` over ``tasks``, in order; ``name`` is the stage timed, ``step`` (default
        ``name``) the journal folder and the stage named in the events. ``results=False``: the job does not use
        them (resumed tasks give ``None``), so resuming only lists the step's records. ``order``: the task
        indices in the order the workers should start them (default: as given)."""
        self.cancellation.raise_if_cancelled()
        t0 = time.perf_counter()
        step, total = step or name, len(tasks)
        done = self.journal.finished(step, results) if tasks else {}
        done = {i: r for i, r in done.items() if i < total}
        self.observer.on_event(ev.StageStarted(step, total, len(done)))
        results_of = [done.get(i) for i in range(total)]
        if done:
            self.resumed[step] = len(done)
            self.observer.on_event(ev.StageAdvanced(step, len(done), total))
        todo = [i for i in (range(total) if order is None else order) if i not in done]
        checkpoint = _Checkpoints(self.journal, step) if results else None
        failures = self._map(step, fn, tasks, todo, results_of, resources, len(done), checkpoint) if todo else []
        seconds = time.perf_counter() - t0
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        log.info("stage %s: %d tasks (%d resumed, %d failed) in %.2f s", step, total, len(done), len(failures),
                 seconds)
        self.observer.on_event(ev.StageEnded(step, seconds))
        if failures:
            raise stage_error(name, tasks, sorted(failures, key=lambda f: f[0]))
        return results_of

    def _map(self, step, fn, tasks, todo, results, resources, n_done, checkpoint=None) -> list:
        from distributed import as_completed
        futures = self.client.map(run_and_record, [fn] * len(todo), [tasks[i] for i in todo],
                                  [self.journal.record_stem(step, i) for i in todo],
                                  key=[f"{KEY_PREFIX}{step}-{self.key}-{i}" for i in todo],
                                  retries=self.retries, resources=resources, pure=False)
        index = dict(zip((f.key for f in futures), todo))
        failures, ended = [], False
        forget = self.cancellation.on_cancel(lambda: self._release(futures))
        try:
            for batch in as_completed(futures).batches():
                if self.cancellation.cancelled:
                    break
                for fut in batch:
                    if fut.status == "finished":
                        results[index[fut.key]] = fut.result()
                        if checkpoint is not None:
                            checkpoint.add(index[fut.key], results[index[fut.key]])
                    else:  # reported together, after every task ended
                        failures.append((index[fut.key], _error_of(fut)))
                n_done += len(batch)
                self.observer.on_event(ev.StageAdvanced(step, n_done, len(tasks)))
            else:
                ended = True
        except BaseException:
            if not self.cancellation.cancelled:
                raise  # else: a future cancelled under the loop; JobCancelled is raised below
        finally:
            forget()
            if checkpoint is not None:
                checkpoint.flush()
            if not ended:  # cancelled, interrupted, or an observer failed: leave nothing queued
                self._release(futures)
        self.cancellation.raise_if_cancelled()
        return failures

    def _release(self, futures) -> None:
        """Cancel ``futures`` so that the scheduler forgets them (queued tasks never start)."""
        try:
            self.client.cancel(futures)
        except Exception:  # noqa: BLE001 - a closed client has nothing left to release
            log.debug("could not cancel the stage's futures", exc_info=True)

    @contextmanager
    def local(self, name: str):
        """Times work done on the client (stitch resolution, measure merge, finalize) under ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class _Checkpoints:
    """Collects a step's results as they arrive and writes them to the journal every ``CHECKPOINT_EVERY``."""

    def __init__(self, journal: Journal, step: str):
        self.journal, self.step, self.pending = journal, step, {}

    def add(self, index: int, result) -> None:
        self.pending[index] = result
        if len(self.pending) >= CHECKPOINT_EVERY:
            self.flush()

    def flush(self) -> None:
        try:
            self.journal.checkpoint(self.step, self.pending)
        except OSError:  # the tasks' own records still hold these results
            log.warning("could not write a checkpoint of step %s", self.step, exc_info=True)
        self.pending = {}


def _error_of(future) -> BaseException:
    """A failed task's error, taken without raising it here: a raised error's traceback would hold this
    frame, and with it every future of the stage (and the scheduler their results) until garbage collection."""
    if future.status == "error":
        return future.exception()
    from concurrent.futures import CancelledError
    return CancelledError(f"task {future.key} was {future.status}")


def stage_error(name: str, tasks: list, failures: list) -> Exception:
    """One error for a stage's failed tasks: the first, named, with how many failed and what was kept."""
    from distributed import KilledWorker
    i, err = failures[0]
    what = f"block {tasks[i].block.id} {region_text(tasks[i].block.core)}" if hasattr(tasks[i], "block") else \
        f"blocks {region_text(tasks[i].group.core)}" if hasattr(tasks[i], "group") else f"{name} task {i}"
    if isinstance(err, KilledWorker):
        err = BlockError(f"{what}: the workers running it died repeatedly (out of memory?); use a smaller "
                         "--block or workers with more memory")
    elif not isinstance(err, BigsegError):
        return err  # a bug: keep its traceback
    more = f" ({len(failures)} of {len(tasks)} {name} tasks failed)" if len(failures) > 1 else ""
    return BlockError(f"{err}{more}; the {len(tasks) - len(failures)} finished tasks are kept: fix the cause and "
                      "run the same command again to resume")

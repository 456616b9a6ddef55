"""Job states and the one table of allowed transitions (every status change goes through it)."""
from __future__ import annotations

QUEUED, STARTING, RUNNING = "queued", "starting", "running"
SUCCEEDED, FAILED = "succeeded", "failed"
CANCELING, CANCELED, INTERRUPTED = "canceling", "canceled", "interrupted"

STATES = (QUEUED, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELING, CANCELED, INTERRUPTED)
#: A job in one of these holds its output (one such job per output).
ACTIVE = (QUEUED, STARTING, RUNNING, CANCELING, INTERRUPTED)
#: A runner process exists (or should) for a job in one of these.
RUNNING_STATES = (STARTING, RUNNING, CANCELING)
#: Final unless retried.
TERMINAL = (SUCCEEDED, FAILED, CANCELED)
#: What a retry starts from.
RETRYABLE = (FAILED, CANCELED, INTERRUPTED)

#: new state -> the states it may be reached from.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    QUEUED: (INTERRUPTED, FAILED, CANCELED),          # automatic requeue, or retry
    STARTING: (QUEUED,),                              # the dispatcher spawned a runner
    RUNNING: (STARTING,),                             # the runner took the job
    SUCCEEDED: (RUNNING, CANCELING),                  # a cancel that came after the output was published
    FAILED: (STARTING, RUNNING, CANCELING, INTERRUPTED),
    CANCELING: (STARTING, RUNNING),
    CANCELED: (QUEUED, CANCELING, INTERRUPTED),
    INTERRUPTED: (STARTING, RUNNING),                 # the runner died
}


def allowed_from(new: str) -> tuple[str, ...]:
    """The states a job may be in to move to ``new``."""
    if new not in TRANSITIONS:
        raise ValueError(f"unknown job state {new!r}")
    return TRANSITIONS[new]

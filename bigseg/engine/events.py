"""What a running job reports: typed, frozen events, and the observers that receive them.

The runner and the pipeline emit events; the CLI draws them as bars, a job service persists their
``to_dict()``. An observer is called from the job's own thread, in order.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Event:
    """Base of all events."""

    def to_dict(self) -> dict:
        """A JSON-able dict with a ``"type"`` key (the class name), for a service to persist."""
        return {"type": type(self).__name__, **_plain(dataclasses.asdict(self))}


@dataclass(frozen=True)
class JobStarted(Event):
    image: str
    level: int
    shape: tuple[int, ...]
    blocks: int
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    method: str
    resuming: bool
    dashboard: str | None = None


@dataclass(frozen=True)
class StageStarted(Event):
    """A stage with ``total`` tasks starts; ``resumed`` of them were finished by an earlier run."""

    stage: str
    total: int
    resumed: int = 0


@dataclass(frozen=True)
class StageAdvanced(Event):
    """``done`` of the stage's ``total`` tasks are finished (resumed ones included)."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class StageEnded(Event):
    stage: str
    seconds: float


@dataclass(frozen=True)
class Message(Event):
    """A line for the user."""

    text: str


@dataclass(frozen=True)
class Warning(Event):  # noqa: A001 - the event's name; use it as ``events.Warning``
    """Something the user should know about the result (skipped blocks, 64-bit labels)."""

    text: str


@dataclass(frozen=True)
class JobFinished(Event):
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobFailed(Event):
    error: str


@dataclass(frozen=True)
class JobCancelled(Event):
    pass


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


class Observer:
    """Receives a job's events; silent by default. Subclass and override :meth:`on_event`."""

    def on_event(self, event: Event) -> None:
        """Called for each event, from the job's thread, in order."""


class Fanout(Observer):
    """Passes each event to several observers, in the order given."""

    def __init__(self, *observers: Observer):
        self.observers = [as_observer(o) for o in observers if o is not None]

    def on_event(self, event: Event) -> None:
        for observer in self.observers:
            observer.on_event(event)


class EventLog(Observer):
    """Keeps every event (thread-safe), e.g. for tests or to replay them later."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def on_event(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)


class _Callback(Observer):
    def __init__(self, fn: Callable[[Event], object]):
        self.fn = fn

    def on_event(self, event: Event) -> None:
        self.fn(event)


def as_observer(observer: Observer | Callable[[Event], object] | None) -> Observer:
    """An observer from an observer, a plain function of one event, or None (silent)."""
    if observer is None:
        return Observer()
    if isinstance(observer, Observer):
        return observer
    if callable(observer):
        return _Callback(observer)
    raise TypeError(f"an observer must be an Observer or a function of one event, not {type(observer).__name__}")

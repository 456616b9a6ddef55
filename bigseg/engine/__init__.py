"""The engine a job runs on: stage runner, typed events and observers, cancellation, journal, job handle."""
from bigseg.engine.cancel import Cancellation
from bigseg.engine.events import Event, EventLog, Fanout, Observer, as_observer
from bigseg.engine.handle import JobHandle

__all__ = ["Cancellation", "Event", "EventLog", "Fanout", "JobHandle", "Observer", "as_observer"]

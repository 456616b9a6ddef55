"""A job's progress (per stage: state, done/total, resumed, seconds), projected from its engine events."""
from __future__ import annotations

from bigseg.engine import events as ev

#: The stages a job shows, in order, with the share of the bar each one fills.
STAGES = (("plan", 0.02), ("segment", 0.6), ("stitch", 0.1), ("relabel", 0.1), ("pyramid", 0.06),
          ("measure", 0.1), ("finalize", 0.02))


class Progress:
    """Folds events into ``to_dict()``: ``{"stage", "fraction", "stages": [...]}``."""

    def __init__(self):
        self.stages = {name: {"name": name, "state": "pending", "done": 0, "total": 0, "resumed": 0,
                              "seconds": None} for name, _ in STAGES}
        self._steps: dict[str, tuple[int, int]] = {}  # pyramid-1, pyramid-2 ... -> (done, total)
        self.current: str | None = None

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.JobStarted):
            self._end("plan")
        elif isinstance(event, ev.StageStarted):
            self._begin(event.stage)
            self._step(event.stage, event.resumed, event.total, event.resumed)
        elif isinstance(event, ev.StageAdvanced):
            self._step(event.stage, event.done, event.total)
        elif isinstance(event, ev.StageEnded):
            stage = self.stages[_stage_of(event.stage)]
            stage["seconds"] = round((stage["seconds"] or 0.0) + event.seconds, 3)
            if _stage_of(event.stage) != "pyramid":  # one pyramid step per level: the stage ends with the job
                self._end(event.stage)
        elif isinstance(event, ev.JobFinished):
            for name, _ in STAGES:
                self._end(name)
            self.current = None

    def _begin(self, step: str) -> None:
        name = _stage_of(step)
        for earlier, _ in STAGES:  # stages a job skips (stitch of a class map) or runs locally count as done
            if earlier == name:
                break
            self._end(earlier)
        self.stages[name]["state"] = "running"
        self.current = name

    def _step(self, step: str, done: int, total: int, resumed: int | None = None) -> None:
        stage = self.stages[_stage_of(step)]
        self._steps[step] = (done, total)
        parts = [v for k, v in self._steps.items() if _stage_of(k) == stage["name"]]
        stage["done"], stage["total"] = sum(d for d, _ in parts), sum(t for _, t in parts)
        if resumed is not None:
            stage["resumed"] += resumed

    def _end(self, step: str) -> None:
        stage = self.stages[_stage_of(step)]
        if stage["state"] != "done":
            stage["state"] = "done"
            stage["done"] = max(stage["done"], stage["total"])

    def fraction(self) -> float:
        out = 0.0
        for name, weight in STAGES:
            stage = self.stages[name]
            if stage["state"] == "done":
                out += weight
            elif stage["total"]:
                out += weight * stage["done"] / stage["total"]
        return round(min(out, 1.0), 4)

    def to_dict(self) -> dict:
        return {"stage": self.current, "fraction": self.fraction(), "stages": list(self.stages.values())}


def _stage_of(step: str) -> str:
    """The stage a step belongs to: ``pyramid-2`` -> ``pyramid``."""
    name = step.split("-", 1)[0]
    return name if name in dict(STAGES) else "finalize"

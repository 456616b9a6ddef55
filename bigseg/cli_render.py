"""The command line's view of a job: one observer that draws a bar per stage on stderr and prints the
summary on stdout when the job finishes."""
from __future__ import annotations

import json
import logging
import shutil
import sys

from bigseg.engine import events as ev


class ConsoleObserver(ev.Observer):
    """Bars (tqdm, on stderr, only when it is a terminal unless ``bars`` says), messages and warnings on
    stderr, the summary on stdout (``as_json``: its JSON on the last line)."""

    def __init__(self, as_json: bool = False, bars: bool | None = None, out=None, err=None):
        self.as_json = as_json
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.bars = self.err.isatty() if bars is None else bars
        self.bar = None

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StageAdvanced):
            if self.bar is not None:
                self.bar.update(event.done - self.bar.n)
        elif isinstance(event, ev.StageStarted):
            self._close()
            from tqdm import tqdm
            width = shutil.get_terminal_size((100, 20)).columns or 100  # 0 on some pseudo-terminals
            self.bar = tqdm(total=event.total, desc=f"{event.stage:<9}", unit="task", disable=not self.bars,
                            file=self.err, ncols=min(width, 120))
        elif isinstance(event, ev.JobStarted):
            self._line(f"bigseg: {event.image} level {event.level} {event.shape} in {event.blocks} blocks of "
                       f"{event.block_shape} (halo {event.halo}), method {event.method}"
                       + (" (resuming an unfinished job)" if event.resuming else ""))
            if event.dashboard:
                self._line(f"bigseg: Dask dashboard {event.dashboard}")
        elif isinstance(event, ev.Warning):
            self._line(f"bigseg: warning: {event.text}")
        elif isinstance(event, ev.Message):
            self._line(f"bigseg: {event.text}")
        elif isinstance(event, ev.JobFinished):
            self._close()
            for line in summary_lines(event.summary):
                print(line, file=self.out)
            if self.as_json:
                print(json.dumps(event.summary), file=self.out)
        elif isinstance(event, (ev.StageEnded, ev.JobFailed, ev.JobCancelled)):
            self._close()

    def _line(self, text: str) -> None:
        self._close()
        print(text, file=self.err)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary_lines(s: dict) -> list[str]:
    """The summary of a finished job (``SegmentResult.summary()``), as lines for people."""
    lines = [f"labels   {s['labels']}  ({s['dtype']}, {s['objects']} objects)",
             f"table    {s['table']}",
             f"qc       {s['qc']}  (outlines over the image, middle plane)",
             f"blocks   {s['blocks']} ({s['blocks_empty']} empty{_background(s)}), block {tuple(s['block'])}, "
             f"halo {tuple(s['halo'])}"]
    if s["resumed"]:
        lines.append("resumed  reused the tasks an earlier run had finished: "
                     + ", ".join(f"{step} {n}" for step, n in s["resumed"].items()))
    if s["blocks_skipped"]:
        lines.append(f"skipped  {len(s['blocks_skipped'])} unreadable block(s) left unlabelled (listed in the "
                     "label's bigseg metadata)")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items() if k != "total")
    lines.append(f"time     {s['seconds']['total']:.1f}s ({stages}); {s['voxels_per_second'] / 1e6:.2f} Mvoxel/s")
    return lines


def _background(summary: dict) -> str:
    n = summary.get("blocks_background") or 0
    return f", {n} background, not read" if n else ""


def estimate_lines(s: dict) -> list[str]:
    """A dry run's estimate (``Estimate.summary()``), as lines for people."""
    b, m, t = s["block"], s["memory"], s["seconds"]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total")
    found = f"{b['fragments']} fragments ({b['boundary_fragments']} at its faces)"
    which = "the non-empty block nearest the centre" if b["fragments"] else \
        f"no objects in the {b['tried']} block(s) nearest the centre: the estimate is a lower bound"
    tried = f", after {b['tried'] - 1} empty one(s)" if b["tried"] > 1 and b["fragments"] else ""
    return [f"dry run  {s['image']} {tuple(s['shape'])}: nothing written",
            f"blocks   {s['blocks']} of {tuple(s['block_shape'])}, halo {tuple(s['halo'])}; "
            f"{s['blocks_background']} background (skipped), {s['blocks'] - s['blocks_background']} to segment",
            f"block    {b['id']} {b['core']} ({which}{tried}): {found}, "
            f"{b['seconds'].get('segment', 0):.2f}s",
            f"halo     {s['halo_overhead']:.2f}x voxels read per voxel owned",
            f"memory   ~{_mib(m['peak'])} per worker at its peak ({_mib(m['baseline'])} before a block + "
            f"{_mib(m['block'])} for one)",
            f"time     ~{t['total']:.1f}s on {s['workers']} workers ({stages})"]


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def not_an_event(record: logging.LogRecord) -> bool:
    """Logging filter for the CLI's handler: lines the observer already shows are not printed twice."""
    return not getattr(record, "bigseg_event", False)

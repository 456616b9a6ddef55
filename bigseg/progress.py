"""Progress is observed, not sprinkled through the algorithm: the pipeline reports stages and steps
to a :class:`Progress`; the CLI shows them as bars, the API is silent by default."""
from __future__ import annotations

import shutil
import sys


class Progress:
    """Silent observer; subclass to show progress."""

    def stage(self, name: str, total: int) -> None:
        """A stage with ``total`` steps starts."""

    def advance(self, n: int = 1) -> None:
        """``n`` steps of the current stage are done."""

    def end(self) -> None:
        """The current stage is finished."""

    def message(self, text: str) -> None:
        """A line for the user (e.g. the dashboard link)."""


class BarProgress(Progress):
    """One tqdm bar per stage on stderr; quiet when stderr is not a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def stage(self, name, total):
        from tqdm import tqdm
        self.end()
        width = shutil.get_terminal_size((100, 20)).columns or 100  # 0 on some pseudo-terminals
        self.bar = tqdm(total=total, desc=f"{name:<9}", unit="task", disable=not self.enabled, file=sys.stderr,
                        ncols=min(width, 120))

    def advance(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def end(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def message(self, text):
        print(text, file=sys.stderr)

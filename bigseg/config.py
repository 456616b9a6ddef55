"""The job spec: everything that defines one segmentation job, validated once at the edge."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobSpec:
    """One job. ``params`` are the method's own parameters (e.g. ``sigma``, ``diameter``)."""

    image: str
    method: str = "watershed"
    name: str | None = None
    params: dict = field(default_factory=dict)
    level: int = 0
    channel: int | None = None
    timepoint: int | None = None
    block: tuple[int, ...] | None = None
    halo: int | tuple[int, ...] | None = None
    output: str | None = None
    overwrite: bool = False
    iou_threshold: float = 0.5
    keep_work: bool = False
    skip_bad_blocks: bool = False

    def __post_init__(self):
        object.__setattr__(self, "image", os.fspath(self.image))
        if self.output is not None:
            object.__setattr__(self, "output", os.fspath(self.output))
        if self.name is None:
            object.__setattr__(self, "name", self.method if isinstance(self.method, str) else self.method.name)

"""Comparing two label images object by object (used by the fidelity tests and the benchmark)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bigseg.stitch import overlaps


@dataclass(frozen=True)
class Match:
    n_ref: int
    n_test: int
    true_positives: int
    splits: int
    merges: int

    @property
    def f1(self) -> float:
        return 2 * self.true_positives / max(self.n_ref + self.n_test, 1)


def match(ref: np.ndarray, test: np.ndarray, iou: float = 0.5) -> Match:
    """Objects of ``test`` matched to ``ref`` at IoU > ``iou``. A ref object is *split* if two or more test
    objects each lie mostly (> 50%) inside it; a test object is a *merge* if two or more ref objects each
    lie mostly inside it."""
    r, t, inter, ious = overlaps(ref, test)
    size_r, size_t = np.bincount(ref.ravel()), np.bincount(test.ravel())
    tp = int((ious > iou).sum())
    splits = np.bincount(r[inter > 0.5 * size_t[t]], minlength=size_r.size)
    merges = np.bincount(t[inter > 0.5 * size_r[r]], minlength=size_t.size)
    return Match(int((size_r[1:] > 0).sum()), int((size_t[1:] > 0).sum()), tp, int((splits >= 2).sum()),
                 int((merges >= 2).sum()))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` and ``b`` are the same labelling up to renumbering (background 0 in both)."""
    a, b = a.ravel(), b.ravel()
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))

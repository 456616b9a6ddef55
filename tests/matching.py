"""Comparing two label images object by object (used by the fidelity tests and the benchmark)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    """Objects of ``test`` matched to ``ref`` at IoU > ``iou``; splits = ref objects covered half or more by
    two or more test objects... precisely: a ref object is split if >= 2 test objects each lie mostly
    (> 50%) inside it; a test object is a merge if >= 2 ref objects each lie mostly inside it."""
    ref, test = ref.ravel().astype(np.int64), test.ravel().astype(np.int64)
    size_r, size_t = np.bincount(ref), np.bincount(test)
    both = (ref > 0) & (test > 0)
    width = int(test.max()) + 1
    pairs, inter = np.unique(ref[both] * width + test[both], return_counts=True)
    r, t = pairs // width, pairs % width
    ious = inter / (size_r[r] + size_t[t] - inter)
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

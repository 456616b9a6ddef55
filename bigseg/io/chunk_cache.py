"""Region reads of a Zarr array through its decoded chunks, the most recently used kept for the next reads: a
task that reads many overlapping regions (object crops across block faces) decodes each chunk about once."""
from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np

#: Bytes of decoded chunks kept, by default.
CACHE_BYTES = 2**28


class ChunkCache:
    """``read(region)`` is ``array[region]`` (a tuple of slices with steps of 1, or of ints), assembled from whole
    chunks (a sharded array's inner chunks: what Zarr decodes), up to ``max_bytes`` of them kept, least recently
    used dropped first."""

    def __init__(self, array, max_bytes: int = CACHE_BYTES):
        self.array, self.max_bytes = array, int(max_bytes)
        self.chunks = tuple(int(c) for c in array.chunks)
        self._kept: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self.decoded = 0  # chunks read from the store so far

    def read(self, region: tuple) -> np.ndarray:
        shape = self.array.shape
        squeeze = tuple(d for d, r in enumerate(region) if not isinstance(r, slice))
        bounds = [(r, r + 1) if d in squeeze else (r.start or 0, shape[d] if r.stop is None else r.stop)
                  for d, r in enumerate(region)]
        out = np.empty(tuple(b - a for a, b in bounds), self.array.dtype)
        ranges = [range(a // c, (b - 1) // c + 1) if b > a else range(0) for (a, b), c in zip(bounds, self.chunks)]
        for key in itertools.product(*ranges):
            chunk = self._chunk(key)
            lo = [max(a, k * c) for (a, _), k, c in zip(bounds, key, self.chunks)]
            hi = [min(b, (k + 1) * c) for (_, b), k, c in zip(bounds, key, self.chunks)]
            out[tuple(slice(l - a, h - a) for l, h, (a, _) in zip(lo, hi, bounds))] = \
                chunk[tuple(slice(l - k * c, h - k * c) for l, h, k, c in zip(lo, hi, key, self.chunks))]
        return out.reshape(tuple(n for d, n in enumerate(out.shape) if d not in squeeze))

    def _chunk(self, key: tuple[int, ...]) -> np.ndarray:
        chunk = self._kept.pop(key, None)
        if chunk is None:
            chunk = np.asarray(self.array[tuple(slice(k * c, (k + 1) * c) for k, c in zip(key, self.chunks))])
            self.decoded += 1
            self._bytes += chunk.nbytes
            while self._kept and self._bytes > self.max_bytes:
                self._bytes -= self._kept.popitem(last=False)[1].nbytes
        self._kept[key] = chunk
        return chunk

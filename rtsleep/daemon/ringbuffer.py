"""Preallocated FIFO ring buffer of multichannel samples and their timestamps.

``RingBuffer(capacity, n_chans)`` holds at most ``capacity`` samples of ``n_chans`` channels
(``data (capacity, n_chans)``, ``timestamps (capacity,)``, both allocated once). ``push`` copies a
chunk in (wrapping around, never reallocating); when the buffer is full the oldest samples are
overwritten and counted in ``n_dropped``. ``pop(n)`` removes and returns the oldest samples in
order; ``peek`` returns them without removing. Timestamps are seconds (LSL clock).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class RingBuffer:
    """FIFO of samples ``(n, n_chans)`` plus timestamps ``(n,)`` in a fixed preallocated store."""

    def __init__(self, capacity: int, n_chans: int, dtype: npt.DTypeLike = np.float64) -> None:
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be >= 1, got {capacity}")
        if n_chans < 1:
            raise ValueError(f"ring buffer needs >= 1 channel, got {n_chans}")
        self.capacity = int(capacity)
        self.n_chans = int(n_chans)
        self._data = np.zeros((self.capacity, self.n_chans), dtype=dtype)
        self._ts = np.zeros(self.capacity, dtype=np.float64)
        self._start = 0  # position of the oldest sample
        self._size = 0
        #: Samples pushed since creation.
        self.n_pushed = 0
        #: Samples overwritten before they were popped (buffer overflow).
        self.n_dropped = 0

    def __len__(self) -> int:
        return self._size

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    def push(self, samples: np.ndarray, timestamps: np.ndarray) -> None:
        """Append ``samples (n, n_chans)`` and ``timestamps (n,)``; overwrite the oldest if full."""
        samples = np.asarray(samples)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        if samples.ndim != 2 or samples.shape[1] != self.n_chans:
            raise ValueError(
                f"ring buffer expects samples of shape (n, {self.n_chans}), got {samples.shape}"
            )
        n = samples.shape[0]
        if timestamps.shape != (n,):
            raise ValueError(f"ring buffer expects {n} timestamps, got shape {timestamps.shape}")
        self.n_pushed += n
        if n == 0:
            return
        if n >= self.capacity:
            # only the newest `capacity` samples survive
            self.n_dropped += self._size + n - self.capacity
            samples = samples[n - self.capacity :]
            timestamps = timestamps[n - self.capacity :]
            n = self.capacity
            self._start = 0
            self._size = 0
        overflow = max(0, self._size + n - self.capacity)
        if overflow:
            self.n_dropped += overflow
            self._start = (self._start + overflow) % self.capacity
            self._size -= overflow
        end = (self._start + self._size) % self.capacity
        first = min(n, self.capacity - end)
        self._data[end : end + first] = samples[:first]
        self._ts[end : end + first] = timestamps[:first]
        if first < n:
            self._data[: n - first] = samples[first:]
            self._ts[: n - first] = timestamps[first:]
        self._size += n

    def peek(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the oldest ``n`` samples (all if None): ``(n, n_chans)`` and ``(n,)``."""
        n = self._size if n is None else max(0, min(int(n), self._size))
        first = min(n, self.capacity - self._start)  # samples before the wrap
        if first == n:
            s = slice(self._start, self._start + n)
            return self._data[s].copy(), self._ts[s].copy()
        data = np.concatenate((self._data[self._start :], self._data[: n - first]))
        ts = np.concatenate((self._ts[self._start :], self._ts[: n - first]))
        return data, ts

    def pop(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Remove and return the oldest ``n`` samples (all if None), oldest first."""
        data, ts = self.peek(n)
        k = ts.shape[0]
        self._start = (self._start + k) % self.capacity
        self._size -= k
        return data, ts

    def clear(self) -> None:
        """Drop every buffered sample (counters are kept)."""
        self._start = 0
        self._size = 0

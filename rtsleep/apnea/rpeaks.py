"""R-peak detection on raw ECG, offline and causally on chunks with identical results.

The detector is sleepecg's ``detect_heartbeats`` (a Pan-Tompkins variant with a C backend; see
docs/apnea.md for the choice). It filters forward and backward and adapts its thresholds, so it is
not causal by itself. Here the signal is cut into fixed blocks of ``block_s`` seconds aligned to
the first sample; block ``k`` is detected on ``[k B - history_s, (k + 1) B + lookahead_s)`` and
only its own beats ``[k B, (k + 1) B)`` are kept. A beat closer than ``refractory_s`` to the beat
before it (the same R wave seen from two blocks) is dropped. Because blocks are aligned to sample
indices, the streaming detector and the offline function run sleepecg on identical arrays and
return identical beats under any chunking; a beat is emitted ``block_s + lookahead_s`` seconds
after it at the latest.

ECG below 100 Hz is upsampled (polyphase) to at least 100 Hz inside each window, because
sleepecg's 5-30 Hz band-pass needs it. Times are seconds from the first sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from rtsleep.data.errors import DataError


@dataclass(frozen=True)
class RPeakConfig:
    """Block decomposition of the detector (seconds)."""

    block_s: float = 10.0
    history_s: float = 10.0
    lookahead_s: float = 2.0
    refractory_s: float = 0.25
    min_fs: float = 100.0


def _detect_window(x: np.ndarray, fs: float, min_fs: float) -> np.ndarray:
    """sleepecg on one window -> beat positions in (fractional) input samples ``(k,)``."""
    import sleepecg

    if x.size < int(2 * fs):
        return np.zeros(0)
    moving = np.flatnonzero(x != x[0])
    if moving.size == 0 or x.size - moving[0] < int(2 * fs):
        return np.zeros(0)  # flat (lead off, a held gap): no beats; sleepecg raises on it
    if fs >= min_fs:
        return sleepecg.detect_heartbeats(x, fs).astype(np.float64)
    ratio = Fraction(math.ceil(min_fs / fs * 1000), 1000).limit_denominator(20)
    up, down = ratio.numerator, ratio.denominator
    xr = resample_poly(x, up, down)  # (n*up/down,)
    idx = sleepecg.detect_heartbeats(xr, fs * up / down).astype(np.float64)
    return idx * down / up


class StreamingRPeakDetector:
    """Push raw ECG chunks, get beat times (s) once their block is final."""

    def __init__(self, fs: float, config: RPeakConfig | None = None, source: str = "ECG") -> None:
        if not fs > 0:
            raise DataError(source, f"ECG sampling rate must be positive, got {fs}")
        self.fs = float(fs)
        self.cfg = config or RPeakConfig()
        self.source = source
        self.block = int(round(self.cfg.block_s * fs))
        self.hist = int(round(self.cfg.history_s * fs))
        self.ahead = int(round(self.cfg.lookahead_s * fs))
        self._buf = np.zeros(0)
        self._buf_start = 0  # absolute index of _buf[0]
        self._n = 0  # samples received
        self._next_block = 0
        self._last_beat = -np.inf

    @property
    def n_samples(self) -> int:
        """Samples received so far."""
        return self._n

    @property
    def complete_until_s(self) -> float:
        """Every beat before this time (s) has been emitted."""
        return self._next_block * self.block / self.fs

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Raw ECG ``(n,)`` -> beat times (s) of the blocks completed by this chunk."""
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 1:
            raise DataError(self.source, f"ECG chunk must be 1-D, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise DataError(self.source, "ECG chunk contains NaN or infinite samples")
        self._buf = np.concatenate([self._buf, x])
        self._n += x.size
        out = []
        while (self._next_block + 1) * self.block + self.ahead <= self._n:
            out.append(
                self._run_block(self._next_block, (self._next_block + 1) * self.block + self.ahead)
            )
            self._next_block += 1
        return np.concatenate(out) if out else np.zeros(0)

    def flush(self) -> np.ndarray:
        """End of the signal: detect the remaining (partial) blocks with what is there."""
        out = []
        while self._next_block * self.block < self._n:
            out.append(self._run_block(self._next_block, self._n))
            self._next_block += 1
        return np.concatenate(out) if out else np.zeros(0)

    def _run_block(self, k: int, stop: int) -> np.ndarray:
        b0, b1 = k * self.block, (k + 1) * self.block
        start = max(0, b0 - self.hist)
        x = self._buf[start - self._buf_start : stop - self._buf_start]
        pos = _detect_window(x, self.fs, self.cfg.min_fs) + start  # absolute samples
        pos = pos[(pos >= b0) & (pos < b1)]
        kept = []
        for p in np.sort(pos):
            t = p / self.fs
            if t - self._last_beat >= self.cfg.refractory_s:
                kept.append(t)
                self._last_beat = t
        # Keep only the history the next block needs.
        keep_from = max(0, (k + 1) * self.block - self.hist)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :]
            self._buf_start = keep_from
        return np.asarray(kept, dtype=np.float64)


def detect_rpeaks(ecg: np.ndarray, fs: float, config: RPeakConfig | None = None) -> np.ndarray:
    """Beat times (s) of a whole ECG ``(n,)``; identical to streaming it in any chunks."""
    det = StreamingRPeakDetector(fs, config)
    return np.concatenate([det.push(ecg), det.flush()])

"""Beat series -> cleaned heart-rate series (artefact rejection, resampling).

Every step is causal: a beat is judged from itself and the beats before it, so the daemon and the
offline tools clean a night identically. Times are in seconds, heart rate in beats per second
(``hr_bps``; x60 for bpm), as in :class:`rtsleep.data.recording.BeatSeries`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rtsleep.data.errors import DataError


@dataclass(frozen=True)
class HrCleanConfig:
    """Artefact rejection of a beat-to-beat heart-rate series.

    ``min_bps`` / ``max_bps``: physiological range (0.5-3.33 /s = 30-200 bpm; 99.8 % of the
    Apnea-ECG beats lie in 0.54-3.33 /s). ``max_rel_dev``: a beat whose rate differs from the
    median of the ``median_beats`` in-range beats before it by more than this fraction is an
    artefact (missed or extra R peak).
    """

    min_bps: float = 0.5
    max_bps: float = 3.33
    max_rel_dev: float = 0.3
    median_beats: int = 7


def rr_to_hr(beat_times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Beat times ``(n,)`` s -> ``(times_s (n-1,), hr_bps (n-1,))``, stamped at the later beat."""
    t = np.asarray(beat_times_s, dtype=np.float64)
    if t.ndim != 1:
        raise TypeError(f"beat times must be 1-D, got shape {t.shape}")
    if t.size < 2:
        return np.zeros(0), np.zeros(0)
    rr = np.diff(t)  # (n-1,)
    if np.any(rr <= 0):
        raise DataError("beats", "beat times are not strictly increasing")
    return t[1:], 1.0 / rr


def valid_beats(hr_bps: np.ndarray, config: HrCleanConfig | None = None) -> np.ndarray:
    """Boolean mask ``(n,)``: True where a beat passes the range and the causal median test.

    The median reference of beat ``i`` is taken over the (up to) ``median_beats`` in-range beats
    strictly before it, so appending beats never changes the verdict on earlier ones.
    """
    cfg = config or HrCleanConfig()
    hr = np.asarray(hr_bps, dtype=np.float64)
    finite = np.isfinite(hr)
    in_range = finite & (hr >= cfg.min_bps) & (hr <= cfg.max_bps)
    ok = in_range.copy()
    idx = np.flatnonzero(in_range)  # (m,) positions of in-range beats
    k = cfg.median_beats
    if idx.size > k:
        vals = hr[idx]  # (m,)
        ref = np.median(sliding_window_view(vals[:-1], k), axis=1)  # (m-k,) median of k previous
        dev = np.abs(vals[k:] - ref) / ref
        ok[idx[k:]] = dev <= cfg.max_rel_dev
    # The first k in-range beats have no full reference: judge them against the median of
    # what precedes them (at least 3 beats), accept otherwise.
    for j in range(min(k, idx.size)):
        if j >= 3:
            ref0 = float(np.median(hr[idx[:j]]))
            ok[idx[j]] = abs(hr[idx[j]] - ref0) / ref0 <= cfg.max_rel_dev
    return ok


def resample_hr(
    times_s: np.ndarray, hr_bps: np.ndarray, t0_s: float, t1_s: float, fs: float
) -> np.ndarray:
    """Linear interpolation of the (cleaned) rate onto ``[t0_s, t1_s)`` at ``fs`` Hz.

    Returns ``(round((t1_s - t0_s) * fs),)`` in beats/s; NaN everywhere when fewer than 2 beats.
    Outside the beats' span the nearest value is held.
    """
    n = int(round((t1_s - t0_s) * fs))
    grid = t0_s + np.arange(n) / fs  # (n,)
    if times_s.size < 2:
        return np.full(n, np.nan)
    return np.interp(grid, times_s, hr_bps)


class BeatCleaner:
    """Streaming form of :func:`valid_beats`: same verdicts, beat by beat, bounded memory."""

    def __init__(self, config: HrCleanConfig | None = None) -> None:
        self.cfg = config or HrCleanConfig()
        self._prev: list[float] = []  # last in-range rates (at most median_beats)
        self._n_in_range = 0

    def push(self, hr_bps: np.ndarray) -> np.ndarray:
        """Rates ``(n,)`` in beats/s -> validity ``(n,)`` bool."""
        cfg = self.cfg
        hr = np.asarray(hr_bps, dtype=np.float64)
        ok = np.zeros(hr.size, dtype=bool)
        for i, v in enumerate(hr):
            if not (np.isfinite(v) and cfg.min_bps <= v <= cfg.max_bps):
                continue
            j = self._n_in_range
            if j < 3:
                ok[i] = True
            else:
                ref = float(np.median(self._prev))
                ok[i] = abs(v - ref) / ref <= cfg.max_rel_dev
            self._prev.append(float(v))
            if len(self._prev) > cfg.median_beats:
                self._prev.pop(0)
            self._n_in_range += 1
        return ok

"""Heart-rate features of one window and of a sequence of windows (per minute or per epoch).

A window is identified by its end time ``t_end_s``; its short part is the ``SHORT_S`` seconds
before the end and its long part the ``LONG_S`` seconds before the end, so every feature is causal
(nothing after ``t_end_s`` is read). The same functions compute the per-minute features for
training and the per-epoch features in the daemon (windows ending at each epoch's end).

Rates are in bpm inside the features, times in s, powers in bpm^2 (log-scaled).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from scipy.signal import detrend

SHORT_S = 60.0
"""Length of the short window (one scored minute), s."""
LONG_S = 300.0
"""Length of the long window for very-low-frequency (cyclic variation) features, s."""
TRACE_FS = 2.0
"""Rate of the interpolated heart-rate trace used for spectra, Hz."""
N_SHAPE = 12
"""Number of 5-s mean-rate values describing the shape of the short window."""
CONTEXT_WINDOWS = 60
"""Running-median length (windows) of the per-night baseline used by the context features."""
TRACE_S = 300.0
"""Length of the heart-rate trace read by the trace CNN, s."""
TRACE_HZ = 1.0
"""Rate of that trace, Hz (means of the 2-Hz interpolated trace over 1-s bins)."""
TRACE_LEN = int(TRACE_S * TRACE_HZ)
"""Samples per trace."""
TRACE_UNIT_BPM = 10.0
"""bpm per unit of the trace (values are clipped to +-5 units)."""
NONCAUSAL_TRACE_SHIFT_S = TRACE_S / 2 - SHORT_S / 2
"""The non-causal trace ends this many seconds after the window end, so it is centred on the
scored minute (150 s either side of its centre)."""
_MIN_TRACE_BEATS = 30

BASE_NAMES: tuple[str, ...] = (
    "hr_mean_bpm",
    "hr_sd_bpm",
    "rr_mean_ms",
    "sdnn_ms",
    "rmssd_ms",
    "pnn50",
    "hr_range_bpm",
    "valid_frac",
    "n_valid",
    "log_lf",
    "log_hf",
    "log_lf_hf",
    "log_vlf_long",
    "log_lf_long",
    "log_hf_long",
    "vlf_rel_long",
    "hr_range_long_bpm",
    "hr_sd_long_bpm",
) + tuple(f"shape_{i}" for i in range(N_SHAPE))

#: Base features that also enter as a difference from the running per-night median: all but the
#: shape values (a causal per-subject normalisation; it lifted causal CV accuracy from 0.803 to
#: 0.824 over the 5 features used before).
CONTEXT_OF: tuple[str, ...] = BASE_NAMES[: len(BASE_NAMES) - N_SHAPE]
FEATURE_NAMES: tuple[str, ...] = BASE_NAMES + tuple(f"d_{n}" for n in CONTEXT_OF)
N_BASE = len(BASE_NAMES)
N_FEATURES = len(FEATURE_NAMES)
_CONTEXT_IDX = np.array([BASE_NAMES.index(n) for n in CONTEXT_OF])

_MIN_BEATS = 10


def _band_log_power(trace: np.ndarray, fs: float, bands: list[tuple[float, float]]) -> list[float]:
    """Log of the periodogram power (bpm^2) of a detrended, Hann-windowed trace in each band."""
    x = detrend(trace) * np.hanning(trace.size)
    spec = np.abs(np.fft.rfft(x)) ** 2 / (trace.size * fs)  # (n//2+1,) bpm^2/Hz
    freqs = np.fft.rfftfreq(trace.size, d=1.0 / fs)
    df = freqs[1] - freqs[0]
    out = []
    for lo, hi in bands:
        sel = (freqs >= lo) & (freqs < hi)
        out.append(float(spec[sel].sum() * df))
    return out


def _valid_bpm(
    times_s: np.ndarray, hr_bps: np.ndarray, valid: np.ndarray, lo: int | np.integer[Any],
    hi: int | np.integer[Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) and rates (bpm) of the valid beats among beats ``lo:hi``: ``((k,), (k,))``."""
    ok = valid[lo:hi]
    return times_s[lo:hi][ok], hr_bps[lo:hi][ok] * 60.0


def window_features(
    times_s: np.ndarray, hr_bps: np.ndarray, valid: np.ndarray, t_end_s: float
) -> np.ndarray:
    """Base features ``(N_BASE,)`` of the window ending at ``t_end_s`` (NaN where undefined).

    ``times_s``, ``hr_bps``, ``valid``: the night's beats so far, ``(n,)`` each, times sorted;
    ``valid`` from :func:`rtsleep.apnea.hr.valid_beats`.
    """
    f = np.full(N_BASE, np.nan)
    lo_l = np.searchsorted(times_s, t_end_s - LONG_S, side="left")
    lo_s = np.searchsorted(times_s, t_end_s - SHORT_S, side="left")
    hi = np.searchsorted(times_s, t_end_s, side="left")
    n_raw = hi - lo_s
    ts, hs = _valid_bpm(times_s, hr_bps, valid, lo_s, hi)  # (k,) s, bpm
    f[7] = valid[lo_s:hi].mean() if n_raw else 0.0
    f[8] = float(ts.size)
    if ts.size >= _MIN_BEATS:
        rr_ms = 60000.0 / hs  # (k,)
        f[0], f[1] = hs.mean(), hs.std()
        f[2], f[3] = rr_ms.mean(), rr_ms.std()
        d = np.diff(rr_ms)
        f[4] = np.sqrt(np.mean(d**2))
        f[5] = np.mean(np.abs(d) > 50.0)
        f[6] = np.percentile(hs, 95) - np.percentile(hs, 5)
        grid = t_end_s - SHORT_S + np.arange(int(SHORT_S * TRACE_FS)) / TRACE_FS  # (120,)
        trace = np.interp(grid, ts, hs)
        lf, hf = _band_log_power(trace, TRACE_FS, [(0.04, 0.15), (0.15, 0.4)])
        f[9], f[10] = np.log(lf + 1e-3), np.log(hf + 1e-3)
        f[11] = f[9] - f[10]
        shape = trace.reshape(N_SHAPE, -1).mean(axis=1)  # (12, 10) -> (12,)
        f[N_BASE - N_SHAPE :] = shape - hs.mean()
    tl, hl = _valid_bpm(times_s, hr_bps, valid, lo_l, hi)
    if tl.size >= 3 * _MIN_BEATS:
        grid = t_end_s - LONG_S + np.arange(int(LONG_S * TRACE_FS)) / TRACE_FS  # (600,)
        trace = np.interp(grid, tl, hl)
        vlf, lf, hf = _band_log_power(trace, TRACE_FS, [(0.01, 0.04), (0.04, 0.15), (0.15, 0.4)])
        f[12], f[13], f[14] = np.log(vlf + 1e-3), np.log(lf + 1e-3), np.log(hf + 1e-3)
        f[15] = vlf / (vlf + lf + hf + 1e-9)
        f[16] = np.percentile(hl, 95) - np.percentile(hl, 5)
        f[17] = hl.std()
    return f


class ContextTracker:
    """Appends, per window, the difference of a few features from their running night median.

    The median runs over the last ``CONTEXT_WINDOWS`` windows including the current one
    (causal); NaN values are skipped. One tracker per window sequence (per bed and phase).
    """

    def __init__(self) -> None:
        self._hist: deque[np.ndarray] = deque(maxlen=CONTEXT_WINDOWS)

    def __call__(self, base: np.ndarray) -> np.ndarray:
        """``(N_BASE,)`` -> ``(N_FEATURES,)``."""
        sel = base[_CONTEXT_IDX]  # (C,)
        self._hist.append(sel)
        hist = np.stack(self._hist)  # (h, C)
        with np.errstate(all="ignore"):
            good = np.isfinite(hist)
            med = np.array(
                [
                    np.median(hist[good[:, j], j]) if good[:, j].any() else np.nan
                    for j in range(sel.size)
                ]
            )
        return np.concatenate([base, sel - med])


def window_trace(
    times_s: np.ndarray, hr_bps: np.ndarray, valid: np.ndarray, t_end_s: float
) -> np.ndarray:
    """Heart-rate trace ``(TRACE_LEN,)`` of the ``TRACE_S`` seconds before ``t_end_s``.

    Valid beats are interpolated at ``TRACE_FS``, averaged to ``TRACE_HZ``, the trace's median is
    removed (no absolute rate: the CNN sees the shape) and the result is in units of
    ``TRACE_UNIT_BPM`` bpm, clipped to +-5. Fewer than 30 valid beats in the span give zeros
    (a flat trace: nothing to see). Causal: nothing after ``t_end_s`` is read.
    """
    lo = np.searchsorted(times_s, t_end_s - TRACE_S, side="left")
    hi = np.searchsorted(times_s, t_end_s, side="left")
    ts, hs = _valid_bpm(times_s, hr_bps, valid, lo, hi)  # (k,) s, bpm
    if ts.size < _MIN_TRACE_BEATS:
        return np.zeros(TRACE_LEN)
    grid = t_end_s - TRACE_S + np.arange(int(TRACE_S * TRACE_FS)) / TRACE_FS  # (600,)
    per_bin = int(TRACE_FS / TRACE_HZ)
    trace = np.interp(grid, ts, hs).reshape(TRACE_LEN, per_bin).mean(axis=1)  # (600,) -> (300,)
    return np.clip((trace - np.median(trace)) / TRACE_UNIT_BPM, -5.0, 5.0)


def sequence_traces(
    times_s: np.ndarray,
    hr_bps: np.ndarray,
    valid: np.ndarray,
    ends_s: np.ndarray,
    shift_s: float = 0.0,
) -> np.ndarray:
    """Traces of windows ending at ``ends_s + shift_s`` ``(T,)`` -> ``(T, TRACE_LEN)``.

    ``shift_s`` 0 is the causal trace; ``NONCAUSAL_TRACE_SHIFT_S`` centres it on the window.
    """
    out = np.empty((len(ends_s), TRACE_LEN))
    for i, t_end in enumerate(ends_s):
        out[i] = window_trace(times_s, hr_bps, valid, float(t_end) + shift_s)
    return out


def sequence_features(
    times_s: np.ndarray, hr_bps: np.ndarray, valid: np.ndarray, ends_s: np.ndarray
) -> np.ndarray:
    """Features of consecutive windows ending at ``ends_s`` ``(T,)`` -> ``(T, N_FEATURES)``."""
    ctx = ContextTracker()
    out = np.empty((len(ends_s), N_FEATURES))
    for i, t_end in enumerate(ends_s):
        out[i] = ctx(window_features(times_s, hr_bps, valid, float(t_end)))
    return out

"""Signal quality of one 30-s epoch, per channel, and the rule for an ``unscorable`` epoch.

Input per channel: the epoch's raw samples at the source rate (µV for ExG), with ``NaN`` where the
source sent NaN, and a boolean ``received`` mask (False where no sample arrived: a timestamp gap,
Δt > 1.5/fs, or a stream that vanished). Each sample is then one of:

- **missing**: not received (a gap);
- **NaN**: received but not finite;
- **flat**: part of a run of identical values lasting ``flat_s`` or more (ExG only: a flat
  airflow is an apnea, and SpO2 is often constant);
- **clipped**: at or beyond the channel's physical range, or part of a run of ``clip_run`` or
  more identical samples at the epoch's extreme value (ExG and RESP);
- **clean**: none of the above.

A channel is usable when its clean fraction is at least ``min_clean_fraction`` and, for ExG, its
rate is at least ``MIN_EXG_SFREQ`` (50 Hz; slower ExG cannot be model input). The epoch is
``unscorable`` when a modality in ``required_modalities`` (default: EEG) has no usable channel; the
reason names the modality and what was wrong with each of its channels. Modalities the model can
do without (EOG, EMG, ECG) are simply masked by the scorer when they are not usable
(:meth:`EpochQuality.usable_modalities`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rtsleep.data.channels import MIN_EXG_SFREQ, too_slow_for_model
from rtsleep.data.recording import Modality

_FLAT_MODALITIES = frozenset({Modality.EEG, Modality.EOG, Modality.EMG, Modality.ECG})
_CLIP_MODALITIES = frozenset(_FLAT_MODALITIES | {Modality.RESP})


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality checks (durations in s, fractions in [0, 1])."""

    #: A timestamp step larger than ``gap_factor / fs`` is a gap (its samples are missing).
    gap_factor: float = 1.5
    #: A run of identical samples at least this long is a flat line.
    flat_s: float = 2.0
    #: Identical samples at the epoch's extreme, this many in a row or more, are clipping.
    clip_run: int = 3
    #: A channel with a smaller clean fraction is not usable.
    min_clean_fraction: float = 0.5
    #: Modalities that need at least one usable channel for the epoch to be scorable.
    required_modalities: tuple[Modality, ...] = (Modality.EEG,)

    def __post_init__(self) -> None:
        if self.gap_factor <= 1.0:
            raise ValueError(f"gap_factor must be > 1, got {self.gap_factor}")
        if self.flat_s <= 0:
            raise ValueError(f"flat_s must be > 0, got {self.flat_s}")
        if self.clip_run < 2:
            raise ValueError(f"clip_run must be >= 2, got {self.clip_run}")
        if not 0.0 <= self.min_clean_fraction <= 1.0:
            raise ValueError(f"min_clean_fraction must be in [0, 1], got {self.min_clean_fraction}")


@dataclass(frozen=True)
class ChannelQuality:
    """Quality of one channel over one epoch (counts are samples at the source rate)."""

    label: str
    modality: Modality
    n_times: int
    #: Samples never received (timestamp gaps, vanished stream).
    n_missing: int
    #: Number of separate gaps (runs of missing samples).
    n_gaps: int
    n_nan: int
    n_flat: int
    n_clipped: int
    clean_fraction: float
    usable: bool
    #: Short human-readable findings, e.g. ``("gap 2.40 s", "clipped 12%")``; empty when clean.
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (no NaN)."""
        return {
            "label": self.label,
            "modality": str(self.modality),
            "clean": round(float(self.clean_fraction), 4),
            "usable": self.usable,
            "missing": self.n_missing,
            "gaps": self.n_gaps,
            "nan": self.n_nan,
            "flat": self.n_flat,
            "clipped": self.n_clipped,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class EpochQuality:
    """Quality of one epoch of a bed: per channel, plus the unscorable verdict and its reason."""

    channels: tuple[ChannelQuality, ...]
    unscorable: bool
    #: Why the epoch is unscorable ("" when scorable).
    reason: str = ""
    #: Streams of the bed that delivered nothing for this epoch (their channels are all missing).
    missing_streams: tuple[str, ...] = field(default_factory=tuple)

    def usable_modalities(self) -> frozenset[Modality]:
        """Modalities with at least one usable channel."""
        return frozenset(c.modality for c in self.channels if c.usable)

    def channel(self, label: str) -> ChannelQuality:
        """The quality of channel ``label``."""
        for c in self.channels:
            if c.label == label:
                return c
        have = [c.label for c in self.channels]
        raise KeyError(f"no channel {label!r} in this epoch (have {have})")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (no NaN)."""
        return {
            "unscorable": self.unscorable,
            "reason": self.reason,
            "missing_streams": list(self.missing_streams),
            "channels": [c.to_dict() for c in self.channels],
        }


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the runs of True in a 1-D bool array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)  # (n + 2,)
    edges = np.diff(padded)  # (n + 1,)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts, ends - starts


def _mark_runs(n: int, starts: np.ndarray, lengths: np.ndarray, min_len: int) -> np.ndarray:
    """Bool mask ``(n,)`` covering every run at least ``min_len`` long."""
    out = np.zeros(n, dtype=bool)
    for s, ln in zip(starts, lengths, strict=True):
        if ln >= min_len:
            out[s : s + ln] = True
    return out


def _same_runs(x: np.ndarray, ok: np.ndarray, min_len: int) -> np.ndarray:
    """Mask of samples in runs of >= ``min_len`` consecutive identical ``ok`` samples."""
    n = x.shape[0]
    if n < 2 or min_len > n:
        return np.zeros(n, dtype=bool)
    same = (x[1:] == x[:-1]) & ok[1:] & ok[:-1]  # (n - 1,): sample i+1 repeats sample i
    starts, lengths = _runs(same)
    # a run of k equal steps covers k + 1 samples
    return _mark_runs(n, starts, lengths + 1, min_len) if starts.size else np.zeros(n, bool)


def channel_quality(
    label: str,
    modality: Modality,
    sfreq: float,
    data: np.ndarray,
    received: np.ndarray,
    *,
    physical_range: tuple[float, float] | None = None,
    config: QualityConfig | None = None,
) -> ChannelQuality:
    """Quality of one channel over one epoch.

    ``data (n_times,)`` float at the source rate ``sfreq`` (Hz), NaN allowed; ``received
    (n_times,)`` bool, False where no sample arrived. ``physical_range`` (min, max) in the unit of
    ``data`` enables clipping at the range.
    """
    cfg = config or QualityConfig()
    data = np.asarray(data, dtype=np.float64)
    received = np.asarray(received, dtype=bool)
    if data.ndim != 1 or received.shape != data.shape:
        raise ValueError(
            f"{label}: data and received must be 1-D of one length, got {data.shape}, "
            f"{received.shape}"
        )
    if sfreq <= 0:
        raise ValueError(f"{label}: sfreq must be > 0, got {sfreq}")
    n = data.shape[0]
    missing = ~received
    finite = np.isfinite(data)
    nan = received & ~finite
    ok = received & finite
    flat = np.zeros(n, dtype=bool)
    if modality in _FLAT_MODALITIES:
        flat = _same_runs(data, ok, max(2, int(round(cfg.flat_s * sfreq))))
    clipped = np.zeros(n, dtype=bool)
    if modality in _CLIP_MODALITIES and ok.any():
        if physical_range is not None:
            lo, hi = physical_range
            with np.errstate(invalid="ignore"):
                clipped |= ok & ((data >= hi) | (data <= lo))
        vals = data[ok]
        top, bottom = float(vals.max()), float(vals.min())
        if top > bottom:
            for extreme in (top, bottom):
                at = ok & (data == extreme)
                starts, lengths = _runs(at)
                clipped |= _mark_runs(n, starts, lengths, cfg.clip_run)
        clipped &= ~flat
    clean = ok & ~flat & ~clipped
    clean_fraction = float(clean.mean()) if n else 0.0
    gap_starts, _ = _runs(missing)
    reasons: list[str] = []
    n_missing = int(missing.sum())
    if n_missing:
        reasons.append(f"gap {n_missing / sfreq:.2f} s")
    if nan.any():
        reasons.append(f"NaN {int(nan.sum()) / sfreq:.2f} s")
    if flat.any():
        reasons.append(f"flat {int(flat.sum()) / sfreq:.2f} s")
    if clipped.any():
        reasons.append(f"clipped {100.0 * clipped.mean():.0f}%")
    too_slow = too_slow_for_model(modality, sfreq)
    if too_slow:
        reasons.append(f"{sfreq:g} Hz, below the {MIN_EXG_SFREQ:g}-Hz ExG minimum")
    return ChannelQuality(
        label=label,
        modality=modality,
        n_times=n,
        n_missing=n_missing,
        n_gaps=int(gap_starts.size),
        n_nan=int(nan.sum()),
        n_flat=int(flat.sum()),
        n_clipped=int(clipped.sum()),
        clean_fraction=clean_fraction,
        usable=clean_fraction >= cfg.min_clean_fraction and n > 0 and not too_slow,
        reasons=tuple(reasons),
    )


def epoch_quality(
    channels: Sequence[ChannelQuality],
    *,
    missing_streams: Sequence[str] = (),
    config: QualityConfig | None = None,
) -> EpochQuality:
    """Combine channel qualities into the epoch verdict (``unscorable`` + reason)."""
    cfg = config or QualityConfig()
    problems: list[str] = []
    for modality in cfg.required_modalities:
        chans = [c for c in channels if c.modality == modality]
        if any(c.usable for c in chans):
            continue
        if not chans:
            problems.append(f"no {modality} channel")
            continue
        detail = ", ".join(
            f"{c.label} {100.0 * c.clean_fraction:.0f}% clean"
            + (f" ({'; '.join(c.reasons)})" if c.reasons else "")
            for c in chans
        )
        problems.append(
            f"{modality}: no channel with >= {100.0 * cfg.min_clean_fraction:.0f}% clean signal"
            f" [{detail}]"
        )
    if missing_streams and problems:
        problems.append(f"no data from stream(s) {', '.join(missing_streams)}")
    return EpochQuality(
        channels=tuple(channels),
        unscorable=bool(problems),
        reason="; ".join(problems),
        missing_streams=tuple(missing_streams),
    )

"""Apnea-hypopnea index (events per hour of sleep) and its AASM severity class."""

from __future__ import annotations

import numpy as np

from rtsleep.data.recording import EPOCH_S, Stage

SEVERITY_BOUNDS: tuple[float, ...] = (5.0, 15.0, 30.0)
"""AHI class edges, events/h: < 5 normal, 5-15 mild, 15-30 moderate, >= 30 severe."""
SEVERITY_NAMES: tuple[str, ...] = ("normal", "mild", "moderate", "severe")
SLEEP_STAGES = frozenset({Stage.N1, Stage.N2, Stage.N3, Stage.REM})


def severity_index(ahi: float) -> int:
    """0-3 for normal, mild, moderate, severe (edges belong to the upper class)."""
    if not np.isfinite(ahi) or ahi < 0:
        raise ValueError(f"AHI must be a non-negative number, got {ahi}")
    return int(np.searchsorted(SEVERITY_BOUNDS, ahi, side="right"))


def severity_class(ahi: float) -> str:
    """``normal`` / ``mild`` / ``moderate`` / ``severe``."""
    return SEVERITY_NAMES[severity_index(ahi)]


def ahi_from_minutes(minute_labels: np.ndarray) -> float:
    """AHI proxy of per-minute labels (Apnea-ECG): apnea minutes per hour of labelled minutes."""
    y = np.asarray(minute_labels, dtype=bool)
    if y.size == 0:
        raise ValueError("no minutes")
    return float(60.0 * y.sum() / y.size)


class RunningAhi:
    """Counts events and sleep time as a night goes on (one per bed).

    ``min_sleep_s``: the AHI stays undefined until this much sleep has been counted, so one
    event in the first epoch of sleep does not read as 120 events/h ("severe").
    """

    def __init__(self, min_sleep_s: float = 0.0) -> None:
        if not 0 <= min_sleep_s < float("inf"):
            raise ValueError(f"min_sleep_s must be >= 0 s, got {min_sleep_s}")
        self.min_sleep_s = float(min_sleep_s)
        self.n_events = 0
        self.sleep_s = 0.0
        self.n_epochs = 0

    def add_epoch(self, stage: int) -> None:
        """One scored 30-s epoch; sleep stages add to the denominator."""
        self.n_epochs += 1
        if stage in SLEEP_STAGES:
            self.sleep_s += EPOCH_S

    def add_event(self) -> None:
        """One confirmed event during sleep."""
        self.n_events += 1

    @property
    def ahi(self) -> float | None:
        """Events per hour of sleep; None before any sleep or before ``min_sleep_s``."""
        if self.sleep_s <= 0 or self.sleep_s < self.min_sleep_s:
            return None
        return self.n_events / (self.sleep_s / 3600.0)

    def summary(self) -> dict[str, object]:
        """``{ahi, severity, n_events, sleep_h}`` for a status message (None while undefined)."""
        ahi = self.ahi
        return {
            "ahi": None if ahi is None else round(ahi, 2),
            "severity": None if ahi is None else severity_class(ahi),
            "n_events": self.n_events,
            "sleep_h": round(self.sleep_s / 3600.0, 4),
        }

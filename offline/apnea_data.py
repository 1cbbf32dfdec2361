"""Apnea-ECG nights -> beats, per-minute labels and per-minute HR features.

Two layouts are read:

* the npz layout (``<rec>.npz`` with ``t`` in minutes, ``hr`` in beats/s, ``apn`` per minute;
  ``../shared/data/apnea-ecg-hr``). Its HR minute ``m`` starts 30 s before the officially labelled
  minute, so the label of minute ``m`` is scored on the window ending at ``(m + 1.5) * 60`` s;
* the PhysioNet WFDB layout (``<rec>.hea`` + ``<rec>.qrs`` beat annotations + ``<rec>.apn``
  minute annotations ``A``/``N``), where label ``k`` covers ``[60 k, 60 k + 60)`` s.

Records without labels (no ``apn`` / ``.apn``) are skipped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtsleep.apnea.features import sequence_features
from rtsleep.apnea.hr import rr_to_hr, valid_beats
from rtsleep.data.errors import DataError

log = logging.getLogger(__name__)

NPZ_LABEL_OFFSET_S = 30.0
"""npz layout: the labelled minute starts this many seconds after the HR minute."""


@dataclass
class ApneaNight:
    """One night: beats, per-minute labels and the end time of each label's window (s)."""

    id: str
    times_s: np.ndarray  # (n_beats,)
    hr_bps: np.ndarray  # (n_beats,)
    labels: np.ndarray  # (n_minutes,) bool
    window_ends_s: np.ndarray  # (n_minutes,)

    def features(self) -> np.ndarray:
        """Per-minute features ``(n_minutes, N_FEATURES)``."""
        valid = valid_beats(self.hr_bps)
        return sequence_features(self.times_s, self.hr_bps, valid, self.window_ends_s)


def read_npz_night(path: Path) -> ApneaNight:
    """One ``.npz`` night of the apnea-ecg-hr layout."""
    try:
        d = np.load(path)
        t_min, hr, apn = d["t"], d["hr"], d["apn"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(path, f"not an apnea-ecg npz night (t, hr, apn): {exc}") from exc
    if t_min.shape != hr.shape or t_min.ndim != 1:
        raise DataError(path, f"t {t_min.shape} and hr {hr.shape} must be equal 1-D arrays")
    if t_min.size and np.any(np.diff(t_min) <= 0):
        raise DataError(path, "beat times t are not strictly increasing")
    labels = np.asarray(apn, dtype=bool)
    ends = (np.arange(labels.size) + 1.0) * 60.0 + NPZ_LABEL_OFFSET_S
    return ApneaNight(path.stem, t_min * 60.0, np.asarray(hr, dtype=np.float64), labels, ends)


def read_wfdb_night(record: Path) -> ApneaNight:
    """One PhysioNet Apnea-ECG record (path without extension): ``.qrs`` beats, ``.apn`` labels."""
    import wfdb

    try:
        qrs = wfdb.rdann(str(record), "qrs")
        apn = wfdb.rdann(str(record), "apn")
    except (OSError, ValueError) as exc:
        raise DataError(record, f"cannot read WFDB .qrs/.apn annotations: {exc}") from exc
    fs = float(qrs.fs) if qrs.fs else 100.0
    beat_t = np.unique(np.asarray(qrs.sample, dtype=np.float64) / fs)
    times, hr = rr_to_hr(beat_t)
    symbols = np.array(apn.symbol)
    minute = np.round(np.asarray(apn.sample) / fs / 60.0).astype(int)
    n = int(minute.max()) + 1 if minute.size else 0
    labels = np.zeros(n, dtype=bool)
    labels[minute] = symbols == "A"
    ends = (np.arange(n) + 1.0) * 60.0
    return ApneaNight(record.name, times, hr, labels, ends)


def read_apnea_ecg_dir(folder: Path) -> list[ApneaNight]:
    """All labelled nights in ``folder`` (npz or WFDB layout), sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a directory")
    nights = [read_npz_night(p) for p in sorted(folder.glob("*.npz"))]
    for hea in sorted(folder.glob("*.hea")):
        rec = hea.with_suffix("")
        if not (rec.with_suffix(".qrs").is_file() and rec.with_suffix(".apn").is_file()):
            log.warning("%s: no .qrs/.apn beside the header; skipped", hea)
            continue
        nights.append(read_wfdb_night(rec))
    if not nights:
        raise DataError(folder, "no Apnea-ECG nights (*.npz or *.hea with .qrs and .apn)")
    return sorted(nights, key=lambda n: n.id)

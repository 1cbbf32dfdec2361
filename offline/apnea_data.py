"""Apnea-ECG nights -> beats, per-minute labels and per-minute HR features.

Two layouts are read:

* the npz layout (``<rec>.npz`` with ``t`` in minutes, ``hr`` in beats/s, ``apn`` per minute;
  ``../shared/data/apnea-ecg-hr``). Its HR minute ``m`` starts 30 s before the officially labelled
  minute, so the label of minute ``m`` is scored on the window ending at ``(m + 1.5) * 60`` s;
* the PhysioNet WFDB layout (``<rec>.apn`` minute annotations ``A``/``N`` with ``<rec>.qrs``
  beat annotations, or ``<rec>.hea`` + ``.dat`` ECG, on which R peaks are detected), where label
  ``k`` covers ``[60 k, 60 k + 60)`` s.

Files are read by ``rtsleep.data.readers`` (dataset ``apnea-ecg``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from offline.failures import Failed, none_readable, skip_failed
from rtsleep.apnea.ecg_model import VARIANTS
from rtsleep.apnea.features import NONCAUSAL_TRACE_SHIFT_S, sequence_features, sequence_traces
from rtsleep.apnea.hr import HrCleanConfig, rr_to_hr, valid_beats
from rtsleep.apnea.rpeaks import detect_rpeaks
from rtsleep.data.errors import DataError
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.wfdb_io import read_annotation
from rtsleep.data.recording import Modality, Recording

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

    @cached_property
    def valid(self) -> np.ndarray:
        """Beat validity ``(n_beats,)`` (:func:`rtsleep.apnea.hr.valid_beats`), computed once."""
        return valid_beats(self.hr_bps)

    def features(self) -> np.ndarray:
        """Per-minute features ``(n_minutes, N_FEATURES)``."""
        return sequence_features(self.times_s, self.hr_bps, self.valid, self.window_ends_s)

    def traces(self, variant: str) -> np.ndarray:
        """Per-minute heart-rate traces ``(n_minutes, TRACE_LEN)`` of the ``"causal"`` (the 5 min
        before each window end) or ``"noncausal"`` (centred on the window) variant."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
        shift = 0.0 if variant == "causal" else NONCAUSAL_TRACE_SHIFT_S
        return sequence_traces(self.times_s, self.hr_bps, self.valid, self.window_ends_s, shift)


def night_from_recording(rec: Recording) -> ApneaNight:
    """An Apnea-ECG :class:`Recording` (from ``rtsleep.data.readers``) -> :class:`ApneaNight`.

    Beats come from, in order: the npz beat series; the record's ``.qrs`` annotations; R peaks
    detected on its ECG channel (:func:`rtsleep.apnea.rpeaks.detect_rpeaks`).
    """
    if rec.minute_labels is None:
        raise DataError(rec.source, "no per-minute apnea labels")
    labels = np.asarray(rec.minute_labels, dtype=bool)
    if rec.beats is not None:  # npz layout
        ends = (np.arange(labels.size) + 1.0) * 60.0 + NPZ_LABEL_OFFSET_S
        return _checked(rec, ApneaNight(
            rec.id, rec.beats.times_s, np.asarray(rec.beats.hr_bps, dtype=np.float64), labels, ends
        ))
    record = Path(rec.source).with_suffix("")
    qrs = next((Path(f"{record}.{ext}") for ext in ("qrs", "QRS")
                if Path(f"{record}.{ext}").is_file()), None)
    if qrs is not None:
        ann = read_annotation(record, qrs.suffix[1:])
        fs = float(ann.fs) if ann.fs else 100.0
        beat_t = np.unique(np.asarray(ann.sample, dtype=np.float64) / fs)
    else:
        ecg = rec.by_modality(Modality.ECG)
        if not ecg:
            raise DataError(rec.source, "no beats: neither a .qrs file nor an ECG signal")
        ch = ecg[0]
        beat_t = detect_rpeaks(ch.data, ch.sfreq) + ch.start_s
    times, hr = rr_to_hr(beat_t)
    ends = (np.arange(labels.size) + 1.0) * 60.0
    return _checked(rec, ApneaNight(rec.id, times, hr, labels, ends))


def _checked(rec: Recording, night: ApneaNight) -> ApneaNight:
    """``night``, or ``DataError`` when fewer than half its beats are valid: the model would
    score every minute of it as a night without beats (no apnea), and the metrics would count it."""
    n_valid = int(night.valid.sum())
    if n_valid < 0.5 * night.hr_bps.size or not n_valid:
        cfg = HrCleanConfig()
        raise DataError(rec.source, f"{n_valid} of {night.hr_bps.size} beats have a plausible "
                        f"heart rate ({cfg.min_bps:g}-{cfg.max_bps:g} /s); is hr in beats per "
                        "second, and is there an ECG?")
    return night


def read_npz_night(path: Path) -> ApneaNight:
    """One ``.npz`` night of the apnea-ecg-hr layout."""
    return night_from_recording(read_recording("apnea-ecg", path))


def read_apnea_ecg_dir(folder: Path, failed: Failed | None = None) -> list[ApneaNight]:
    """All labelled nights under ``folder`` (npz or WFDB layout), sorted by id. An unreadable
    night raises ``DataError``; with a ``failed`` list it is logged, appended as ``(source,
    error)`` and left out instead (a folder with none readable still raises)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a directory")
    sources = list_sources("apnea-ecg", folder)
    if not sources:
        raise DataError(folder, "no Apnea-ECG nights (*.npz, or *.apn with .qrs or ECG)")
    nights = []
    seen: dict[str, Path] = {}
    for src in sources:
        try:
            night = night_from_recording(read_recording("apnea-ecg", src))
            if night.id in seen:
                raise DataError(src, f"record {night.id} is also {seen[night.id]}; each night "
                                "must be read once")
            seen[night.id] = src
            nights.append(night)
        except DataError as err:
            skip_failed(src, err, failed)
    if not nights and failed:
        raise none_readable(folder, "Apnea-ECG nights", failed)
    return sorted(nights, key=lambda n: n.id)

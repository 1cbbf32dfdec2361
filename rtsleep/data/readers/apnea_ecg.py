"""PhysioNet Apnea-ECG: WFDB ``.apn`` per-minute labels (+ ECG) and the beat-series ``npz`` layout.

- ``aNN.apn`` (WFDB annotations, 100 Hz): one label per minute, ``A`` (apnea/hypopnea) or
  ``N``, at sample ``60 k fs`` for minute ``k`` (PhysioNet: the label at 60 k s applies to the
  minute starting there). Every minute up to the last one must be labelled once. The ECG is read
  when the record's ``.dat`` is present (converted to µV).
- ``aNN.npz`` (``apnea-ecg-hr/``): ``t`` beat times in minutes on the file's own minute grid,
  ``hr`` instantaneous heart rate in beats/s, ``apn`` bool per minute. ``t = 0`` is *not* the
  PhysioNet recording start: the producer dropped the first label and leading minutes, and each
  HR minute starts 30 s before the labelled minute (see SOURCES.md). Times here are seconds on
  that grid (``times_s = 60 t``). ``hr`` is kept unfiltered (0.018-100 /s in the raw files).

Both give ``Recording.minute_labels`` and one ``APNEA_HYPOPNEA`` event of 60 s per positive
minute (label ``"A"``), so epoch flags follow with ``labels.event_epoch_flags``.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.readers.common import require_file, sha256_files
from rtsleep.data.readers.wfdb_io import read_annotation, read_signals
from rtsleep.data.recording import BeatSeries, Event, EventType, Recording

log = logging.getLogger(__name__)

MINUTE_S = 60.0
APN_SYMBOLS = {"A": True, "N": False}


def list_apnea_ecg_sources(path: Path) -> list[Path]:
    """``*.apn`` and ``*.npz`` files under ``path`` (the extension in any letter case); an
    ``.apn`` wins over an ``.npz`` of the same record name in the same folder.

    PhysioNet's ``a01r`` and ``a01er`` records (respiration, and the ECG beside it, for a few
    nights) are the night of ``a01``: with ``a01`` in the same folder they are left out, so a
    whole download does not count those nights twice."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "not found")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".apn", ".npz"))
    apn = [p for p in files if p.suffix.lower() == ".apn" and p.is_file()]
    taken = {p.with_suffix("") for p in apn}
    npz = [
        p for p in files
        if p.suffix.lower() == ".npz" and p.is_file() and p.with_suffix("") not in taken
    ]
    found = apn + npz
    names = {(p.parent, p.stem.lower()) for p in found}
    subsets = [p for p in found if any(
        p.stem.lower().endswith(tail) and (p.parent, p.stem.lower()[: -len(tail)]) in names
        for tail in ("er", "r"))]
    if subsets:
        log.info("%s: %d record(s) of a night listed under its own name too, left out: %s", path,
                 len(subsets), ", ".join(p.name for p in subsets))
    return sorted(set(found) - set(subsets))


def minute_events(labels: np.ndarray) -> list[Event]:
    """One 60-s ``APNEA_HYPOPNEA`` event per True minute of ``labels`` (bool ``(n_minutes,)``)."""
    return [
        Event(float(m) * MINUTE_S, MINUTE_S, EventType.APNEA_HYPOPNEA, "A")
        for m in np.flatnonzero(labels)
    ]


def read_apnea_ecg(source: Path, channel_map: ChannelMap | None = None) -> Recording:
    """One Apnea-ECG record from ``.apn`` (+ signals) or ``.npz``."""
    require_file(source)
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return _read_npz(source)
    if suffix == ".apn":
        return _read_apn(source, channel_map)
    raise DataError(source, "not an Apnea-ECG source (expected .apn or .npz)")


def _read_npz(path: Path) -> Recording:
    if not zipfile.is_zipfile(path):  # else numpy's message is about pickles and allow_pickle
        raise DataError(path, "unreadable npz: not a zip archive (damaged or not an npz file)")
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = {"t", "hr", "apn"} - set(d.files)
            if missing:
                raise DataError(path, f"npz lacks arrays {sorted(missing)} (needs t, hr, apn)")
            t = np.asarray(d["t"], dtype=np.float64)
            hr = np.asarray(d["hr"], dtype=np.float64)
            apn_raw = np.asarray(d["apn"])
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(path, f"unreadable npz: {err}") from None
    if t.ndim != 1 or hr.shape != t.shape:
        raise DataError(path, f"t {t.shape} and hr {hr.shape} must be 1-D of equal length")
    if apn_raw.ndim != 1 or apn_raw.size == 0:
        raise DataError(path, f"apn must be a non-empty 1-D array, got shape {apn_raw.shape}")
    if apn_raw.dtype != np.bool_ and not np.isin(apn_raw, (0, 1)).all():
        raise DataError(path, "apn must be boolean (or 0/1)")
    apn = apn_raw.astype(bool)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(hr))):
        raise DataError(path, "t or hr has non-finite values")
    if t.size and (np.any(np.diff(t) <= 0) or t[0] < 0 or t[-1] >= len(apn)):
        raise DataError(
            path, f"beat times must increase strictly within [0, {len(apn)}) minutes"
        )
    return Recording(
        id=path.stem,
        dataset="apnea-ecg",
        subject=path.stem,
        source=path,
        beats=BeatSeries(times_s=t * MINUTE_S, hr_bps=hr),
        minute_labels=apn,
        events=minute_events(apn),
        source_sha256=sha256_files(path),
        duration_hint_s=len(apn) * MINUTE_S,
    )


def read_apn_labels(source: Path) -> np.ndarray:
    """Per-minute labels (bool ``(n_minutes,)``) from a WFDB ``.apn`` file."""
    record = source.with_suffix("")
    ann = read_annotation(record, source.suffix.lstrip("."))
    fs = float(ann.fs) if ann.fs else 100.0
    minutes = np.rint(np.asarray(ann.sample) / (MINUTE_S * fs)).astype(np.int64)
    symbols = list(ann.symbol)
    if not symbols:
        raise DataError(source, "no annotations")
    bad = sorted(set(symbols) - set(APN_SYMBOLS))
    if bad:
        raise DataError(source, f"unknown apnea symbols {bad} (expected A or N)")
    n = int(minutes.max()) + 1
    if minutes.min() < 0 or len(set(minutes.tolist())) != len(minutes):
        raise DataError(source, "minutes labelled twice")
    if len(minutes) != n:
        missing = sorted(set(range(n)) - set(minutes.tolist()))
        raise DataError(source, f"{len(missing)} minutes without a label (first: {missing[0]})")
    labels = np.zeros(n, dtype=bool)
    labels[minutes] = [APN_SYMBOLS[s] for s in symbols]
    return labels


def _read_apn(source: Path, channel_map: ChannelMap | None) -> Recording:
    labels = read_apn_labels(source)
    record = source.with_suffix("")
    channels = read_signals(record, channel_map) if Path(f"{record}.hea").is_file() else []
    files = [source] + [p for p in (Path(f"{record}.hea"),) if p.is_file()]
    rec = Recording(
        id=record.name,
        dataset="apnea-ecg",
        subject=record.name,
        source=source,
        channels=channels,
        minute_labels=labels,
        events=minute_events(labels),
        source_sha256=sha256_files(*files),
        duration_hint_s=len(labels) * MINUTE_S,
    )
    if channels and rec.duration_s + MINUTE_S < len(labels) * MINUTE_S:
        raise DataError(
            source,
            f"{len(labels)} labelled minutes but the signal lasts {rec.duration_s:.0f} s",
        )
    return rec

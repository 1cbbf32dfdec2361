"""WFDB access shared by the slpdb and Apnea-ECG readers (headers, annotations, signals).

Some PhysioNet headers carry a 2-digit-year base date (slpdb ``slp32.hea``: ``20/7/89``) that
wfdb 4.x rejects. Such a header is read through a temporary copy without the base date (the
base time is kept); nothing else changes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import wfdb

from rtsleep.data.channels import DEFAULT_CHANNEL_MAP, ChannelMap, to_microvolts
from rtsleep.data.errors import DataError
from rtsleep.data.recording import EXG_MODALITIES, Channel

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bits per sample of the WFDB storage formats whose file size follows from the header (the
#: difference formats 310/311 and the FLAC formats 508-532 are not checked).
_FORMAT_BITS = {"8": 8, "80": 8, "16": 16, "61": 16, "160": 16, "212": 12, "24": 24, "32": 32}


def _with_patched_header(record: Path, exts: tuple[str, ...], read: Callable[[Path], T]) -> T:
    """Run ``read(record)``; on a header date error, retry on a copy without the base date."""
    with warnings.catch_warnings():
        # wfdb 4.3 calls a pandas API that pandas 3 deprecates; not actionable here.
        warnings.filterwarnings("ignore", message="The inplace keyword")
        return _read_patched(record, exts, read)


def _read_patched(record: Path, exts: tuple[str, ...], read: Callable[[Path], T]) -> T:
    try:
        return read(record)
    except ValueError as err:
        if "does not match format" not in str(err):
            raise
    hea = record.with_suffix(".hea") if record.suffix else Path(f"{record}.hea")
    lines = hea.read_text(errors="replace").splitlines()
    first = lines[0].split()
    lines[0] = " ".join(first[:5])  # name, n_sig, fs, sig_len, base time: drop the base date
    with tempfile.TemporaryDirectory(prefix="rtsleep-wfdb-") as tmp:
        base = Path(tmp) / record.name
        Path(f"{base}.hea").write_text("\n".join(lines) + "\n")
        for ext in exts:
            src = Path(f"{record}.{ext}")
            if src.exists():
                shutil.copy(src, Path(f"{base}.{ext}"))
        return read(base)


def read_header(record: Path) -> wfdb.io.record.Record:
    """The WFDB header of ``record`` (path without extension); ``DataError`` if unreadable."""
    hea = Path(f"{record}.hea")
    if not hea.is_file():
        raise DataError(hea, "WFDB header not found")
    try:
        return _with_patched_header(record, (), lambda r: wfdb.rdheader(str(r)))
    except (ValueError, IndexError, OSError) as err:
        raise DataError(hea, f"unreadable WFDB header: {err}") from None


def read_annotation(record: Path, ext: str) -> wfdb.io.annotation.Annotation:
    """``wfdb.rdann(record, ext)``, with the header work-around; ``DataError`` if unreadable."""
    path = Path(f"{record}.{ext}")
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    has_header = Path(f"{record}.hea").is_file()
    try:
        if has_header:
            return _with_patched_header(record, (ext,), lambda r: wfdb.rdann(str(r), ext))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The inplace keyword")
            return wfdb.rdann(str(record), ext)
    except (ValueError, IndexError, OSError, TypeError) as err:
        raise DataError(path, f"unreadable WFDB annotation file: {err}") from None


def _check_sizes(header: wfdb.io.record.Record, folder: Path) -> None:
    """``DataError`` when a signal file is shorter than its header says: wfdb reads past the
    end of a truncated ``.dat`` without a word and returns garbage for the missing part."""
    if not header.sig_len:
        return
    n = len(header.file_name or [])
    fmts = list(header.fmt or [""] * n)
    spf = list(header.samps_per_frame or [1] * n)
    offsets = list(header.byte_offset or [0] * n)
    bits: dict[str, int] = {}  # file -> bits per frame
    offset: dict[str, int] = {}  # file -> bytes before the first sample
    for name, fmt, k, off in zip(header.file_name or [], fmts, spf, offsets, strict=False):
        if str(fmt) not in _FORMAT_BITS:
            return
        bits[name] = bits.get(name, 0) + _FORMAT_BITS[str(fmt)] * int(k or 1)
        offset[name] = int(off or 0)
    for name, frame_bits in bits.items():
        need = offset[name] + (int(header.sig_len) * frame_bits + 7) // 8
        size = Path(folder, name).stat().st_size
        if size < need:
            raise DataError(Path(folder, name), f"truncated WFDB signal file: {size} bytes, the "
                            f"header's {header.sig_len} samples need {need}")


def read_signals(record: Path, channel_map: ChannelMap | None = None) -> list[Channel]:
    """All signals of ``record`` when its ``.dat`` file is present, else ``[]``.

    ExG signals are converted to µV (WFDB units such as ``mV``); non-finite samples (WFDB's
    missing-value code) are a ``DataError``.
    """
    header = read_header(record)
    files = {Path(record.parent, f) for f in (header.file_name or []) if f}
    if not files or not all(f.is_file() for f in files):
        return []
    _check_sizes(header, record.parent)
    cmap = channel_map or DEFAULT_CHANNEL_MAP
    try:
        rec = _with_patched_header(
            record,
            tuple(f.name.split(".", 1)[1] for f in files if "." in f.name),
            lambda r: wfdb.rdrecord(str(r)),
        )
    except (ValueError, IndexError, OSError) as err:
        raise DataError(Path(f"{record}.dat"), f"unreadable WFDB signals: {err}") from None
    channels: list[Channel] = []
    signals = np.asarray(rec.p_signal, dtype=np.float64)  # (n_samples, n_sig)
    for i, label in enumerate(rec.sig_name):
        data = signals[:, i]
        if not np.all(np.isfinite(data)):
            raise DataError(Path(f"{record}.dat"), f"channel {label!r} has non-finite values")
        modality = cmap.resolve(label)
        unit = rec.units[i] if rec.units else ""
        if modality in EXG_MODALITIES:
            data, unit, _ = to_microvolts(data, unit, source=record, label=label)
        channels.append(
            Channel(label=label, modality=modality, sfreq=float(rec.fs), unit=unit, data=data)
        )
    return channels

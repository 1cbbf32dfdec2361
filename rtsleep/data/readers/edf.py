"""EDF / EDF+ reader (edfio), with a strict header check before any data is read.

Why edfio: pyedflib refuses DREAMS ``excerpt3.edf`` (its digital range exceeds 16 bits in the
header), and mne resamples every channel to the highest rate, interpolating the 1-Hz label
channels into non-integers. edfio reads each signal at its own rate, as stored.

Values are physical; ExG channels are converted to µV (``Channel.unit == "uV"``) and
``Channel.resolution`` is the quantisation step ``(pmax - pmin) / (dmax - dmin)`` in the same
unit. Label channels (DREAMS ``hypnogram``, ``event_pneumo`` ...) come back as exact integers.

Bad input raises ``DataError`` naming the file:
- a header that cannot be parsed, a file shorter than its header;
- a data size that is not exactly ``n_records`` records (truncated, or a header that lies about
  the record count; ``-1`` "unknown" is accepted when the data is a whole number of records);
- EDF+D (discontinuous) files;
- a non-finite signal (a bad digital/physical range) and an all-flat recording (every signal
  channel constant). A single flat channel is kept with a warning; ``require_modalities`` treats
  it as missing, so a flat *required* channel is an error there.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import edfio
import numpy as np

from rtsleep.data.channels import (
    DEFAULT_CHANNEL_MAP,
    LABEL_CHANNELS,
    ChannelMap,
    is_flat,
    normalize_label,
    to_microvolts,
)
from rtsleep.data.errors import DataError
from rtsleep.data.readers.common import require_file, sha256_files
from rtsleep.data.recording import EXG_MODALITIES, Channel, Recording

log = logging.getLogger(__name__)

ANNOTATION_LABELS = frozenset({"EDF Annotations", "BDF Annotations"})

Annotation = tuple[float, float, str]


@dataclass(frozen=True)
class EdfHeader:
    """The fields of an EDF header that fix the file layout."""

    version: str
    reserved: str
    header_bytes: int
    n_records: int
    record_duration_s: float
    labels: tuple[str, ...]
    samples_per_record: tuple[int, ...]

    @property
    def record_bytes(self) -> int:
        """Bytes per data record (2 bytes per sample)."""
        return 2 * sum(self.samples_per_record)


def _field(raw: bytes, start: int, size: int) -> str:
    return raw[start : start + size].decode("ascii", errors="replace").strip()


def check_edf_file(path: Path) -> EdfHeader:
    """Parse and check the header of ``path`` against its size; ``DataError`` if they disagree."""
    require_file(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fixed = fh.read(256)
        if len(fixed) < 256:
            raise DataError(path, f"truncated EDF: {size} bytes, shorter than the 256-byte header")
        try:
            n_signals = int(_field(fixed, 252, 4))
            header_bytes = int(_field(fixed, 184, 8))
            n_records = int(_field(fixed, 236, 8))
            record_duration = float(_field(fixed, 244, 8))
        except ValueError:
            raise DataError(path, "not an EDF file: header fields are not numbers") from None
        if n_signals < 1 or header_bytes != 256 * (n_signals + 1):
            raise DataError(
                path, f"corrupt EDF header: {n_signals} signals but {header_bytes} header bytes"
            )
        rest = fh.read(256 * n_signals)
    if len(rest) < 256 * n_signals:
        raise DataError(path, f"truncated EDF: {size} bytes, header needs {header_bytes}")
    labels = tuple(_field(rest, 16 * i, 16) for i in range(n_signals))
    spr_at = 216 * n_signals
    try:
        spr = tuple(int(_field(rest, spr_at + 8 * i, 8)) for i in range(n_signals))
    except ValueError:
        raise DataError(path, "corrupt EDF header: samples per record are not numbers") from None
    if any(s < 1 for s in spr):
        raise DataError(path, f"corrupt EDF header: samples per record {list(spr)}")
    # EDF+ allows a 0-s record only in annotation-only files (Sleep-EDF hypnograms)
    has_signal = any(label.strip() not in ANNOTATION_LABELS for label in labels)
    if not math.isfinite(record_duration) or record_duration < 0 or (
            record_duration == 0 and has_signal):
        raise DataError(
            path, f"corrupt EDF header: data record duration {_field(fixed, 244, 8)!r} s"
        )
    header = EdfHeader(
        version=_field(fixed, 0, 8),
        reserved=_field(fixed, 192, 44),
        header_bytes=header_bytes,
        n_records=n_records,
        record_duration_s=record_duration,
        labels=labels,
        samples_per_record=spr,
    )
    data_bytes = size - header_bytes
    whole, partial = divmod(data_bytes, header.record_bytes)
    if n_records == -1:
        if partial:
            raise DataError(path, f"truncated EDF: {partial} bytes of an incomplete data record")
        return EdfHeader(**{**header.__dict__, "n_records": whole})
    if n_records < 0:
        raise DataError(path, f"corrupt EDF header: {n_records} data records")
    if data_bytes < n_records * header.record_bytes:
        raise DataError(
            path,
            f"truncated EDF: header declares {n_records} data records but the file holds "
            f"{whole}{' and a partial one' if partial else ''} ({size} bytes)",
        )
    if data_bytes > n_records * header.record_bytes:
        raise DataError(
            path,
            f"EDF header declares {n_records} data records but the file holds "
            f"{whole}{' and a partial one' if partial else ''} ({size} bytes)",
        )
    if header.reserved.startswith("EDF+D"):
        raise DataError(path, "EDF+D (discontinuous) files are not supported")
    return header


def load_edf(path: Path) -> tuple[edfio.Edf, EdfHeader]:
    """Check ``path`` and read it with edfio (data loaded); every failure is a ``DataError``."""
    header = check_edf_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # "-1" (unknown) is legal; check_edf_file already checked the data is whole records.
            warnings.filterwarnings("ignore", message="EDF header indicates -1 data records")
            edf = edfio.read_edf(path, lazy_load_data=False)
    except DataError:
        raise
    except (ValueError, UserWarning, OSError, IndexError, UnicodeDecodeError) as err:
        raise DataError(path, f"unreadable EDF: {err}") from None
    return edf, header


def edf_start_time(edf: edfio.Edf) -> datetime | None:
    """Start date and time of the recording; ``None`` when the date is anonymised."""
    try:
        return datetime.combine(edf.startdate, edf.starttime)
    except (edfio.AnonymizedDateError, ValueError):
        return None


def edf_annotations(path: Path, edf: edfio.Edf | None = None) -> list[Annotation]:
    """EDF+ annotations as ``(onset_s, duration_s, text)``; record time-keeping entries dropped."""
    if edf is None:
        edf, _ = load_edf(path)
    out: list[Annotation] = []
    for ann in edf.annotations:
        text = ann.text.replace("\x00", "").strip()
        if not text:
            continue
        out.append((float(ann.onset), float(ann.duration or 0.0), text))
    return out


def read_edf(
    path: Path,
    channel_map: ChannelMap | None = None,
    *,
    dataset: str = "edf",
    recording_id: str | None = None,
    subject: str | None = None,
    unit_overrides: Mapping[str, str] | None = None,
) -> Recording:
    """Read every signal of an EDF/EDF+ file into a ``Recording`` (no stages, no events).

    ``unit_overrides`` maps a channel label to the unit its values are really in, for files whose
    header is known to be wrong (see the DREAMS reader). Raises ``DataError`` for bad input.
    """
    path = Path(path)
    cmap = channel_map or DEFAULT_CHANNEL_MAP
    edf, header = load_edf(path)
    overrides = {normalize_label(k): v for k, v in (unit_overrides or {}).items()}
    channels: list[Channel] = []
    for sig in edf.signals:
        label = sig.label.strip()
        if label in ANNOTATION_LABELS:
            continue
        channels.append(_channel(path, sig, label, cmap, overrides))
    if not channels:
        raise DataError(path, "EDF has no signal channels (annotations only)")
    signal_channels = [c for c in channels if normalize_label(c.label) not in LABEL_CHANNELS]
    if signal_channels and all(is_flat(c) for c in signal_channels):
        raise DataError(path, f"every signal channel is flat ({len(signal_channels)} channels)")
    for c in signal_channels:
        if is_flat(c):
            log.warning("%s: channel %r is flat (constant %g)", path, c.label, c.data[0])
    return Recording(
        id=recording_id or path.stem,
        dataset=dataset,
        subject=subject or path.stem,
        source=path,
        channels=channels,
        start_time=edf_start_time(edf),
        source_sha256=sha256_files(path),
        duration_hint_s=header.n_records * header.record_duration_s,
    )


def _channel(
    path: Path,
    sig: edfio.EdfSignal,
    label: str,
    cmap: ChannelMap,
    unit_overrides: Mapping[str, str],
) -> Channel:
    modality = cmap.resolve(label)
    if sig.digital_max <= sig.digital_min:
        raise DataError(
            path, f"channel {label!r}: digital max {sig.digital_max} <= min {sig.digital_min}"
        )
    data = np.asarray(sig.data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise DataError(path, f"channel {label!r} has non-finite values")
    unit = unit_overrides.get(normalize_label(label), sig.physical_dimension.strip())
    resolution = (sig.physical_max - sig.physical_min) / (sig.digital_max - sig.digital_min)
    if normalize_label(label) in LABEL_CHANNELS:
        data = np.rint(data)  # integer codes: drop the float noise of the physical scaling
    elif modality in EXG_MODALITIES:
        data, unit, scale = to_microvolts(data, unit, source=path, label=label)
        resolution *= scale
    return Channel(
        label=label,
        modality=modality,
        sfreq=float(sig.sampling_frequency),
        unit=unit,
        data=data,
        resolution=abs(float(resolution)),
    )


def list_edf_sources(path: Path) -> list[Path]:
    """``path`` itself for a file, else every ``*.edf`` under the folder, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "not found")
    return sorted(p for p in path.rglob("*") if p.suffix.lower() == ".edf" and p.is_file())

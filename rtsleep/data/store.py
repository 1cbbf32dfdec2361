"""Parquet store: one file per recording, one row per 30-s epoch.

Layout on disk: ``STORE/<dataset>/<recording id>.parquet``. Every file is self-describing:

Columns (one row per epoch ``k``, covering ``[30 k, 30 k + 30)`` s from the recording start)
- ``epoch`` int32: ``k``; ``start_s`` float64: ``30 k``.
- ``stage`` int8: ``Stage`` value, ``-1`` = unscored (also for every row when the source has no
  hypnogram; ``StoreMeta.has_stages`` tells the two apart).
- Event flags, bool, from :func:`rtsleep.data.labels.event_epoch_flags` (an event marks every epoch
  it overlaps by at least ``StoreMeta.min_overlap_s``): see :data:`FLAG_TYPES`. A source that
  scores no events of a kind has all-False flags for it; ``StoreMeta.event_counts`` gives the
  source counts.
- Apnea-ECG only (``StoreMeta.has_minute_labels`` / ``has_beats``): ``minute_label`` int8 (the
  expert per-minute label of the minute holding the epoch: 1 apnea/hypopnea, 0 normal, -1 none),
  ``beat_t`` list<float64> (beat times in s from the recording start that fall inside the epoch)
  and ``beat_hr`` list<float32> (instantaneous heart rate of those beats, beats/s).
- Signals: one ``fixed_size_list<float32, n_times>`` column per stored channel, named
  ``"x:" + label``, holding the preprocessed signal at the modality's model rate
  (``n_times = 30 * sfreq``) exactly as the model reads it: the epoch assembler's output
  (:mod:`rtsleep.data.epochs`), i.e. the primary channel of each ExG modality and every RESP and
  SPO2 channel. Label-only recordings have no signal columns.

Schema metadata key ``rtsleep`` holds :class:`StoreMeta` as JSON: subject, dataset, recording id,
channel map, rates, units, preprocess spec, sha256 of the source file(s), format version.

Files are zstd-compressed (level 3), written in row groups of :data:`ROW_GROUP_EPOCHS` epochs, with
dictionary encoding and statistics off and byte-stream-split encoding on for signal columns, to a
temporary file renamed into place on success.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rtsleep.data.channels import is_flat, require_modalities
from rtsleep.data.epochs import EpochArrays, epochs_from_recording
from rtsleep.data.errors import DataError
from rtsleep.data.labels import DEFAULT_MIN_OVERLAP_S, event_counts, event_epoch_flags
from rtsleep.data.preprocessing import NORM_FIXED, ModalitySpec, PreprocessSpec
from rtsleep.data.recording import (
    EPOCH_S,
    EXG_MODALITIES,
    BeatSeries,
    EventType,
    Modality,
    Recording,
    Stage,
)

log = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 1
"""Version of the file layout below; readers refuse newer files."""

METADATA_KEY = b"rtsleep"
SIGNAL_PREFIX = "x:"
ROW_GROUP_EPOCHS = 128
"""Epochs per Parquet row group (the unit streamed to training)."""
ZSTD_LEVEL = 3

FLAG_TYPES: dict[str, tuple[EventType, ...]] = {
    "apnea": (
        EventType.APNEA_OBSTRUCTIVE,
        EventType.APNEA_CENTRAL,
        EventType.APNEA_MIXED,
        EventType.APNEA,
    ),
    "apnea_obstructive": (EventType.APNEA_OBSTRUCTIVE,),
    "apnea_central": (EventType.APNEA_CENTRAL,),
    "apnea_mixed": (EventType.APNEA_MIXED,),
    "hypopnea": (EventType.HYPOPNEA,),
    # Any disordered breathing, including sources that do not separate apnea and hypopnea.
    "apnea_hypopnea": (
        EventType.APNEA_OBSTRUCTIVE,
        EventType.APNEA_CENTRAL,
        EventType.APNEA_MIXED,
        EventType.APNEA,
        EventType.HYPOPNEA,
        EventType.APNEA_HYPOPNEA,
    ),
    "arousal": (EventType.AROUSAL,),
    "desaturation": (EventType.DESATURATION,),
}
"""Flag column name -> event types that set it."""

BASE_COLUMNS: tuple[str, ...] = ("epoch", "start_s", "stage", *FLAG_TYPES)
BEAT_COLUMNS: tuple[str, ...] = ("beat_t", "beat_hr")


@dataclass(frozen=True)
class StoredChannel:
    """One stored signal column.

    ``sfreq`` is the stored (model) rate in Hz and ``n_times = 30 * sfreq`` the samples per epoch;
    ``unit`` is the unit of the stored values. ``source_sfreq`` / ``source_unit`` describe the
    channel as read from the source file. ``role`` is ``"primary"`` for the channel the model reads
    for its modality, ``"extra"`` for other channels of the same modality.
    """

    label: str
    modality: str
    role: str
    sfreq: float
    n_times: int
    unit: str
    source_sfreq: float
    source_unit: str

    @property
    def column(self) -> str:
        return SIGNAL_PREFIX + self.label


@dataclass
class StoreMeta:
    """Everything a store file says about its recording (JSON in the schema metadata).

    ``channel_map`` maps every channel label of the source (used or not) to its modality;
    ``channels`` lists the stored signal columns. ``preprocess`` is the JSON object of the
    ``PreprocessSpec`` the signals went through (``None`` for label-only recordings).
    """

    recording_id: str
    dataset: str
    subject: str
    source: str
    source_sha256: str
    n_epochs: int
    start_time: str | None = None
    epoch_s: float = EPOCH_S
    channels: list[StoredChannel] = field(default_factory=list)
    channel_map: dict[str, str] = field(default_factory=dict)
    preprocess: dict[str, Any] | None = None
    has_stages: bool = False
    has_beats: bool = False
    has_minute_labels: bool = False
    min_overlap_s: float = 0.0
    event_counts: dict[str, int] = field(default_factory=dict)
    format_version: int = STORE_FORMAT_VERSION

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) as stored in the Parquet file metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, source: str | Path = "<metadata>") -> StoreMeta:
        """Parse; ``DataError`` naming ``source`` for malformed or too-new metadata."""
        try:
            obj = json.loads(text)
            version = int(obj.get("format_version", -1))
            if version > STORE_FORMAT_VERSION or version < 1:
                raise DataError(
                    source,
                    f"store format version {version} is not supported "
                    f"(this build reads 1..{STORE_FORMAT_VERSION})",
                )
            obj["channels"] = [StoredChannel(**c) for c in obj.get("channels", [])]
            return cls(**obj)
        except DataError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise DataError(source, f"malformed rtsleep store metadata ({err})") from err

    def channel(self, name: str) -> StoredChannel:
        """A stored channel by label, or the primary channel of a modality name (``"EEG"``)."""
        for c in self.channels:
            if c.label == name:
                return c
        for c in self.channels:
            if c.modality == name and c.role == "primary":
                return c
        have = [c.label for c in self.channels]
        raise DataError(self.recording_id, f"no stored channel {name!r} (have {have})")

    @property
    def modalities(self) -> list[str]:
        """Modalities with a primary stored channel, in stored order."""
        return [c.modality for c in self.channels if c.role == "primary"]


@dataclass
class EpochData:
    """Per-epoch content of one recording, ready to store.

    ``signals`` maps channel label -> ``float32 (n_epochs, n_times)``; ``stage`` is ``int8
    (n_epochs,)``; ``flags`` maps each :data:`FLAG_TYPES` name -> ``bool (n_epochs,)``;
    ``minute_label`` is ``int8 (n_epochs,)`` or ``None``; ``beat_t`` / ``beat_hr`` are per-epoch
    arrays (s from the recording start, beats/s) or ``None``.
    """

    stage: np.ndarray
    flags: dict[str, np.ndarray]
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    minute_label: np.ndarray | None = None
    beat_t: list[np.ndarray] | None = None
    beat_hr: list[np.ndarray] | None = None

    @property
    def n_epochs(self) -> int:
        return int(self.stage.shape[0])


def _fixed_list(x: np.ndarray) -> pa.FixedSizeListArray:
    """``(n, S)`` float32 -> fixed_size_list<float32, S> array of length n (zero copy)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, s = x.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(n * s)), s)  # (n*S,) -> n x S


def _var_list(parts: list[np.ndarray], dtype: type[np.generic]) -> pa.ListArray:
    """Per-epoch variable-length arrays -> list<dtype> array."""
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def build_table(meta: StoreMeta, data: EpochData) -> pa.Table:
    """The Arrow table of one recording; ``ValueError`` if shapes disagree with ``meta``."""
    n = data.n_epochs
    if n != meta.n_epochs:
        raise ValueError(f"{meta.recording_id}: {n} label rows but meta says {meta.n_epochs}")
    if n == 0:
        raise DataError(meta.source, "no complete 30-s epoch to store")
    epoch = np.arange(n, dtype=np.int32)
    arrays: list[pa.Array] = [
        pa.array(epoch),
        pa.array(epoch.astype(np.float64) * meta.epoch_s),
        pa.array(np.asarray(data.stage, dtype=np.int8)),
    ]
    names: list[str] = ["epoch", "start_s", "stage"]
    for name in FLAG_TYPES:
        flag = np.asarray(data.flags[name], dtype=bool)
        if flag.shape != (n,):
            raise ValueError(f"{meta.recording_id}: flag {name} has shape {flag.shape}, not ({n},)")
        arrays.append(pa.array(flag))
        names.append(name)
    if data.minute_label is not None:
        arrays.append(pa.array(np.asarray(data.minute_label, dtype=np.int8)))
        names.append("minute_label")
    if data.beat_t is not None and data.beat_hr is not None:
        if len(data.beat_t) != n or len(data.beat_hr) != n:
            raise ValueError(f"{meta.recording_id}: beat lists must have one entry per epoch")
        arrays.append(_var_list(data.beat_t, np.float64))
        arrays.append(_var_list(data.beat_hr, np.float32))
        names.extend(BEAT_COLUMNS)
    for ch in meta.channels:
        x = data.signals[ch.label]
        if x.shape != (n, ch.n_times):
            raise ValueError(
                f"{meta.recording_id}: channel {ch.label} has shape {x.shape}, "
                f"want ({n}, {ch.n_times})"
            )
        arrays.append(_fixed_list(x))
        names.append(ch.column)
    table = pa.Table.from_arrays(arrays, names=names)
    return table.replace_schema_metadata({METADATA_KEY: meta.to_json().encode()})


def write_table(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` atomically (temporary file, fsync, rename); returns ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    signal_cols = [n for n in table.column_names if n.startswith(SIGNAL_PREFIX)]
    other_cols = [n for n in table.column_names if not n.startswith(SIGNAL_PREFIX)]
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=ROW_GROUP_EPOCHS,
            compression="zstd",
            compression_level=ZSTD_LEVEL,
            use_dictionary=[n for n in other_cols if n not in BEAT_COLUMNS],
            write_statistics=[n for n in other_cols if n not in BEAT_COLUMNS],
            # Leaf paths of the list columns: byte-stream-split floats compress ~11 % better.
            use_byte_stream_split=[f"{n}.list.element" for n in signal_cols],
            # CRC32 per page: bytes changed on disk are an error on read, not silent data
            write_page_checksum=True,
        )
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %s (%d epochs, %d signal columns)", path, table.num_rows, len(signal_cols))
    return path


def store_path(root: Path, dataset: str, recording_id: str) -> Path:
    """Where a recording lives in a store: ``root/<dataset>/<recording_id>.parquet``."""
    if not recording_id or "/" in recording_id or recording_id.startswith("."):
        raise ValueError(f"recording id {recording_id!r} cannot be a file name")
    return Path(root) / dataset / f"{recording_id}.parquet"


# ------------------------------------------------------------------ Recording -> store rows


def _stored_channels(
    rec: Recording, spec: PreprocessSpec, arrays: EpochArrays
) -> list[tuple[StoredChannel, np.ndarray]]:
    """Signal columns from the epoch assembler's output: ``(channel, float32 (n, n_times))``.

    One column per ExG modality present (its primary channel, ``role="primary"``), then every
    auxiliary (RESP, SPO2) channel, preferred first (``"primary"``, then ``"extra"``).
    """
    by_label = {c.label: c for c in rec.channels}
    out: list[tuple[StoredChannel, np.ndarray]] = []
    for mspec in spec.modalities:
        mod = mspec.modality
        for row, label in enumerate(arrays.channels.get(mod, [])):
            if mod in EXG_MODALITIES:
                x = arrays.x[:, EXG_MODALITIES.index(mod), :]  # (n, M, S) -> (n, S)
            else:
                x = arrays.aux[mod][:, row, :]  # (n, k, S_aux) -> (n, S_aux)
            src = by_label[label]
            out.append((StoredChannel(
                label=label,
                modality=mod.value,
                role="primary" if row == 0 else "extra",
                sfreq=float(mspec.sfreq),
                n_times=spec.n_times(mod),
                unit=_stored_unit(mspec),
                source_sfreq=float(src.sfreq),
                source_unit=src.unit,
            ), x))
    return out


def _stored_unit(mspec: ModalitySpec) -> str:
    """Unit of the normalised values, e.g. ``"(x - 0) / 20 uV"`` or ``"x / running RMS ..."``."""
    if mspec.norm == NORM_FIXED:
        unit = "%" if mspec.modality == Modality.SPO2 else (
            "uV" if mspec.modality in EXG_MODALITIES else "source unit"
        )
        return f"(x - {mspec.offset:g}) / {mspec.scale:g} {unit}"
    return f"x / running RMS over {mspec.tau_s:g} s"


def _warn_unusable(rec: Recording, spec: PreprocessSpec) -> None:
    for c in rec.channels:
        if c.modality in spec and (is_flat(c) or not np.isfinite(c.data).all()):
            log.warning("%s: channel %r (%s) is flat or non-finite; not used",
                        rec.source, c.label, c.modality)


def _align_stages(rec: Recording, n_epochs: int) -> np.ndarray:
    """The hypnogram cut or padded (with ``UNSCORED``) to ``n_epochs``.

    Scored epochs beyond the signal are an error (the annotations do not match the recording);
    trailing unscored epochs beyond it are dropped.
    """
    if rec.stages is None:
        return np.full(n_epochs, int(Stage.UNSCORED), dtype=np.int8)
    stages = np.asarray(rec.stages, dtype=np.int8)
    if len(stages) > n_epochs:
        extra = stages[n_epochs:]
        if np.any(extra != int(Stage.UNSCORED)):
            raise DataError(
                rec.source, f"hypnogram has {len(stages)} epochs but the signals only "
                f"{n_epochs} complete 30-s epochs"
            )
        return stages[:n_epochs]
    pad = np.full(n_epochs - len(stages), int(Stage.UNSCORED), dtype=np.int8)
    return np.concatenate([stages, pad])


def _beats_per_epoch(
    beats: BeatSeries, n_epochs: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Beat times (s) and rates (beats/s) split by the epoch holding each beat."""
    t = np.asarray(beats.times_s, dtype=np.float64)
    hr = np.asarray(beats.hr_bps, dtype=np.float32)
    k = np.floor(t / EPOCH_S).astype(np.int64)
    inside = (k >= 0) & (k < n_epochs)
    if not inside.all():
        log.debug("%d beats outside the %d epochs dropped", int((~inside).sum()), n_epochs)
    t, hr, k = t[inside], hr[inside], k[inside]
    order = np.argsort(k, kind="stable")
    t, hr, k = t[order], hr[order], k[order]
    bounds = np.searchsorted(k, np.arange(1, n_epochs))
    return np.split(t, bounds), np.split(hr, bounds)


def recording_to_store(
    rec: Recording,
    spec: PreprocessSpec | None = None,
    *,
    require: Sequence[Modality] = (),
    min_overlap_s: float = DEFAULT_MIN_OVERLAP_S,
) -> tuple[StoreMeta, EpochData]:
    """Preprocess and label one recording into store rows.

    Signals come from the shared epoch assembler (:func:`rtsleep.data.epochs.epochs_from_recording`,
    one 30-s epoch of raw samples at a time, as in the daemon): the primary channel of each ExG
    modality and every RESP / SPO2 channel; the recording has as many epochs as its shortest
    stored channel has complete 30-s epochs.
    Label-only recordings keep ``rec.n_epochs``. ``require``: modalities a recording with channels
    must have (``DataError`` naming the file otherwise).
    """
    spec = spec if spec is not None else PreprocessSpec.default()
    if rec.channels and require:
        require_modalities(rec, require, rec.source)
    chans: list[tuple[StoredChannel, np.ndarray]] = []
    if rec.channels:
        _warn_unusable(rec, spec)
        arrays = epochs_from_recording(rec, spec)
        unusable = [m for m in require if m not in arrays.channels]
        if unusable:
            have = ", ".join(f"{c.label} ({c.modality.value}, {c.sfreq:g} Hz)"
                             for c in rec.channels)
            raise DataError(rec.source, "missing required modality "
                            f"{', '.join(m.value for m in unusable)}: no channel usable as model "
                            f"input (has: {have})")
        chans = _stored_channels(rec, spec, arrays)
        n = arrays.n_epochs
    else:
        n = rec.n_epochs
    if n <= 0:
        raise DataError(rec.source, f"no complete 30-s epoch (recording is {rec.duration_s:g} s)")
    signals = {s.label: x for s, x in chans}
    data = EpochData(
        stage=_align_stages(rec, n),
        flags={
            name: event_epoch_flags(rec.events, n, types, min_overlap_s)
            for name, types in FLAG_TYPES.items()
        },
        signals=signals,
    )
    if rec.minute_labels is not None:
        minutes = np.asarray(rec.minute_labels, dtype=np.int8)
        idx = (np.arange(n) * int(EPOCH_S)) // 60  # epoch k lies in minute floor(30 k / 60)
        inside = idx < len(minutes)
        data.minute_label = np.full(n, -1, dtype=np.int8)
        data.minute_label[inside] = minutes[idx[inside]]
    if rec.beats is not None:
        data.beat_t, data.beat_hr = _beats_per_epoch(rec.beats, n)
    meta = StoreMeta(
        recording_id=rec.id,
        dataset=rec.dataset,
        subject=rec.subject,
        source=str(rec.source),
        source_sha256=rec.source_sha256,
        n_epochs=n,
        start_time=rec.start_time.isoformat() if rec.start_time is not None else None,
        channels=[s for s, _ in chans],
        channel_map={c.label: c.modality.value for c in rec.channels},
        preprocess=json.loads(spec.to_json()) if chans else None,
        has_stages=rec.stages is not None,
        has_beats=rec.beats is not None,
        has_minute_labels=rec.minute_labels is not None,
        min_overlap_s=float(min_overlap_s),
        event_counts=event_counts(rec.events),
    )
    return meta, data


def write_recording(
    rec: Recording,
    root: Path,
    spec: PreprocessSpec | None = None,
    *,
    require: Sequence[Modality] = (),
    min_overlap_s: float = DEFAULT_MIN_OVERLAP_S,
) -> tuple[Path, int]:
    """Preprocess, label and atomically write one recording into the store folder ``root``.

    Returns ``(path, n_epochs)``. Nothing is written when any step fails.
    """
    meta, data = recording_to_store(rec, spec, require=require, min_overlap_s=min_overlap_s)
    path = store_path(root, rec.dataset, rec.id)
    write_table(build_table(meta, data), path)
    return path, meta.n_epochs


# --------------------------------------------------------------------------------------- reading


@dataclass
class EpochBatch:
    """Consecutive epochs of one recording, as numpy arrays.

    ``epoch``: int32 ``(n,)``; ``labels``: column -> ``(n,)`` (``stage`` int8, flags bool,
    ``minute_label`` int8, ``start_s`` float64); ``signals``: channel label -> float32
    ``(n, n_times)``; ``beat_t`` / ``beat_hr``: per-epoch arrays when stored and requested.
    """

    recording_id: str
    epoch: np.ndarray
    labels: dict[str, np.ndarray]
    signals: dict[str, np.ndarray]
    beat_t: list[np.ndarray] | None = None
    beat_hr: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.epoch.shape[0])


def exg_input(batch: EpochBatch, meta: StoreMeta) -> tuple[np.ndarray, np.ndarray]:
    """The model's ExG input from a batch, as in ``docs/architecture.md``.

    Returns ``x`` float32 ``(n, M, S)`` in ``EXG_MODALITIES`` order (zeros where absent) and
    ``mask`` bool ``(M,)`` (True where the batch holds that modality's primary channel).
    """
    primaries = {c.modality: c for c in meta.channels if c.role == "primary"}
    n_times = [c.n_times for c in primaries.values() if Modality(c.modality) in EXG_MODALITIES]
    s = n_times[0] if n_times else int(round(100.0 * meta.epoch_s))
    x = np.zeros((len(batch), len(EXG_MODALITIES), s), dtype=np.float32)  # (n, M, S)
    mask = np.zeros(len(EXG_MODALITIES), dtype=bool)  # (M,)
    for i, mod in enumerate(EXG_MODALITIES):
        ch = primaries.get(mod.value)
        if ch is not None and ch.label in batch.signals:
            x[:, i, :] = batch.signals[ch.label]
            mask[i] = True
    return x, mask


def _column_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def fixed_list_numpy(col: pa.ChunkedArray | pa.Array, n_times: int) -> np.ndarray:
    """A signal column (fixed_size_list<float32, S>) of ``n`` epochs -> float32 ``(n, S)``."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(len(arr), n_times)  # (n*S,) -> (n, S)


def _list_numpy(col: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = np.asarray(arr.offsets.to_numpy()) - int(arr.offsets[0].as_py())
    values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False))
    return np.split(values, offsets[1:-1])


def open_parquet(path: Path) -> pq.ParquetFile:
    """``path`` opened with its page checksums verified on every read (files written before the
    store had them read as before); ``DataError`` when it is not a readable Parquet file."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as err:
        raise DataError(path, f"not a readable Parquet file ({err})") from err


@contextlib.contextmanager
def damaged_parquet(path: Path) -> Iterator[None]:
    """Around a read of ``path``'s data: a page that cannot be decoded or fails its checksum
    (the footer read fine) is a ``DataError`` naming the file, not pyarrow's message alone."""
    try:
        yield
    except (OSError, pa.ArrowException) as err:
        raise DataError(path, f"damaged Parquet data ({err})") from None


class StoredRecording:
    """One recording in a store: metadata plus streamed reads of its epochs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open_parquet(self.path)
        raw = (self._file.schema_arrow.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise DataError(self.path, "not an rtsleep store file (no 'rtsleep' metadata)")
        self.meta = StoreMeta.from_json(raw, self.path)

    @property
    def id(self) -> str:
        return self.meta.recording_id

    @property
    def n_epochs(self) -> int:
        return self.meta.n_epochs

    @property
    def num_row_groups(self) -> int:
        return int(self._file.num_row_groups)

    def row_group_sizes(self) -> list[int]:
        """Epochs in each row group."""
        md = self._file.metadata
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)]

    def _columns(
        self, channels: Sequence[str] | None, beats: bool
    ) -> tuple[list[str], list[StoredChannel]]:
        chans = list(self.meta.channels) if channels is None else [
            self.meta.channel(c) for c in channels
        ]
        names = self._file.schema_arrow.names
        cols = [n for n in names if n in BASE_COLUMNS or n == "minute_label"]
        if beats and self.meta.has_beats:
            cols.extend(BEAT_COLUMNS)
        cols.extend(c.column for c in chans)
        return cols, chans

    def _to_batch(self, table: pa.Table, chans: list[StoredChannel]) -> EpochBatch:
        labels = {
            n: _column_numpy(table.column(n))
            for n in table.column_names
            if n != "epoch" and not n.startswith(SIGNAL_PREFIX) and n not in BEAT_COLUMNS
        }
        signals = {c.label: fixed_list_numpy(table.column(c.column), c.n_times) for c in chans}
        has_beats = "beat_t" in table.column_names
        return EpochBatch(
            recording_id=self.id,
            epoch=_column_numpy(table.column("epoch")),
            labels=labels,
            signals=signals,
            beat_t=_list_numpy(table.column("beat_t")) if has_beats else None,
            beat_hr=_list_numpy(table.column("beat_hr")) if has_beats else None,
        )

    def iter_batches(
        self, channels: Sequence[str] | None = None, beats: bool = True
    ) -> Iterator[EpochBatch]:
        """Stream the recording one row group at a time.

        ``channels``: labels or modality names (``"EEG"`` = that modality's primary channel) to
        read; ``None`` reads every stored channel, ``[]`` reads labels only.
        """
        cols, chans = self._columns(channels, beats)
        for i in range(self._file.num_row_groups):
            with damaged_parquet(self.path):
                table = self._file.read_row_group(i, columns=cols)
            yield self._to_batch(table, chans)

    def read(self, channels: Sequence[str] | None = None, beats: bool = True) -> EpochBatch:
        """All epochs at once (see :meth:`iter_batches` for ``channels``)."""
        cols, chans = self._columns(channels, beats)
        with damaged_parquet(self.path):
            table = self._file.read(columns=cols)
        return self._to_batch(table, chans)

    def read_labels(self) -> dict[str, np.ndarray]:
        """The label columns only: name -> ``(n_epochs,)``."""
        return self.read(channels=[], beats=False).labels

    def column_nbytes(self) -> dict[str, int]:
        """Compressed bytes on disk per column, summed over row groups."""
        md = self._file.metadata
        out: dict[str, int] = {}
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            for j in range(rg.num_columns):
                cc = rg.column(j)
                path = cc.path_in_schema
                name = path.removesuffix(".list.element").removesuffix(".list.item")
                out[name] = out.get(name, 0) + int(cc.total_compressed_size)
        return out


class StoreReader:
    """A store folder (or a single store file): lists and opens its recordings."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if self.root.is_file():
            self._paths = [self.root]
        elif self.root.is_dir():
            self._paths = sorted(
                p for p in self.root.rglob("*.parquet") if not p.name.startswith(".")
            )
        else:
            raise DataError(self.root, "no such store (neither a folder nor a .parquet file)")

    def paths(self) -> list[Path]:
        """Store files, sorted by path (dataset, then recording id)."""
        return list(self._paths)

    def recordings(self) -> list[StoredRecording]:
        """Open every recording (metadata only; signals are read on demand)."""
        return [StoredRecording(p) for p in self._paths]

    def __iter__(self) -> Iterator[StoredRecording]:
        for p in self._paths:
            yield StoredRecording(p)

    def __len__(self) -> int:
        return len(self._paths)

    def get(self, recording_id: str, dataset: str | None = None) -> StoredRecording:
        """The recording with this id (and dataset, when ids repeat across datasets)."""
        found = [
            p for p in self._paths
            if p.stem == recording_id and (dataset is None or p.parent.name == dataset)
        ]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise DataError(self.root, f"{what} recording {recording_id!r} in store")
        return StoredRecording(found[0])

    def iter_batches(
        self, channels: Sequence[str] | None = None, beats: bool = True
    ) -> Iterator[EpochBatch]:
        """Row groups of every recording in turn (recordings lacking a channel are skipped)."""
        for rec in self:
            if channels is not None:
                try:
                    for c in channels:
                        rec.meta.channel(c)
                except DataError:
                    log.debug("%s lacks one of %s; skipped", rec.id, list(channels))
                    continue
            yield from rec.iter_batches(channels, beats)


def open_store(path: Path | str) -> StoreReader:
    """Open a store folder or a single store file."""
    return StoreReader(Path(path))


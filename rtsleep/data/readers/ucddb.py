"""St. Vincent's / UCD sleep apnea database (ucddb): PhysioNet text files and the epoch table.

PhysioNet layout, per record ``ucddbNNN``:
- ``ucddbNNN_stage.txt``: one stage code per line, one line per 30-s epoch from the recording
  start: 0 = W, 1 = REM, 2 = S1, 3 = S2, 4 = S3, 5 = S4 (S3, S4 -> N3), 6 = artifact,
  7 = indeterminate (both unscored).
- ``ucddbNNN_respevt.txt``: a fixed-width table (``Time  Type  PB/CS  Duration  Low  %Drop  Snore
  Arousal ...``); each event line starts with a clock time ``HH:MM:SS`` and a type (``APNEA-O``,
  ``APNEA-C``, ``APNEA-M``, ``HYP-O``, ``HYP-C``, ``HYP-M``), an optional ``PB``/``CS`` flag, then
  the duration in s. Clock times become onsets through the start time in the header of
  ``ucddbNNN.rec`` (EDF); times before the start are after midnight. Without the ``.rec`` the
  events cannot be placed: they are skipped with a warning (stages are still read).
- ``ucddbNNN.rec``: the EDF signals, read when present.

The shared ``epochs.csv`` re-tabulation (``record_id, epoch_id, start_sec, end_sec, sleep_stage,
label, label_binary, n_events, event_types, event_start_sec, event_duration_sec``; stage code 8 =
other, unscored; an empty stage cell is unscored too) holds many records; each is a source
``epochs.csv#ucddbNNN``. An event listed in several epoch rows is one event.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.readers.common import (
    require_file,
    sha256_files,
    split_sub_record,
    sub_record_source,
)
from rtsleep.data.readers.edf import check_edf_file, read_edf
from rtsleep.data.recording import EPOCH_S, Event, EventType, Recording, Stage

log = logging.getLogger(__name__)

UCDDB_STAGES: dict[int, Stage] = {
    0: Stage.W,
    1: Stage.REM,
    2: Stage.N1,
    3: Stage.N2,
    4: Stage.N3,
    5: Stage.N3,
    6: Stage.UNSCORED,
    7: Stage.UNSCORED,
    8: Stage.UNSCORED,
}

UCDDB_EVENTS: dict[str, EventType] = {
    "APNEA-O": EventType.APNEA_OBSTRUCTIVE,
    "APNEA-C": EventType.APNEA_CENTRAL,
    "APNEA-M": EventType.APNEA_MIXED,
    "APNEA": EventType.APNEA,
    "HYP-O": EventType.HYPOPNEA,
    "HYP-C": EventType.HYPOPNEA,
    "HYP-M": EventType.HYPOPNEA,
    "HYP": EventType.HYPOPNEA,
}

EPOCH_TABLE = "epochs.csv"
_STAGE_SUFFIX = "_stage.txt"
_TIME = re.compile(r"^\d{1,2}:\d{2}:\d{2}$")


def list_ucddb_sources(path: Path) -> list[Path]:
    """``*_stage.txt`` files, and ``epochs.csv#<record>`` for records without one, sorted."""
    if not path.exists():
        raise DataError(path, "not found")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stage_files = [p for p in files if p.name.endswith(_STAGE_SUFFIX)]
    have = {p.name[: -len(_STAGE_SUFFIX)] for p in stage_files}
    out = list(stage_files)
    for table in (p for p in files if p.name == EPOCH_TABLE):
        out += [sub_record_source(table, r) for r in _table_records(table) if r not in have]
    if path.is_file() and not out:
        raise DataError(path, f"not a ucddb source (expected *{_STAGE_SUFFIX} or {EPOCH_TABLE})")
    return sorted(out)


def read_ucddb(source: Path, channel_map: ChannelMap | None = None) -> Recording:
    """One ucddb record from ``*_stage.txt`` (+ respevt, + .rec) or ``epochs.csv#<record>``."""
    table, record_id = split_sub_record(source)
    if record_id is not None:
        return _read_table_record(table, record_id, source)
    if not source.name.endswith(_STAGE_SUFFIX):
        raise DataError(source, f"not a ucddb source (expected *{_STAGE_SUFFIX})")
    return _read_physionet(source, channel_map)


# ---------------------------------------------------------------------------------------------
# PhysioNet text files


def read_stage_file(path: Path) -> np.ndarray:
    """Raw ucddb stage codes (int64, one per 30-s epoch) from ``*_stage.txt``."""
    require_file(path)
    tokens = path.read_text(errors="replace").split()
    try:
        codes = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        raise DataError(path, "stage file has a non-integer code") from None
    if codes.size == 0:
        raise DataError(path, "stage file is empty")
    bad = sorted(set(codes.tolist()) - set(UCDDB_STAGES))
    if bad:
        raise DataError(path, f"unknown ucddb stage codes {bad} (expected 0-7)")
    return codes


def map_stages(codes: np.ndarray) -> np.ndarray:
    """ucddb codes -> int8 ``Stage`` values."""
    return np.array([int(UCDDB_STAGES[int(c)]) for c in codes], dtype=np.int8)


def read_respevt(path: Path) -> list[tuple[str, str, float]]:
    """Event rows of ``*_respevt.txt`` as ``(clock time, type, duration_s)``.

    Lines that do not start with a clock time (titles, column headers, blank lines) are skipped;
    a line that starts with one but has no known type or no duration is a ``DataError``.
    """
    require_file(path)
    rows: list[tuple[str, str, float]] = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        tokens = line.split()
        if not tokens or not _TIME.match(tokens[0]):
            continue
        if len(tokens) < 3 or tokens[1].upper() not in UCDDB_EVENTS:
            raise DataError(path, f"line {lineno}: unknown event row {line.strip()!r}")
        rest = tokens[2:]
        if rest and rest[0].upper() in ("PB", "CS"):
            rest = rest[1:]
        try:
            duration = float(rest[0])
        except (ValueError, IndexError):
            raise DataError(path, f"line {lineno}: no event duration in {line.strip()!r}") from None
        if duration < 0:
            raise DataError(path, f"line {lineno}: negative duration {duration}")
        rows.append((tokens[0], tokens[1].upper(), duration))
    return rows


def _edf_start(path: Path) -> datetime:
    check_edf_file(path)
    with open(path, "rb") as fh:
        raw = fh.read(184)
    text = raw[168:184].decode("ascii", errors="replace")
    try:
        return datetime.strptime(text, "%d.%m.%y%H.%M.%S")
    except ValueError:
        raise DataError(path, f"EDF start date/time {text!r} is not dd.mm.yyhh.mm.ss") from None


def clock_to_onset(clock: str, start: datetime) -> float:
    """Seconds from ``start`` to the next occurrence of clock time ``HH:MM:SS`` (same day or after
    midnight)."""
    h, m, s = (int(x) for x in clock.split(":"))
    t = start.replace(hour=h % 24, minute=m, second=s, microsecond=0)
    if t < start:
        t += timedelta(days=1)
    return (t - start).total_seconds()


def _read_physionet(stage_path: Path, channel_map: ChannelMap | None) -> Recording:
    record_id = stage_path.name[: -len(_STAGE_SUFFIX)]
    codes = read_stage_file(stage_path)
    stages = map_stages(codes)
    files = [stage_path]
    rec_path = stage_path.with_name(f"{record_id}.rec")
    resp_path = stage_path.with_name(f"{record_id}_respevt.txt")
    if rec_path.is_file():
        rec = read_edf(rec_path, channel_map, dataset="ucddb", recording_id=record_id,
                       subject=record_id)
        n_signal = int(rec.duration_s // EPOCH_S)
        if len(stages) > n_signal + 1:
            raise DataError(
                stage_path,
                f"{len(stages)} stage epochs but {rec_path.name} holds {n_signal} epochs",
            )
        files.append(rec_path)
    else:
        rec = Recording(id=record_id, dataset="ucddb", subject=record_id, source=stage_path)
    rec.source = stage_path
    rec.stages = stages
    rec.duration_hint_s = len(stages) * EPOCH_S
    if resp_path.is_file():
        files.append(resp_path)
        rows = read_respevt(resp_path)
        if not rec_path.is_file():
            if rows:
                log.warning(
                    "%s: %d respiratory events skipped: no %s for the start time",
                    resp_path, len(rows), rec_path.name,
                )
        else:
            start = _edf_start(rec_path)
            rec.start_time = start
            limit = len(stages) * EPOCH_S
            for clock, etype, duration in rows:
                onset = clock_to_onset(clock, start)
                if onset + duration > limit + EPOCH_S:
                    raise DataError(
                        resp_path,
                        f"event at {clock} ends {onset + duration:.0f} s after the start, past "
                        f"the {limit:.0f} s of scored epochs",
                    )
                rec.events.append(Event(onset, duration, UCDDB_EVENTS[etype], etype))
    rec.source_sha256 = sha256_files(*files)
    return rec


# ---------------------------------------------------------------------------------------------
# epochs.csv re-tabulation


def _read_table(table: Path) -> list[dict[str, str]]:
    require_file(table)
    stat = table.stat()
    return _read_table_cached(str(table.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_table_cached(table_path: str, mtime_ns: int, size: int) -> list[dict[str, str]]:
    # Keyed by mtime and size too, so an edited table is read again.
    table = Path(table_path)
    with open(table, newline="") as fh:
        reader = csv.DictReader(fh)
        needed = {"record_id", "epoch_id", "sleep_stage", "event_types", "event_start_sec",
                  "event_duration_sec"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise DataError(table, f"epoch table lacks columns {sorted(missing)}")
        return list(reader)


def _table_records(table: Path) -> list[str]:
    return sorted({row["record_id"] for row in _read_table(table)})


def table_rows(table: Path, record_id: str) -> list[dict[str, str]]:
    """Rows of one record of ``epochs.csv``, sorted by epoch; ``DataError`` if there are none."""
    rows = [r for r in _read_table(table) if r["record_id"] == record_id]
    if not rows:
        raise DataError(sub_record_source(table, record_id), "no such record in the table")
    try:
        rows.sort(key=lambda r: int(r["epoch_id"]))
    except ValueError:
        raise DataError(table, f"{record_id}: non-integer epoch_id") from None
    return rows


def _read_table_record(table: Path, record_id: str, source: Path) -> Recording:
    rows = table_rows(table, record_id)
    epoch_ids = [int(r["epoch_id"]) for r in rows]
    if epoch_ids != list(range(len(rows))):
        raise DataError(source, "epoch_id is not 0, 1, 2, ... without gaps or repeats")
    try:
        # An empty stage (4 trailing rows of the shared table) is unscored: code 8.
        codes = np.array(
            [int(float(r["sleep_stage"] or 8)) for r in rows], dtype=np.int64
        )
    except ValueError:
        raise DataError(source, "non-numeric sleep_stage") from None
    bad = sorted(set(codes.tolist()) - set(UCDDB_STAGES))
    if bad:
        raise DataError(source, f"unknown ucddb stage codes {bad}")
    stages = map_stages(codes)
    events: dict[tuple[str, float, float], Event] = {}
    limit = len(rows) * EPOCH_S
    for r in rows:
        if not r["event_types"].strip():
            continue
        types = r["event_types"].split(";")
        starts = r["event_start_sec"].split(";")
        durations = r["event_duration_sec"].split(";")
        if not len(types) == len(starts) == len(durations):
            raise DataError(source, f"epoch {r['epoch_id']}: event columns differ in length")
        for t, s, d in zip(types, starts, durations, strict=True):
            etype = t.strip().upper()
            if etype not in UCDDB_EVENTS:
                raise DataError(source, f"epoch {r['epoch_id']}: unknown event type {t!r}")
            onset, duration = float(s), float(d)
            if onset < 0 or duration < 0 or onset + duration > limit + EPOCH_S:
                raise DataError(
                    source, f"event {etype} at {onset:.0f} s does not fit the {limit:.0f} s record"
                )
            events.setdefault((etype, onset, duration),
                              Event(onset, duration, UCDDB_EVENTS[etype], etype))
    return Recording(
        id=record_id,
        dataset="ucddb",
        subject=record_id,
        source=source,
        stages=stages,
        events=sorted(events.values(), key=lambda e: (e.onset_s, e.label)),
        source_sha256=sha256_files(table),
        duration_hint_s=limit,
    )

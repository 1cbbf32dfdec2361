"""slpdb reader: stage and event tokens against SOURCES.md, header work-around, bad input."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import wfdb

from rtsleep.data.errors import DataError
from rtsleep.data.labels import event_counts, stage_counts
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.slpdb import read_slpdb_tokens
from rtsleep.data.recording import EventType


@pytest.fixture(scope="module")
def slpdb(shared_data: Path) -> Path:
    return shared_data / "slpdb-annotations" / "Sleep_MIT_Dataset"


def test_token_counts_equal_sources_md(slpdb: Path) -> None:
    sources = list_sources("slpdb", slpdb)
    assert len(sources) == 18
    stage_tokens: Counter[str] = Counter()
    event_tokens: Counter[str] = Counter()
    n = 0
    for s in sources:
        annotations, _, _ = read_slpdb_tokens(s)
        n += len(annotations)
        for _, tokens in annotations:
            stage_tokens[tokens[0]] += 1
            event_tokens.update(tokens[1:])
    assert n == 10197
    assert stage_tokens == {"W": 3115, "1": 1815, "2": 3887, "3": 483, "4": 181, "R": 700,
                            "MT": 12, "M": 4}
    assert {k: event_tokens[k] for k in ("X", "HA", "OA", "H", "CAA", "CA", "A")} == {
        "X": 1617, "HA": 754, "OA": 616, "H": 272, "CAA": 181, "CA": 56, "A": 33}
    assert event_tokens["L"] + event_tokens["LA"] >= 525


def test_recordings_carry_merged_stages_and_typed_events(slpdb: Path) -> None:
    stages: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for s in list_sources("slpdb", slpdb):
        rec = read_recording("slpdb", s)
        assert rec.stages is not None and rec.channels == []
        stages.update(stage_counts(rec.stages))
        events.update(event_counts(rec.events))
    assert stages["N3"] == 483 + 181 and stages["W"] == 3115 and stages["REM"] == 700
    # 16 movement epochs (MT, M) plus 76 epochs before the first annotation (slp14 6, slp16 26,
    # slp37 2, slp59 22, slp61 20) and 1 after the last (slp66)
    assert stages["UNSCORED"] == 12 + 4 + 77
    assert events[EventType.APNEA_OBSTRUCTIVE.value] == 1617 + 616
    assert events[EventType.HYPOPNEA.value] == 754 + 272
    assert events[EventType.APNEA_CENTRAL.value] == 181 + 56


def test_two_digit_year_header_is_read(slpdb: Path) -> None:
    rec = read_recording("slpdb", slpdb / "slp32.st")
    assert rec.id == "slp32" and rec.n_epochs == 4800000 // 7500


def test_first_annotation_late_leaves_leading_epochs_unscored(slpdb: Path) -> None:
    rec = read_recording("slpdb", slpdb / "slp14.st")  # first annotation at sample 45000
    assert rec.stages is not None
    np.testing.assert_array_equal(rec.stages[:6], [-1] * 6)
    assert rec.stages[6] != -1


def test_event_token_becomes_event_and_arousal(tmp_path: Path) -> None:
    _record(tmp_path, ["W", "2 OA", "3 HA X", "R"])
    rec = read_recording("slpdb", tmp_path / "slp99.st")
    np.testing.assert_array_equal(rec.stages, [0, 2, 3, 4])  # type: ignore[arg-type]
    kinds = sorted((e.onset_s, e.type.value, e.label) for e in rec.events)
    assert kinds == [
        (30.0, "apnea_obstructive", "OA"),
        (60.0, "apnea_obstructive", "X"), (60.0, "arousal", "HA"), (60.0, "arousal", "X"),
        (60.0, "hypopnea", "HA"),
    ]


def _record(folder: Path, notes: list[str], sig_len: int | None = None) -> None:
    fs = 250
    n = sig_len if sig_len is not None else len(notes) * 30 * fs
    (folder / "slp99.hea").write_text(f"slp99 1 {fs} {n}\nslp99.dat 212 200/mV 12 0 0 0 0 ECG\n")
    wfdb.wrann("slp99", "st", np.arange(len(notes)) * 30 * fs + 1, symbol=['"'] * len(notes),
               aux_note=notes, fs=fs, write_dir=str(folder))


def test_annotation_past_the_recording_end_is_an_error(tmp_path: Path) -> None:
    _record(tmp_path, ["W", "2", "2", "W"], sig_len=2 * 30 * 250)
    with pytest.raises(DataError, match="past the recording's 2 epochs"):
        read_recording("slpdb", tmp_path / "slp99.st")


def test_unknown_stage_token_is_an_error(tmp_path: Path) -> None:
    _record(tmp_path, ["W", "Q OA"])
    with pytest.raises(DataError, match="unknown stage token 'Q'"):
        read_recording("slpdb", tmp_path / "slp99.st")


def test_missing_header_is_an_error(slpdb: Path, tmp_path: Path) -> None:
    shutil.copy(slpdb / "slp01a.st", tmp_path / "slp01a.st")
    with pytest.raises(DataError, match="WFDB header not found"):
        read_recording("slpdb", tmp_path / "slp01a.st")

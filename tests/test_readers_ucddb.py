"""ucddb reader: the shared epoch table against SOURCES.md, PhysioNet text files, bad input."""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter
from pathlib import Path

import edfio
import numpy as np
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.labels import event_epoch_flags, stage_counts
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.ucddb import read_respevt, table_rows
from rtsleep.data.recording import EventType, Stage

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def table(shared_data: Path) -> Path:
    return shared_data / "ucddb-epoch-labels" / "epochs.csv"


def test_epoch_table_gives_25_records_with_sources_md_counts(table: Path) -> None:
    sources = list_sources("ucddb", table.parent)
    assert len(sources) == 25 and sources[0].name == "epochs.csv#ucddb002"
    raw: Counter[str] = Counter()
    merged: Counter[str] = Counter()
    n = 0
    for s in sources:
        rec = read_recording("ucddb", s)
        assert rec.dataset == "ucddb" and rec.stages is not None
        n += rec.n_epochs
        merged.update(stage_counts(rec.stages))
        raw.update(r["sleep_stage"] for r in table_rows(table, rec.id))
    assert n == 20793
    assert {k: raw[k] for k in ("0.0", "1.0", "2.0", "3.0", "4.0", "5.0", "8.0")} == {
        "0.0": 4707, "1.0": 3016, "2.0": 3403, "3.0": 6985, "4.0": 673, "5.0": 1990, "8.0": 15}
    assert merged == {"W": 4707, "REM": 3016, "N1": 3403, "N2": 6985, "N3": 673 + 1990,
                      "UNSCORED": 15 + raw[""]}


def test_event_rows_match_the_table_and_events_are_not_duplicated(table: Path) -> None:
    rec = read_recording("ucddb", table.parent / "epochs.csv#ucddb002")
    rows = table_rows(table, "ucddb002")
    flagged = event_epoch_flags(rec.events, rec.n_epochs)
    labelled = np.array([r["label"] == "apnea_hypopnea" for r in rows])
    # Every epoch the table labels apnea_hypopnea holds an event; no event is listed twice.
    assert np.all(flagged[labelled])
    keys = [(e.label, e.onset_s, e.duration_s) for e in rec.events]
    assert len(keys) == len(set(keys)) > 0


def test_event_type_tokens_equal_sources_md(table: Path) -> None:
    tokens: Counter[str] = Counter()
    for s in list_sources("ucddb", table):
        for r in table_rows(table, s.name.split("#")[1]):
            if r["event_types"]:
                tokens.update(t.strip() for t in r["event_types"].split(";"))
    assert tokens == {"HYP-O": 2089, "HYP-C": 1532, "APNEA-C": 464, "APNEA-O": 327,
                      "APNEA-M": 253, "HYP-M": 197}


def _rec_file(path: Path, seconds: int = 300) -> Path:
    rng = np.random.default_rng(0)
    sig = edfio.EdfSignal(rng.normal(0, 20, 128 * seconds), 128.0, label="C3A2",
                          physical_dimension="uV", physical_range=(-500.0, 500.0))
    edf = edfio.Edf([sig], recording=edfio.Recording(startdate=dt.date(2024, 1, 2)),
                    starttime=dt.time(23, 0, 0), data_record_duration=1.0)
    tmp = path.with_suffix(".edf")
    edf.write(tmp)
    tmp.rename(path)
    return path


def _physionet_folder(tmp_path: Path, with_rec: bool = True) -> Path:
    for name in ("ucddb901_stage.txt", "ucddb901_respevt.txt"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    if with_rec:
        _rec_file(tmp_path / "ucddb901.rec")
    return tmp_path / "ucddb901_stage.txt"


def test_physionet_stage_and_respevt_files(tmp_path: Path) -> None:
    stage = _physionet_folder(tmp_path)
    assert list_sources("ucddb", tmp_path) == [stage]
    rec = read_recording("ucddb", stage)
    np.testing.assert_array_equal(rec.stages, [0, 0, 1, 2, 2, 3, 3, 4, -1, -1])  # type: ignore[arg-type]
    assert rec.channels[0].label == "C3A2" and rec.channels[0].modality.value == "EEG"
    got = [(e.onset_s, e.duration_s, e.type, e.label) for e in rec.events]
    assert got == [
        (52.0, 12.0, EventType.HYPOPNEA, "HYP-O"),
        (100.0, 15.0, EventType.APNEA_OBSTRUCTIVE, "APNEA-O"),
        (211.0, 11.0, EventType.APNEA_CENTRAL, "APNEA-C"),
        (245.0, 13.0, EventType.HYPOPNEA, "HYP-M"),
    ]
    assert rec.start_time == dt.datetime(2024, 1, 2, 23, 0, 0)


def test_events_without_the_rec_header_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stage = _physionet_folder(tmp_path, with_rec=False)
    rec = read_recording("ucddb", stage)
    assert rec.events == [] and rec.stages is not None and rec.stages[0] == Stage.W
    assert "4 respiratory events skipped" in caplog.text


def test_respevt_parser_skips_headers_and_rejects_unknown_rows(tmp_path: Path) -> None:
    assert len(read_respevt(FIXTURES / "ucddb901_respevt.txt")) == 4
    bad = tmp_path / "x_respevt.txt"
    bad.write_text("Time Type Duration\n23:00:01   SNORE   12\n")
    with pytest.raises(DataError, match="line 2: unknown event row"):
        read_respevt(bad)


def test_bad_stage_files_and_events_past_the_end_are_errors(tmp_path: Path) -> None:
    stage = _physionet_folder(tmp_path)
    stage.write_text("0\n9\n")
    with pytest.raises(DataError, match="unknown ucddb stage codes \\[9\\]"):
        read_recording("ucddb", stage)
    stage.write_text("0\n0\n")  # 60 s of stages, events up to 258 s
    with pytest.raises(DataError, match="past the 60 s of scored epochs"):
        read_recording("ucddb", stage)


def test_unknown_record_of_the_table_is_an_error(table: Path) -> None:
    with pytest.raises(DataError, match="epochs.csv#ucddb999: no such record"):
        read_recording("ucddb", table.parent / "epochs.csv#ucddb999")

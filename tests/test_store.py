"""The Parquet store: layout, metadata, labels, atomic writes and the streaming reader.

Synthetic recordings here test the mechanics; the real datasets go through the CLI in
``test_cli_ingest.py``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.preprocessing import ChannelPipeline, PreprocessSpec
from rtsleep.data.recording import (
    BeatSeries,
    Channel,
    Event,
    EventType,
    Modality,
    Recording,
    Stage,
)
from rtsleep.data.store import (
    METADATA_KEY,
    ROW_GROUP_EPOCHS,
    STORE_FORMAT_VERSION,
    exg_input,
    open_store,
    recording_to_store,
    write_recording,
)


def _channel(label: str, modality: Modality, sfreq: float, n_epochs: int, seed: int,
             amp: float = 30.0, unit: str = "uV") -> Channel:
    rng = np.random.default_rng(seed)
    return Channel(label, modality, sfreq, unit, rng.normal(0.0, amp, int(sfreq * 30 * n_epochs)))


def _psg(n_epochs: int = 12, extra_seconds: float = 0.0) -> Recording:
    """EEG x2 (200 Hz), EOG (100 Hz), airflow + thorax belt (25 Hz), position (1 Hz, OTHER)."""
    chans = [
        _channel("C3-A1", Modality.EEG, 200.0, n_epochs, 1),
        _channel("C4-A1", Modality.EEG, 200.0, n_epochs, 2),
        _channel("EOG(L)", Modality.EOG, 100.0, n_epochs, 3, amp=60.0),
        _channel("NAF1", Modality.RESP, 25.0, n_epochs, 4, amp=1.0, unit="a.u."),
        _channel("POS", Modality.OTHER, 1.0, n_epochs, 5, amp=1.0, unit=""),
        _channel("VTH", Modality.RESP, 25.0, n_epochs, 6, amp=2.0, unit="a.u."),
    ]
    if extra_seconds:
        for c in chans:
            c.data = np.concatenate([c.data, np.ones(int(extra_seconds * c.sfreq))])
    stages = np.array([0, 0, 1, 2, 2, 2, 3, 3, 4, 4, -1, 2] * (n_epochs // 12 + 1),
                      dtype=np.int8)[:n_epochs]
    return Recording(
        id="night1", dataset="edf", subject="subj1", source=Path("/data/night1.edf"),
        channels=chans, start_time=datetime(2020, 1, 2, 22, 30), stages=stages,
        events=[
            Event(95.0, 12.0, EventType.APNEA_OBSTRUCTIVE),  # epoch 3 only
            Event(29.5, 1.0, EventType.HYPOPNEA),  # 0.5 s in epochs 0 and 1 each
            Event(200.0, 40.0, EventType.AROUSAL),  # epochs 6, 7
            Event(300.0, 0.0, EventType.DESATURATION),  # point event: epoch 10
        ],
        source_sha256="ab" * 32,
    )


def test_store_round_trip_keeps_metadata_labels_and_preprocessed_signals(tmp_path: Path) -> None:
    rec = _psg()
    path, n = write_recording(rec, tmp_path)
    assert path == tmp_path / "edf" / "night1.parquet" and n == 12
    (stored,) = open_store(tmp_path).recordings()
    meta = stored.meta
    assert (meta.recording_id, meta.dataset, meta.subject) == ("night1", "edf", "subj1")
    assert meta.source_sha256 == "ab" * 32 and meta.format_version == STORE_FORMAT_VERSION
    assert meta.start_time == "2020-01-02T22:30:00"
    assert meta.channel_map == {"C3-A1": "EEG", "C4-A1": "EEG", "EOG(L)": "EOG",
                                "NAF1": "RESP", "POS": "OTHER", "VTH": "RESP"}
    assert PreprocessSpec.from_json(json.dumps(meta.preprocess)) == PreprocessSpec.default()
    # The model's inputs: C4-A1 is the preferred EEG derivation; OTHER channels are not stored.
    assert [(c.label, c.role, c.sfreq, c.n_times) for c in meta.channels] == [
        ("C4-A1", "primary", 100.0, 3000), ("EOG(L)", "primary", 100.0, 3000),
        ("NAF1", "primary", 10.0, 300), ("VTH", "extra", 10.0, 300),
    ]
    assert meta.channels[0].source_sfreq == 200.0 and meta.channels[2].source_unit == "a.u."
    batch = stored.read()
    np.testing.assert_array_equal(batch.epoch, np.arange(12))
    np.testing.assert_array_equal(batch.labels["stage"], rec.stages)
    np.testing.assert_array_equal(batch.labels["start_s"], np.arange(12) * 30.0)
    # Stored signal == the channel run through the shared pipeline (chunk-exact), epoch-major.
    spec = PreprocessSpec.default()
    for c in [*rec.channels[1:4], rec.channels[5]]:
        want = ChannelPipeline(spec.for_modality(c.modality), c.sfreq).process(c.data)
        got = batch.signals[c.label]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.reshape(-1), want)


def test_store_event_flags_follow_the_overlap_rule(tmp_path: Path) -> None:
    write_recording(_psg(), tmp_path, min_overlap_s=0.5)
    labels = open_store(tmp_path).get("night1").read_labels()
    assert np.flatnonzero(labels["apnea"]).tolist() == [3]
    assert np.flatnonzero(labels["apnea_obstructive"]).tolist() == [3]
    assert not labels["apnea_central"].any()
    assert np.flatnonzero(labels["hypopnea"]).tolist() == [0, 1]
    assert np.flatnonzero(labels["apnea_hypopnea"]).tolist() == [0, 1, 3]
    assert np.flatnonzero(labels["arousal"]).tolist() == [6, 7]
    assert np.flatnonzero(labels["desaturation"]).tolist() == [10]
    meta = open_store(tmp_path).get("night1").meta
    assert meta.min_overlap_s == 0.5 and meta.event_counts["apnea_obstructive"] == 1


def test_store_selects_channels_by_modality_or_label(tmp_path: Path) -> None:
    write_recording(_psg(), tmp_path)
    stored = open_store(tmp_path).get("night1")
    assert list(stored.read(channels=["EEG"]).signals) == ["C4-A1"]
    assert list(stored.read(channels=["EOG(L)", "RESP"]).signals) == ["EOG(L)", "NAF1"]
    assert stored.read(channels=[]).signals == {}
    with pytest.raises(DataError, match="no stored channel 'EMG'"):
        stored.read(channels=["EMG"])


def test_store_reader_skips_recordings_lacking_a_requested_channel(tmp_path: Path) -> None:
    write_recording(_psg(), tmp_path)
    label_only = Recording(id="hyp", dataset="edf", subject="s", source=Path("/d/hyp.edf"),
                           stages=np.zeros(5, dtype=np.int8))
    write_recording(label_only, tmp_path)
    ids = [b.recording_id for b in open_store(tmp_path).iter_batches(channels=["EEG"])]
    assert ids == ["night1"]
    assert {b.recording_id for b in open_store(tmp_path).iter_batches()} == {"night1", "hyp"}


def test_store_streams_row_groups_of_128_epochs(tmp_path: Path) -> None:
    n = 300
    rng = np.random.default_rng(0)
    rec = Recording(
        id="long", dataset="edf", subject="s", source=Path("/d/long.edf"),
        channels=[Channel("SAO2", Modality.SPO2, 1.0, "%", 95 + rng.normal(0, 1, n * 30))],
        stages=rng.integers(0, 5, n).astype(np.int8),
    )
    write_recording(rec, tmp_path)
    stored = open_store(tmp_path / "edf" / "long.parquet").get("long")
    assert ROW_GROUP_EPOCHS == 128 and stored.row_group_sizes() == [128, 128, 44]
    batches = list(stored.iter_batches())
    assert [len(b) for b in batches] == [128, 128, 44]
    assert batches[1].epoch[0] == 128 and batches[1].signals["SAO2"].shape == (128, 300)
    whole = stored.read()
    np.testing.assert_array_equal(
        np.concatenate([b.signals["SAO2"] for b in batches]), whole.signals["SAO2"]
    )
    np.testing.assert_array_equal(np.concatenate([b.labels["stage"] for b in batches]), rec.stages)


def test_store_signal_columns_are_zstd_byte_split_without_dictionary(tmp_path: Path) -> None:
    path, _ = write_recording(_psg(), tmp_path)
    md = pq.ParquetFile(path).metadata
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            assert col.compression == "ZSTD"
            if col.path_in_schema.startswith("x:"):
                assert not any("DICTIONARY" in e for e in col.encodings), col.encodings
                assert "BYTE_STREAM_SPLIT" in col.encodings
                assert col.statistics is None
    schema = pq.read_schema(path)
    assert schema.field("x:C4-A1").type == pa.list_(pa.float32(), 3000)
    assert schema.field("stage").type == pa.int8()
    assert METADATA_KEY in schema.metadata


def test_store_reports_compressed_bytes_per_column_even_with_dots_in_labels(
    tmp_path: Path,
) -> None:
    rec = _psg()
    rec.channels[2].label = "EOG.L"
    path, _ = write_recording(rec, tmp_path)
    stored = open_store(path).get("night1")
    nbytes = stored.column_nbytes()
    assert set(nbytes) == set(pq.read_schema(path).names)
    assert nbytes["x:EOG.L"] > 12 * 3000  # float32 noise barely compresses
    assert stored.read(channels=["EOG.L"]).signals["EOG.L"].shape == (12, 3000)


def test_store_label_only_recording_has_no_signal_columns(tmp_path: Path) -> None:
    stages = np.array([0, 1, 2, 3, 4, -1, 2], dtype=np.int8)
    rec = Recording(id="hyp", dataset="sleep-edf", subject="s", source=Path("/d/hyp.edf"),
                    stages=stages, events=[Event(65.0, 20.0, EventType.APNEA_CENTRAL)])
    path, n = write_recording(rec, tmp_path)
    assert n == 7
    assert not [c for c in pq.read_schema(path).names if c.startswith("x:")]
    stored = open_store(tmp_path).get("hyp", dataset="sleep-edf")
    assert stored.meta.preprocess is None and stored.meta.has_stages
    labels = stored.read_labels()
    np.testing.assert_array_equal(labels["stage"], stages)
    assert np.flatnonzero(labels["apnea_central"]).tolist() == [2]


def test_store_keeps_beats_and_minute_labels_per_epoch(tmp_path: Path) -> None:
    times = np.array([0.5, 10.0, 29.99, 30.0, 75.0, 119.0, 500.0])
    hr = np.array([1.0, 1.1, 1.2, 1.3, 0.9, 1.05, 1.0])
    rec = Recording(
        id="a01", dataset="apnea-ecg", subject="a01", source=Path("/d/a01.npz"),
        beats=BeatSeries(times, hr), minute_labels=np.array([False, True]),
        duration_hint_s=150.0,  # 5 epochs; the beat at 500 s lies outside
        events=[Event(60.0, 60.0, EventType.APNEA_HYPOPNEA)],
    )
    write_recording(rec, tmp_path)
    batch = open_store(tmp_path).get("a01").read()
    assert [b.tolist() for b in batch.beat_t] == [[0.5, 10.0, 29.99], [30.0], [75.0], [119.0], []]
    assert [b.dtype for b in batch.beat_hr][:1] == [np.float32]
    np.testing.assert_allclose(np.concatenate(batch.beat_hr), hr[:6], rtol=1e-6)
    assert batch.labels["minute_label"].tolist() == [0, 0, 1, 1, -1]
    assert batch.labels["apnea_hypopnea"].tolist() == [False, False, True, True, False]
    assert batch.labels["stage"].tolist() == [Stage.UNSCORED] * 5


def test_store_pads_a_short_hypnogram_and_rejects_scored_epochs_past_the_signal(
    tmp_path: Path,
) -> None:
    rec = _psg(12, extra_seconds=45.0)  # 13 complete epochs of signal
    meta, data = recording_to_store(rec)
    assert meta.n_epochs == 13 and data.stage[-1] == Stage.UNSCORED
    rec.stages = np.concatenate([rec.stages, [2, 2]]).astype(np.int8)
    with pytest.raises(DataError, match="hypnogram has 14 epochs but the signals only 13"):
        recording_to_store(rec)
    rec.stages = np.concatenate([rec.stages[:13], [-1]]).astype(np.int8)
    assert recording_to_store(rec)[0].n_epochs == 13


def test_store_missing_required_modality_is_a_data_error(tmp_path: Path) -> None:
    rec = _psg()
    with pytest.raises(DataError, match=r"night1\.edf: missing required modality EMG"):
        write_recording(rec, tmp_path, require=(Modality.EEG, Modality.EMG))
    assert not any(tmp_path.iterdir())


def test_store_write_failure_leaves_no_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _psg()
    path, _ = write_recording(rec, tmp_path)
    before = path.read_bytes()

    def broken(table: pa.Table, where: Path, **kwargs: object) -> None:
        Path(where).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_recording(rec, tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in (tmp_path / "edf").iterdir()] == ["night1.parquet"]


def test_store_volts_recorded_as_microvolts_is_refused(tmp_path: Path) -> None:
    rec = _psg()
    rec.channels[0].data = rec.channels[0].data * 1e-6  # C3-A1 in V, labelled µV
    rec.channels[1].data = rec.channels[1].data * 1e-6
    with pytest.raises(DataError, match="far too small"):
        write_recording(rec, tmp_path)


def test_store_refuses_files_that_are_not_rtsleep_stores(tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), plain)
    with pytest.raises(DataError, match="not an rtsleep store file"):
        open_store(plain).recordings()
    newer = tmp_path / "newer.parquet"
    meta = json.dumps({"format_version": STORE_FORMAT_VERSION + 1})
    pq.write_table(pa.table({"a": [1]}).replace_schema_metadata({METADATA_KEY: meta}), newer)
    with pytest.raises(DataError, match="format version 2 is not supported"):
        open_store(newer).recordings()
    with pytest.raises(DataError, match="no such store"):
        open_store(tmp_path / "missing")


@pytest.mark.parametrize(("offset", "fill"), [(0, "header"), (200, "payload")])
def test_store_data_page_that_cannot_be_decoded_is_a_data_error_naming_the_file(
    tmp_path: Path, offset: int, fill: str
) -> None:
    """The footer reads, a page does not: a garbled page header, or random bytes in the
    signal values, which only the page checksum can tell (they decompress fine). The error
    must say which file, for the reader of one recording and for the training data index."""
    from offline.data import StoreIndex

    n = 20
    rng = np.random.default_rng(0)
    rec = Recording(
        id="night", dataset="edf", subject="s", source=Path("/d/night.edf"),
        channels=[Channel("C3-A2", Modality.EEG, 100.0, "uV", rng.normal(0, 20, n * 3000))],
        stages=rng.integers(0, 5, n).astype(np.int8),
    )
    write_recording(rec, tmp_path)
    path = tmp_path / "edf" / "night.parquet"
    md = pq.ParquetFile(path).metadata
    cols = [md.row_group(0).column(j) for j in range(md.num_columns)]
    page = next(c for c in cols if "C3-A2" in c.path_in_schema).data_page_offset
    raw = bytearray(path.read_bytes())
    at = page + offset
    raw[at : at + 4000] = (b"\xff" * 4000 if fill == "header"
                           else rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(raw))
    stored = open_store(path).get("night")  # the footer is intact
    with pytest.raises(DataError, match=f"^{path}: damaged Parquet data"):
        stored.read()
    with pytest.raises(DataError, match=f"^{path}: damaged Parquet data"):
        list(stored.iter_batches())
    index = StoreIndex(tmp_path)
    with pytest.raises(DataError, match=f"^{path}: damaged Parquet data"):
        index.sources[0].read_row_group(0, 3000)


def test_store_exg_input_follows_the_model_tensor_contract(tmp_path: Path) -> None:
    rec = _psg()
    write_recording(rec, tmp_path)
    stored = open_store(tmp_path).get("night1")
    batch = next(stored.iter_batches())
    x, mask = exg_input(batch, stored.meta)
    assert x.shape == (12, 4, 3000) and x.dtype == np.float32
    assert mask.tolist() == [True, True, False, False]  # EEG, EOG present; EMG, ECG absent
    np.testing.assert_array_equal(x[:, 0], batch.signals["C4-A1"])
    np.testing.assert_array_equal(x[:, 1], batch.signals["EOG(L)"])
    assert not x[:, 2:].any()
    x_eeg, mask_eeg = exg_input(stored.read(channels=["EEG"]), stored.meta)
    assert mask_eeg.tolist() == [True, False, False, False]
    np.testing.assert_array_equal(x_eeg[:, 0], x[:, 0])

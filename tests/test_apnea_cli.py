"""`rtsleep-train evaluate --task apnea` end to end on real nights (copied to tmp)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from offline.apnea_data import read_apnea_ecg_dir, read_npz_night
from offline.apnea_train import TraceTrainConfig, TrainConfig, night_inputs, train_model
from offline.cli import app
from rtsleep.apnea.ecg_model import save_ecg_model
from rtsleep.data.errors import DataError

torch.set_num_threads(1)
RECORDS = ("a02", "b01", "c03")


@pytest.fixture(scope="module")
def small_folder(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("apnea")
    for r in RECORDS:
        shutil.copy(shared_data / "apnea-ecg-hr" / "train" / f"{r}.npz", d)
    return d


@pytest.fixture(scope="module")
def tiny_model(small_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    nights = read_apnea_ecg_dir(small_folder)
    m = train_model(
        [night_inputs(n) for n in nights],
        TrainConfig(epochs=3, crop_minutes=60),
        TraceTrainConfig(epochs=1),
        {"note": "test"},
    )
    p = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_ecg_model(m, p)
    return p


def test_evaluate_apnea_prints_metrics_and_writes_report(
    small_folder: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--task",
            "apnea",
            "--dataset",
            "apnea-ecg",
            "--data",
            str(small_folder),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    for word in ("accuracy", "sensitivity", "specificity", "AUPRC", "AHI-class agreement"):
        assert word in res.output
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["pooled"]) >= {"accuracy", "sensitivity", "specificity", "auprc", "n_minutes"}
    n_min = sum(len(np.load(small_folder / f"{r}.npz")["apn"]) for r in RECORDS)
    assert rep["pooled"]["n_minutes"] == n_min
    assert [r["id"] for r in rep["recordings"]] == list(RECORDS)
    assert set(rep["variants"]) == {"causal", "noncausal"}
    for fig in rep["figures"]:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_on_a_folder_without_nights_is_a_one_line_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--task",
            "apnea",
            "--dataset",
            "apnea-ecg",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 1
    assert "no Apnea-ECG nights" in res.output


@pytest.mark.parametrize(("name", "qrs", "apn"), [("c03", "qrs", "apn"), ("C03", "QRS", "APN")])
def test_wfdb_layout_reads_the_same_labels(
        shared_data: Path, tmp_path: Path, name: str, qrs: str, apn: str) -> None:
    import wfdb

    night = read_npz_night(shared_data / "apnea-ecg-hr" / "train" / "c03.npz")
    fs = 100
    beats = np.round(night.times_s * fs).astype(int)
    beats = np.unique(beats)
    wfdb.wrann(name, qrs, beats, symbol=["N"] * beats.size, write_dir=str(tmp_path), fs=fs)
    minutes = np.arange(night.labels.size) * 60 * fs
    sym = ["A" if y else "N" for y in night.labels]
    wfdb.wrann(name, apn, minutes, symbol=sym, write_dir=str(tmp_path), fs=fs)
    (w,) = read_apnea_ecg_dir(tmp_path)  # upper-case extensions: the beats are found too
    np.testing.assert_array_equal(w.labels, night.labels)
    assert w.features().shape[0] == night.labels.size


def _evaluate_apnea(data: Path, out: Path, model: Path | None = None):  # type: ignore[no-untyped-def]
    args = ["evaluate", "--task", "apnea", "--dataset", "apnea-ecg", "--data", str(data),
            "--out", str(out)]
    return CliRunner().invoke(app, args + (["--model", str(model)] if model else []))


def test_evaluate_scores_the_readable_nights_and_lists_the_unreadable_one(
    shared_data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """One damaged night in an archive: the others are scored and reported, the bad one is
    named on stderr and in report.json, and the exit status is 1."""
    data = tmp_path / "nights"
    data.mkdir()
    for r in RECORDS[:2]:
        shutil.copy(shared_data / "apnea-ecg-hr" / "train" / f"{r}.npz", data)
    bad = data / "c03.npz"
    bad.write_bytes((shared_data / "apnea-ecg-hr" / "train" / "c03.npz").read_bytes()[:3000])
    res = _evaluate_apnea(data, tmp_path / "o", tiny_model)
    assert res.exit_code == 1, res.output
    assert "1 of 3 recordings could not be read" in res.output and f"{bad}: " in res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["id"] for r in rep["recordings"]] == list(RECORDS[:2])
    assert [f["source"] for f in rep["failed"]] == [str(bad)]


@pytest.mark.parametrize("content", [b"", b"\xff" * 64])
def test_evaluate_with_an_unreadable_apnea_model_is_a_one_line_error(
    small_folder: Path, tmp_path: Path, content: bytes
) -> None:
    model = tmp_path / "broken.safetensors"
    model.write_bytes(content)
    res = _evaluate_apnea(small_folder, tmp_path / "o", model)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{model}: not a readable safetensors file" in res.output
    assert "Traceback" not in res.output


def test_nights_without_plausible_beats_or_read_twice_are_listed_not_scored(
    shared_data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A night in bpm (every beat out of range), one without beats and a second copy of a
    record under another folder were scored as apnea-free nights and counted in the metrics."""
    src = shared_data / "apnea-ecg-hr" / "train"
    data = tmp_path / "nights"
    (data / "again").mkdir(parents=True)
    shutil.copy(src / "a02.npz", data)
    shutil.copy(src / "a02.npz", data / "again")
    with np.load(src / "b01.npz") as d:
        t, hr, apn = d["t"], d["hr"], d["apn"]
    np.savez(data / "x01.npz", t=t, hr=hr * 60.0, apn=apn)  # bpm instead of beats/s
    np.savez(data / "x02.npz", t=np.zeros(0), hr=np.zeros(0), apn=apn[:30])  # no beats
    res = _evaluate_apnea(data, tmp_path / "o", tiny_model)
    assert res.exit_code == 1, res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["id"] for r in rep["recordings"]] == ["a02"]
    errors = {Path(f["source"]).relative_to(data).as_posix(): f["error"] for f in rep["failed"]}
    assert set(errors) == {"again/a02.npz", "x01.npz", "x02.npz"}
    assert "beats per second" in errors["x01.npz"] and "0 of 0 beats" in errors["x02.npz"]
    assert f"is also {data / 'a02.npz'}" in errors["again/a02.npz"]


def test_apnea_train_on_a_damaged_night_is_a_one_line_error(
    shared_data: Path, tmp_path: Path
) -> None:
    src = shared_data / "apnea-ecg-hr" / "train"
    shutil.copy(src / "c03.npz", tmp_path)
    (tmp_path / "c04.npz").write_bytes((src / "c04.npz").read_bytes()[:3000])  # cut short
    out = tmp_path / "m.safetensors"
    res = CliRunner().invoke(app, ["apnea-train", "--data", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 1 and not isinstance(res.exception, DataError)
    assert res.output.strip().splitlines() == [
        f"apnea-train: {tmp_path / 'c04.npz'}: unreadable npz: not a zip archive (damaged or "
        "not an npz file)"]
    assert not out.exists()

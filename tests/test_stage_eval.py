"""Stage evaluation: metrics, offline vs streaming runs, report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from offline.spectral_train import spectral_model_config
from offline.stage_data import StageRecording, is_store, sleep_period
from offline.stage_eval import (
    build_report,
    confusion,
    evaluate_model,
    metrics_from_confusion,
    run_offline,
    run_streaming,
    stage_metrics,
    write_report,
)
from rtsleep.models.sleepnet import SleepNet


def _recording(rid: str, n: int, seed: int) -> StageRecording:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 4, 3000), dtype=np.float32)
    x[:, 0] = rng.normal(size=(n, 3000)).astype(np.float32) * rng.uniform(0.5, 3, size=(n, 1))
    stages = rng.integers(0, 5, size=n)
    stages[1] = -1
    return StageRecording(rid, f"s{rid}", "synthetic", x, np.array([1, 0, 0, 0], bool), stages)


@pytest.fixture(scope="module")
def model() -> SleepNet:
    torch.manual_seed(0)
    return SleepNet(spectral_model_config()).eval()


def test_metrics_equal_sklearn_on_random_labels() -> None:
    rng = np.random.default_rng(1)
    yt, yp = rng.integers(0, 5, 400), rng.integers(0, 5, 400)
    yp[:200] = yt[:200]
    m = stage_metrics(yt, yp)
    assert m["accuracy"] == pytest.approx(accuracy_score(yt, yp))
    assert m["macro_f1"] == pytest.approx(f1_score(yt, yp, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(yt, yp))
    assert m["n_epochs"] == 400


def test_confusion_rows_are_truth_and_absent_class_f1_is_null() -> None:
    cm = confusion(np.array([0, 0, 2]), np.array([0, 2, 2]))
    assert cm[0, 2] == 1 and cm[2, 0] == 0
    m = metrics_from_confusion(cm)
    assert m["per_class_f1"]["N1"] is None
    assert m["per_class_f1"]["W"] == pytest.approx(2 / 3)
    # macro-F1 averages the classes present in truth or prediction only (W and N2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_confusion_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        confusion(np.array([0, 5]), np.array([0, 1]))


def test_streaming_run_equals_offline_run(model: SleepNet) -> None:
    rec = _recording("a", 12, 0)
    off, stream = run_offline(model, rec), run_streaming(model, rec)
    np.testing.assert_array_equal(off.epochs, np.arange(12))
    np.testing.assert_array_equal(off.epochs, stream.epochs)
    np.testing.assert_allclose(off.probs, stream.probs, atol=1e-5)


def test_lookahead_model_emits_every_epoch_once_after_absent_tail_epochs() -> None:
    torch.manual_seed(0)
    m = SleepNet(spectral_model_config(lookahead_epochs=2)).eval()
    rec = _recording("b", 9, 1)
    off, stream = run_offline(m, rec), run_streaming(m, rec)
    for res in (off, stream):
        np.testing.assert_array_equal(res.epochs, np.arange(9))  # 2 absent epochs flush the end
    np.testing.assert_allclose(off.probs, stream.probs, atol=1e-5)
    # the output for epoch 3 is the one produced when epoch 5 arrived: it reads epochs 4 and 5
    x = torch.from_numpy(rec.x[:6])[None]  # (1, 6, M, S)
    mask = torch.from_numpy(np.broadcast_to(rec.mask, (1, 6, 4)).copy())
    with torch.no_grad():
        out, _ = m(x, mask)
    assert int(out.epoch_index[0, 5]) == 3
    np.testing.assert_allclose(off.probs[3], out.stage_probs[0, 5].numpy(), atol=1e-5)


def test_report_pools_recordings_and_skips_unscored(model: SleepNet) -> None:
    recs = [_recording("a", 10, 0), _recording("b", 6, 2)]
    rep = build_report(evaluate_model(model, recs))
    assert rep["pooled"]["n_epochs"] == 9 + 5  # one unscored epoch each
    assert set(rep["modes"]) == {"offline", "streaming"}
    assert rep["modes"]["offline"]["recordings"]["b"]["n_epochs"] == 5
    assert rep["streaming_matches_offline"] is True
    total = np.sum([np.asarray(rep["modes"]["offline"]["recordings"][r]["confusion"])
                    for r in ("a", "b")], axis=0)
    assert total.tolist() == rep["modes"]["offline"]["pooled"]["confusion"]


def test_write_report_writes_json_and_figures(model: SleepNet, tmp_path: Path) -> None:
    recs = [_recording("a", 8, 0)]
    history = {"pretrain_step": [1.0, 2.0], "pretrain_train_loss": [1.5, 1.2],
               "pretrain_val_loss": [1.6, 1.4]}
    rep = write_report(evaluate_model(model, recs), tmp_path / "R", history=history)
    saved = json.loads((tmp_path / "R" / "report.json").read_text())
    assert set(saved["pooled"]) == {"accuracy", "macro_f1", "kappa", "n_epochs"}
    assert saved["pooled"] == rep["pooled"]
    for name in ("hypnogram_a.png", "confusion_offline.png", "confusion_streaming.png",
                 "training_curves.png"):
        assert (tmp_path / "R" / name).read_bytes()[:4] == b"\x89PNG"


def test_is_store_tells_store_from_raw_folder(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "excerpt1.txt").write_text("[C3-A1]\n1\n")
    (tmp_path / "st" / "dreams").mkdir(parents=True)
    (tmp_path / "st" / "dreams" / "excerpt1.parquet").write_bytes(b"")
    assert not is_store(tmp_path / "raw")
    assert is_store(tmp_path / "st")


def test_sleep_period_unscores_the_wake_outside_the_margin_and_keeps_the_input(
    model: SleepNet,
) -> None:
    rec = _recording("w", 12, 3)
    rec.stages = np.array([0, 0, 0, 0, 2, 0, 3, -1, 0, 0, 0, 0])  # last sleep epoch: 6
    got = sleep_period(rec, 1)
    assert got.stages.tolist() == [-1, -1, -1, 0, 2, 0, 3, -1, -1, -1, -1, -1]
    assert rec.stages[0] == 0 and got.x is rec.x  # the input and the original stay
    assert sleep_period(rec, 0).stages.tolist() == [-1] * 4 + [2, 0, 3, -1] + [-1] * 4
    assert sleep_period(rec, 100).stages.tolist() == rec.stages.tolist()
    rec.stages = np.zeros(12, dtype=np.int64)
    assert (sleep_period(rec, 5).stages == -1).all()  # no sleep: nothing scored
    with pytest.raises(ValueError, match="margin_epochs"):
        sleep_period(rec, -1)
    # the model still streams every epoch; only the scored set shrinks
    rec.stages = np.array([0, 0, 0, 0, 2, 0, 3, -1, 0, 0, 0, 0])
    full = build_report(evaluate_model(model, [rec]))
    part = build_report(evaluate_model(model, [sleep_period(rec, 1)]))
    assert full["pooled"]["n_epochs"] == 11 and part["pooled"]["n_epochs"] == 4


def test_evaluate_refuses_feature_files_for_a_model_without_a_spectral_encoder(
    shared_data: Path, tmp_path: Path
) -> None:
    """A one-line error naming the folder, exit 1: only a spectral model reads band powers."""
    from typer.testing import CliRunner

    from offline.cli import app
    from rtsleep.data.preprocessing import PreprocessSpec
    from rtsleep.models.checkpoint import save_model
    from rtsleep.models.sleepnet import SleepNetConfig

    model = tmp_path / "tiny.safetensors"
    save_model(SleepNet(SleepNetConfig.tiny()), model, PreprocessSpec.default())
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "SC4011E0.npz").symlink_to(
        shared_data / "sleep-edf-sc-subset" / "features" / "SC4011E0.npz")
    res = CliRunner().invoke(app, ["evaluate", "--data", str(folder), "--dataset",
                                   "sleep-edf-features", "--model", str(model),
                                   "--out", str(tmp_path / "R")])
    assert res.exit_code == 1
    assert f"{folder}: band-power features need a spectral model" in res.output


def _saved_model_and_excerpts(model: SleepNet, shared_data: Path, tmp_path: Path,
                              excerpts: tuple[int, ...]) -> tuple[Path, Path]:
    """``model`` saved under ``tmp_path``, and a folder of symlinks to those DREAMS excerpts."""
    from rtsleep.data.preprocessing import PreprocessSpec
    from rtsleep.models.checkpoint import save_model

    path = tmp_path / "spectral.safetensors"
    save_model(model, path, PreprocessSpec.default())
    folder = tmp_path / "dreams"
    folder.mkdir()
    for n in excerpts:
        for name in (f"excerpt{n}.txt", f"Hypnogram_excerpt{n}.txt"):
            (folder / name).symlink_to(shared_data / "dreams-spindles" / name)
    return path, folder


def test_evaluation_holds_one_recordings_signals_at_a_time(
    shared_data: Path, tmp_path: Path, model: SleepNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of whole nights must not be loaded at once: when the next recording is read,
    at most the one being scored still holds model input; the report covers them all."""
    import gc

    import offline.stage_data as stage_data
    from offline.stage_eval import evaluate_stage

    path, folder = _saved_model_and_excerpts(model, shared_data, tmp_path, (1, 2, 3))
    holding: list[int] = []
    read = stage_data.read_recording

    def counting_read(dataset: str, source: Path):  # type: ignore[no-untyped-def]
        gc.collect()
        holding.append(sum(1 for o in gc.get_objects()
                           if type(o) is StageRecording and o.x.size > 0))
        return read(dataset, source)

    monkeypatch.setattr(stage_data, "read_recording", counting_read)
    report = evaluate_stage("dreams", folder, path, tmp_path / "R")
    assert len(holding) == 3 and max(holding) <= 1, holding
    assert sorted(report["recordings"]) == ["excerpt1", "excerpt2", "excerpt3"]
    assert report["pooled"]["n_epochs"] == 180


def test_evaluate_scores_the_readable_recordings_and_lists_the_unreadable_one(
    shared_data: Path, tmp_path: Path
) -> None:
    """A truncated excerpt in an archive: the others are scored and reported, the bad one is
    named with its problem on stderr and in report.json, and the exit status is 1."""
    from typer.testing import CliRunner

    from offline.cli import app

    folder = tmp_path / "dreams"
    folder.mkdir()
    for n in (1, 2):
        for name in (f"excerpt{n}.txt", f"Hypnogram_excerpt{n}.txt"):
            (folder / name).symlink_to(shared_data / "dreams-spindles" / name)
    lines = (shared_data / "dreams-spindles" / "excerpt5.txt").read_text().splitlines()
    (folder / "excerpt5.txt").write_text("\n".join(lines[: len(lines) // 2 + 7]) + "\n")
    (folder / "Hypnogram_excerpt5.txt").symlink_to(
        shared_data / "dreams-spindles" / "Hypnogram_excerpt5.txt")
    out = tmp_path / "R"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(folder), "--dataset", "dreams",
                                   "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "(120 epochs, 2 recordings)" in res.output
    assert "1 of 3 recordings could not be read" in res.output
    assert f"{folder / 'excerpt5.txt'}: " in res.output and "not a whole rate" in res.output
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["recordings"]) == ["excerpt1", "excerpt2"]
    assert [f["source"] for f in report["failed"]] == [str(folder / "excerpt5.txt")]


def test_evaluate_on_a_store_equals_the_raw_folder_and_reads_one_recording_at_a_time(
    shared_data: Path, tmp_path: Path, model: SleepNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store written by ingest scores as the raw folder it came from (same readers, same
    preprocessing), each stored recording read only when it is scored."""
    import gc

    from offline.ingest import ingest_paths
    from offline.stage_eval import evaluate_stage
    from rtsleep.data.store import StoredRecording

    path, folder = _saved_model_and_excerpts(model, shared_data, tmp_path, (1, 2, 3))
    store = tmp_path / "store"
    assert not ingest_paths([folder], "dreams", store, progress=False).failed
    raw = evaluate_stage("dreams", folder, path, tmp_path / "R-raw")
    holding: list[int] = []
    read = StoredRecording.read

    def counting_read(self: StoredRecording, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        gc.collect()
        holding.append(sum(1 for o in gc.get_objects()
                           if type(o) is StageRecording and o.x.size > 0))
        return read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StoredRecording, "read", counting_read)
    stored = evaluate_stage("dreams", store, path, tmp_path / "R-store")
    assert len(holding) == 3 and max(holding) <= 1, holding
    assert stored["pooled"] == raw["pooled"] and stored["pooled"]["n_epochs"] == 180
    for rid in ("excerpt1", "excerpt2", "excerpt3"):
        assert stored["recordings"][rid]["offline"] == raw["recordings"][rid]["offline"]


def test_evaluate_on_a_store_skips_and_lists_an_unreadable_store_file(
    shared_data: Path, tmp_path: Path, model: SleepNet
) -> None:
    """A damaged Parquet file in a store is named in the report's ``failed``; the recordings
    beside it are still scored."""
    from offline.ingest import ingest_paths
    from offline.stage_eval import evaluate_stage

    path, folder = _saved_model_and_excerpts(model, shared_data, tmp_path, (1, 2))
    store = tmp_path / "store"
    assert not ingest_paths([folder], "dreams", store, progress=False).failed
    good = sorted(store.rglob("*.parquet"))
    bad = good[0].with_name("excerpt15.parquet")  # sorts between excerpt1 and excerpt2
    bad.write_bytes(good[0].read_bytes()[:5000])
    report = evaluate_stage("dreams", store, path, tmp_path / "R")
    assert sorted(report["recordings"]) == ["excerpt1", "excerpt2"]
    assert [f["source"] for f in report["failed"]] == [str(bad)]
    assert "not a readable Parquet file" in report["failed"][0]["error"]


def test_evaluate_on_feature_files_skips_and_lists_unreadable_ones(
    shared_data: Path, tmp_path: Path, model: SleepNet
) -> None:
    """An empty and a truncated feature file are named with their problem; the good night
    beside them is scored."""
    from offline.stage_eval import evaluate_stage
    from rtsleep.data.preprocessing import PreprocessSpec
    from rtsleep.models.checkpoint import save_model

    path = tmp_path / "spectral.safetensors"
    save_model(model, path, PreprocessSpec.default())
    folder = tmp_path / "features"
    folder.mkdir()
    src = shared_data / "sleep-edf-sc-subset" / "features" / "SC4011E0.npz"
    (folder / "SC4011E0.npz").symlink_to(src)
    (folder / "SC4021E0.npz").write_bytes(b"")
    (folder / "SC4031E0.npz").write_bytes(src.read_bytes()[:4000])
    report = evaluate_stage("sleep-edf-features", folder, path, tmp_path / "R")
    assert sorted(report["recordings"]) == ["SC4011E0"]
    failed = {Path(f["source"]).name: f["error"] for f in report["failed"]}
    assert sorted(failed) == ["SC4021E0.npz", "SC4031E0.npz"]
    assert all("unreadable feature file" in e and "\n" not in e for e in failed.values())


def test_a_reader_error_of_any_kind_on_one_file_does_not_stop_an_evaluation(
    shared_data: Path, tmp_path: Path, model: SleepNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only ``DataError``: an unexpected exception in a reader is reported as one line
    naming the file and its type, and the other recordings are scored."""
    import offline.stage_data as stage_data
    from offline.stage_eval import evaluate_stage

    path, folder = _saved_model_and_excerpts(model, shared_data, tmp_path, (1, 2))
    read = stage_data.read_recording

    def buggy_read(dataset: str, source: Path):  # type: ignore[no-untyped-def]
        if source.name == "excerpt2.txt":
            raise UnboundLocalError("reader bug")
        return read(dataset, source)

    monkeypatch.setattr(stage_data, "read_recording", buggy_read)
    report = evaluate_stage("dreams", folder, path, tmp_path / "R")
    assert sorted(report["recordings"]) == ["excerpt1"]
    assert report["failed"] == [{"source": str(folder / "excerpt2.txt"),
                                 "error": f"{folder / 'excerpt2.txt'}: UnboundLocalError: "
                                          "reader bug"}]


@pytest.mark.parametrize("content", [None, b"\x02" + b"\x00" * 7 + b"{}"])
def test_evaluate_with_a_missing_or_broken_stage_model_is_a_one_line_error(
    shared_data: Path, tmp_path: Path, content: bytes | None
) -> None:
    from typer.testing import CliRunner

    from offline.cli import app

    model = tmp_path / "model.safetensors"
    if content is not None:
        model.write_bytes(content)
    res = CliRunner().invoke(app, ["evaluate", "--data", str(shared_data / "dreams-spindles"),
                                   "--dataset", "dreams", "--model", str(model),
                                   "--out", str(tmp_path / "R")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    line, = res.output.strip().splitlines()
    assert line.startswith(f"{model}: ") and ("cannot read" in line or "not an rtsleep" in line)


def test_evaluate_lists_a_recording_whose_hypnogram_is_missing(
    shared_data: Path, tmp_path: Path, model: SleepNet
) -> None:
    """A signal without its hypnogram in a folder given for evaluation is not scored, and is
    named in the report's ``failed`` (not only a log line with exit status 0)."""
    from offline.stage_eval import evaluate_stage

    path, folder = _saved_model_and_excerpts(model, shared_data, tmp_path, (1, 2))
    (folder / "Hypnogram_excerpt2.txt").unlink()
    report = evaluate_stage("dreams", folder, path, tmp_path / "R")
    assert sorted(report["recordings"]) == ["excerpt1"]
    assert report["failed"] == [{"source": str(folder / "excerpt2.txt"),
                                 "error": f"{folder / 'excerpt2.txt'}: no sleep stages (no "
                                          "hypnogram found for it)"}]


def test_one_night_found_twice_is_scored_once_and_the_copy_listed(
    shared_data: Path, tmp_path: Path, model: SleepNet
) -> None:
    """Two copies of a night (same recording id) in one folder: the report is keyed by id, so
    the second would have replaced the first while the pooled figures counted both."""
    from offline.stage_eval import evaluate_stage
    from rtsleep.data.preprocessing import PreprocessSpec
    from rtsleep.models.checkpoint import save_model

    path = tmp_path / "spectral.safetensors"
    save_model(model, path, PreprocessSpec.default())
    src = shared_data / "sleep-edf-sc-subset" / "features" / "SC4011E0.npz"
    for sub in ("a", "b"):
        (tmp_path / "features" / sub).mkdir(parents=True)
        (tmp_path / "features" / sub / "SC4011E0.npz").symlink_to(src)
    report = evaluate_stage("sleep-edf-features", tmp_path / "features", path, tmp_path / "R")
    assert sorted(report["recordings"]) == ["SC4011E0"]
    n = report["recordings"]["SC4011E0"]["offline"]["n_epochs"]
    assert report["pooled"]["n_epochs"] == n
    assert [f["error"] for f in report["failed"]] == [
        f"{tmp_path / 'features'}: recording id SC4011E0 read a second time (two copies of one "
        "night in the folder?); only the first is scored"]

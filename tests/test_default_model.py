"""The shipped default stage model: loads, matches the preprocessing, streams as it scores
offline on real EEG, and ``evaluate`` writes its report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from offline.stage_data import load_raw
from offline.stage_eval import default_model_path, run_offline, run_streaming
from rtsleep.data.channels import BIPOLAR, REFERENTIAL
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models.checkpoint import load_checkpoint_meta, load_predictor
from rtsleep.models.ensemble import SleepNetEnsemble

MAX_BYTES = 20 * 1024 * 1024


def test_bundled_model_loads_with_the_default_preprocessing() -> None:
    path = default_model_path()
    assert path.stat().st_size <= MAX_BYTES
    model = load_predictor(path, expected_preprocess=PreprocessSpec.default())
    assert isinstance(model, SleepNetEnsemble) and model.n_members == 10
    # five seeds fine-tuned for referential derivations, the same five pre-trained only for
    # bipolar ones
    assert model.groups == (REFERENTIAL,) * 5 + (BIPOLAR,) * 5
    assert model.cfg.encoder == "spectral"
    assert model.cfg.lookahead_epochs == 0  # the daemon publishes each stage without delay
    meta = load_checkpoint_meta(path)
    assert not PreprocessSpec.default().mismatches(meta.preprocess)
    assert meta.card is not None
    licences = " ".join(d["licence"] for d in meta.card["training_data"])
    assert "ODC-By" in licences


def _excerpt_folder(shared_data: Path, tmp_path: Path, n: int) -> Path:
    src = shared_data / "dreams-spindles"
    folder = tmp_path / "dreams"
    folder.mkdir()
    for name in (f"excerpt{n}.txt", f"Hypnogram_excerpt{n}.txt"):
        (folder / name).symlink_to(src / name)
    return folder


def test_bundled_model_streams_exactly_as_offline_on_real_eeg(
    shared_data: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    model = load_predictor(default_model_path())
    (rec,) = load_raw("dreams", _excerpt_folder(shared_data, tmp_path, 1), PreprocessSpec.default())
    off, stream = run_offline(model, rec), run_streaming(model, rec)
    assert len(off.epochs) == rec.n_epochs == 60
    np.testing.assert_allclose(off.probs, stream.probs, atol=1e-5)
    np.testing.assert_array_equal(off.probs.argmax(-1), stream.probs.argmax(-1))


def test_evaluate_command_writes_report_for_the_bundled_model(
    shared_data: Path, tmp_path: Path
) -> None:
    from offline.cli import app

    torch.set_num_threads(1)
    data = _excerpt_folder(shared_data, tmp_path, 5)
    out = tmp_path / "REPORT"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--dataset", "dreams",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "kappa" in res.output and "identical" in res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["pooled"]["n_epochs"] == 60
    assert rep["streaming_matches_offline"] is True
    assert rep["modes"]["streaming"]["pooled"] == rep["modes"]["offline"]["pooled"]
    assert (out / "hypnogram_excerpt5.png").is_file()
    assert (out / "confusion_offline.png").is_file()
    assert rep["pooled"]["accuracy"] > 0.4  # a trained model, not chance (5 classes)


def test_evaluate_wake_margin_scores_only_the_sleep_period(shared_data: Path,
                                                           tmp_path: Path) -> None:
    """``--wake-margin-min``: excerpt8 starts with 7 W epochs and ends with 2; one minute (two
    epochs) of margin leaves 60 - 5 - 0 = 55 scored epochs, and --task apnea refuses it."""
    from offline.cli import app

    torch.set_num_threads(1)
    data = _excerpt_folder(shared_data, tmp_path, 8)
    out = tmp_path / "REPORT"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--dataset", "dreams",
                                   "--out", str(out), "--wake-margin-min", "1"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["pooled"]["n_epochs"] == 55 and rep["wake_margin_epochs"] == 2
    assert rep["streaming_matches_offline"] is True
    res = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--dataset", "apnea-ecg",
                                   "--task", "apnea", "--out", str(out),
                                   "--wake-margin-min", "30"])
    assert res.exit_code == 2 and "needs --task stage" in res.output


def test_evaluate_command_fails_cleanly_on_a_missing_folder(tmp_path: Path) -> None:
    from offline.cli import app

    missing = "nope"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / missing), "--dataset",
                                   "dreams", "--out", str(tmp_path / "R")])
    assert res.exit_code != 0
    assert missing in res.output


def test_evaluate_scores_sleep_edf_feature_files_with_the_bipolar_members(
    shared_data: Path, tmp_path: Path
) -> None:
    """``--dataset sleep-edf-features``: every labelled row of the night (SC4011E0: 951, the
    partial night), read as Pz-Oz band powers with the Fpz-Cz ones beside them (the bundled
    model averages the two) and scored by its members for bipolar derivations, streaming
    identical to offline."""
    from offline.cli import app

    torch.set_num_threads(1)
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "SC4011E0.npz").symlink_to(
        shared_data / "sleep-edf-sc-subset" / "features" / "SC4011E0.npz")
    out = tmp_path / "REPORT"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(folder), "--dataset",
                                   "sleep-edf-features", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    night = rep["modes"]["streaming"]["recordings"]["SC4011E0"]
    assert night["eeg_label"] == "EEG Pz-Oz" and night["derivation_group"] == "bipolar"
    assert night["eeg_views"] == ["EEG Fpz-Cz"]  # the bundled model averages both derivations
    assert rep["pooled"]["n_epochs"] == 951
    assert rep["streaming_matches_offline"] is True
    assert rep["max_abs_prob_diff"] < 1e-4


def test_evaluate_on_a_sleep_edf_folder_skips_label_only_hypnograms(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared Sleep-EDF folder holds one PSG (the 5-min excerpt of SC4001E0) and 16
    hypnograms without a PSG: the excerpt is scored (10 epochs), the hypnograms are skipped, and
    one line points at the feature files of those nights."""
    from offline.cli import app

    torch.set_num_threads(1)
    out = tmp_path / "REPORT"
    folder = shared_data / "sleep-edf-sc-subset"
    with caplog.at_level(logging.WARNING, logger="offline.stage_data"):
        res = CliRunner().invoke(app, ["evaluate", "--data", str(folder),
                                       "--dataset", "sleep-edf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    (rec,) = rep["modes"]["offline"]["recordings"].values()
    assert rec["eeg_label"] == "EEG Pz-Oz" and rec["derivation_group"] == "bipolar"
    assert rec["eeg_views"] == ["EEG Fpz-Cz"]
    assert rep["pooled"]["n_epochs"] == 10
    hints = [r.getMessage() for r in caplog.records if "feature files" in r.getMessage()]
    assert hints == [f"{folder}: 16 hypnogram(s) without a PSG skipped; 16 night(s) there exist "
                     "as per-epoch feature files: score them with --dataset sleep-edf-features"]

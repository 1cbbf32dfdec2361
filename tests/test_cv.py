"""Subject-wise cross-validation: fixed recorded split, no test-subject leakage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import offline.cv as cv
from offline.spectral_train import Sequence, TrainConfig, spectral_model_config
from offline.stage_data import StageRecording
from rtsleep.data.readers.dreams import majority_stages
from rtsleep.models.sleepnet import SleepNet


def _recs(fine: bool = False) -> list[StageRecording]:
    rng = np.random.default_rng(0)
    out = []
    for sub in ("c", "a", "d", "b"):
        x = np.zeros((6, 4, 3000), dtype=np.float32)
        x[:, 0] = rng.normal(size=(6, 3000)).astype(np.float32)
        codes = rng.integers(0, 5, 36)
        stages = majority_stages(codes, 6, sub).astype(np.int64)
        out.append(StageRecording(f"rec_{sub}", sub, "synthetic", x,
                                  np.array([1, 0, 0, 0], bool), stages,
                                  codes if fine else None, 5.0 if fine else 0.0))
    return out


def test_loso_split_is_sorted_fixed_and_keeps_test_out_of_training() -> None:
    folds = cv.loso_split(["c", "a", "d", "b", "a"], seed=3)
    assert [f["test"] for f in folds] == ["a", "b", "c", "d"]
    assert folds == cv.loso_split(["d", "c", "b", "a"], seed=3)
    for f in folds:
        assert f["test"] not in f["train"] and f["test"] != f["val"]
        assert f["val"] not in f["train"]
        assert sorted([*f["train"], f["val"], f["test"]]) == ["a", "b", "c", "d"]


def test_loso_split_needs_three_subjects() -> None:
    with pytest.raises(ValueError, match=">= 3 subjects"):
        cv.loso_split(["a", "b"], seed=0)


def test_run_loso_never_shows_the_test_subject_to_training_or_selection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[set[str], set[str]]] = []

    def fake_finetune(model: SleepNet, train: list[Sequence], val: list[Sequence] | None,
                      cfg: TrainConfig, rehearsal: list[Sequence] | None = None,
                      ) -> tuple[SleepNet, int]:
        seen.append(({s.subject for s in train}, {s.subject for s in val or []}))
        return model, 0

    monkeypatch.setattr(cv, "finetune", fake_finetune)
    torch.manual_seed(0)
    evals, folds = cv.run_loso(SleepNet(spectral_model_config()).eval(), _recs(), seed=1)
    assert len(seen) == 4
    for (train, val), fold in zip(seen, folds, strict=True):
        assert fold["test"] not in train | val
        assert val == {fold["val"]}
    assert sorted(ev.rec.subject for ev in evals) == ["a", "b", "c", "d"]


def test_write_cv_records_split_seed_and_both_modes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SleepNet(spectral_model_config()).eval()
    evals, folds = cv.run_loso(model, _recs(), seed=2, steps=2)
    res = cv.write_cv(evals, folds, tmp_path, seed=2, steps=2)
    saved = json.loads((tmp_path / "cv.json").read_text())
    assert saved["seed"] == 2 and saved["folds"] == "loso"
    assert [f["test"] for f in saved["split"]] == ["a", "b", "c", "d"]
    assert all(0 <= f["best_step"] <= 2 for f in saved["split"])
    assert set(saved["modes"]) == {"offline", "streaming"}
    assert saved["pooled"]["n_epochs"] == 24 == res["pooled"]["n_epochs"]
    assert (tmp_path / "report.json").is_file()


def test_shifted_grids_train_but_never_validate_nor_reach_the_test_subject_and_folds_rehearse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[list[str], list[str], list[str]]] = []
    real = cv.finetune

    def spy(model: SleepNet, train: list[Sequence], val: list[Sequence] | None,
            cfg: TrainConfig, rehearsal: list[Sequence] | None = None) -> tuple[SleepNet, int]:
        calls.append(([s.id for s in train], [s.id for s in val or []],
                      [s.id for s in rehearsal or []]))
        return real(model, train, val, cfg, rehearsal)

    monkeypatch.setattr(cv, "finetune", spy)
    torch.manual_seed(0)
    model = SleepNet(spectral_model_config()).eval()
    tmpl = TrainConfig(batch=2, min_len=3, max_len=5, eval_every=1,  # tiny and fast
                       rehearsal_fraction=0.5)
    old = [Sequence("night", "other", torch.randn(40, 2, 4), torch.randint(0, 5, (40,)))]
    evals, folds = cv.run_loso(model, _recs(fine=True), seed=1, steps=1, shift_s=5.0,
                               template=tmpl, rehearsal=old)
    assert len(calls) == len(folds) == 4
    for (train, val, rehearsed), fold in zip(calls, folds, strict=True):
        assert rehearsed == ["night"]  # every fold rehearses the earlier phase's data
        shifts = ["", "@5s", "@10s", "@15s", "@20s", "@25s"]
        assert sorted(train) == sorted(f"rec_{s}{k}" for s in fold["train"] for k in shifts)
        assert val == [f"rec_{fold['val']}"]  # validation: its own grid only
    assert sorted(ev.rec.id for ev in evals) == ["rec_a", "rec_b", "rec_c", "rec_d"]


def test_mean_evals_averages_member_probabilities_per_recording_and_mode() -> None:
    torch.manual_seed(0)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SleepNet(spectral_model_config()).eval()
        runs.append(cv.evaluate_model(model, _recs()[:2]))
    mean = cv.mean_evals(runs)
    assert [ev.rec.id for ev in mean] == ["rec_c", "rec_a"]
    for i, ev in enumerate(mean):
        for mode in ("offline", "streaming"):
            want = (runs[0][i].runs[mode].probs + runs[1][i].runs[mode].probs) / 2
            np.testing.assert_allclose(ev.runs[mode].probs, want, atol=1e-7)
            np.testing.assert_array_equal(ev.runs[mode].epochs, runs[0][i].runs[mode].epochs)
    with pytest.raises(ValueError, match="differ"):
        cv.mean_evals([runs[0], list(reversed(runs[1]))])


def test_cv_checks_its_report_folder_and_steps_before_training_any_fold(
    shared_data: Path, tmp_path: Path
) -> None:
    """Not after hours of folds: an --out that is a file fails at once, naming it, and zero
    steps would give a report that looks complete but trained nothing."""
    from typer.testing import CliRunner

    from offline.cli import app

    taken = tmp_path / "report"
    taken.write_text("not a folder")
    args = ["cv", "--folds", "loso", "--data", str(shared_data / "dreams-spindles"),
            "--dataset", "dreams", "--pretrained", str(tmp_path / "none.safetensors")]
    res = CliRunner().invoke(app, [*args, "--out", str(taken)])
    assert res.exit_code == 1 and str(taken) in res.output and "exists" in res.output.lower()
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "R"), "--steps", "0"])
    assert res.exit_code == 2 and "--steps must be >= 1, got 0" in res.output

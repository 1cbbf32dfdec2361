"""``rtsleep-train cv --folds loso``: subject-wise cross-validation of the stage model.

Protocol (fixed and recorded in ``OUT/cv.json``):

- subjects are sorted; fold ``i`` tests subject ``i`` (leave one subject out);
- in each fold one *training* subject, drawn with ``numpy.random.default_rng(seed)``, is the inner
  validation set; the fine-tuning step count is chosen on it (step 0, i.e. the pre-trained model
  unchanged, is a candidate). The test subject is never seen by training or model selection;
- the pre-trained starting point comes from data disjoint from the CV dataset (the Sleep-EDF
  feature nights), so it leaks nothing either;
- every test recording is scored offline and streaming by its fold's model, and the figures are
  pooled over all folds (``OUT/report.json``, same layout as ``evaluate``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from offline.spectral_train import Sequence, TrainConfig, finetune, raw_sequence
from offline.stage_data import StageRecording
from offline.stage_eval import RecordingEval, evaluate_model, write_report
from rtsleep.models.sleepnet import SleepNet

log = logging.getLogger(__name__)


def finetune_config(seed: int = 0, steps: int = 150) -> TrainConfig:
    """Fine-tuning on raw staged EEG: short crops of 30-s epochs, gentle learning rate."""
    return TrainConfig(
        steps=steps, batch=32, lr=2e-4, min_len=20, max_len=60, gain_log=0.5,
        band_log_std=0.2, noise_std=0.1, eval_every=25, seed=seed,
    )


def loso_split(subjects: list[str], seed: int) -> list[dict[str, Any]]:
    """Folds over the sorted unique ``subjects``: ``{"test", "val", "train"}`` per fold."""
    subs = sorted(set(subjects))
    if len(subs) < 3:
        raise ValueError(f"LOSO with an inner validation subject needs >= 3 subjects, got {subs}")
    rng = np.random.default_rng(seed)
    folds = []
    for test in subs:
        rest = [s for s in subs if s != test]
        val = rest[int(rng.integers(len(rest)))]
        folds.append({"test": test, "val": val, "train": [s for s in rest if s != val]})
    return folds


def run_loso(
    pretrained: SleepNet, recs: list[StageRecording], seed: int = 0, steps: int = 150
) -> tuple[list[RecordingEval], list[dict[str, Any]]]:
    """Fine-tune ``pretrained`` per fold and score each fold's test recordings in both modes.

    Returns the evaluations (all folds) and the folds with their chosen step counts.
    """
    seqs: dict[str, Sequence] = {
        r.id: raw_sequence(pretrained, r.id, r.subject, r.x, r.mask, r.stages) for r in recs
    }
    folds = loso_split([r.subject for r in recs], seed)
    evals: list[RecordingEval] = []
    for i, fold in enumerate(folds):
        train = [seqs[r.id] for r in recs if r.subject in fold["train"]]
        val = [seqs[r.id] for r in recs if r.subject == fold["val"]]
        cfg = finetune_config(seed=seed + i, steps=steps)
        model, best_step = finetune(pretrained, train, val, cfg)
        fold["best_step"] = best_step
        fold["history"] = cfg.history
        test = [r for r in recs if r.subject == fold["test"]]
        evals.extend(evaluate_model(model, test))
        log.info("fold %d (test %s, val %s): chose step %d", i, fold["test"], fold["val"],
                 best_step)
    return evals, folds


def write_cv(
    evals: list[RecordingEval], folds: list[dict[str, Any]], out: Path, seed: int, steps: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``out/report.json`` + figures (pooled over folds) and ``out/cv.json`` (split and results)."""
    info = {"folds": "loso", "seed": seed, "finetune": asdict(finetune_config(seed, steps)),
            **(extra or {})}
    info["finetune"].pop("history", None)
    report = write_report(evals, out, extra={"cv": info})
    cv = {
        **info,
        "split": [{k: f[k] for k in ("test", "val", "train", "best_step")} for f in folds],
        "pooled": report["pooled"],
        "modes": {m: report["modes"][m]["pooled"] for m in report["modes"]},
        "streaming_matches_offline": report["streaming_matches_offline"],
        "recordings": report["recordings"],
    }
    (Path(out) / "cv.json").write_text(json.dumps(cv, indent=2) + "\n")
    return cv


def register(app: typer.Typer) -> None:
    """Add ``cv`` to the offline CLI."""

    @app.command("cv")
    def cv(
        data: Annotated[Path, typer.Option(help="Staged recordings: raw dataset folder or store.")],
        out: Annotated[Path, typer.Option(help="Output folder (cv.json, report.json, PNGs).")],
        pretrained: Annotated[
            Path,
            typer.Option(help="Pre-trained spectral model (never trained on DATA), e.g. "
                         "OUT/pretrained.safetensors of train-default."),
        ],
        dataset: Annotated[str, typer.Option(help="Dataset layout of DATA.")] = "dreams",
        folds: Annotated[str, typer.Option(help="Fold scheme; only 'loso'.")] = "loso",
        steps: Annotated[int, typer.Option(help="Fine-tuning steps per fold (max).")] = 150,
        seed: Annotated[int, typer.Option(help="Seed of the inner split and training.")] = 0,
    ) -> None:
        """Leave-one-subject-out CV of fine-tuning PRETRAINED on DATA; prints pooled figures."""
        from offline.stage_data import load_stage_recordings
        from rtsleep.data.errors import DataError
        from rtsleep.models.checkpoint import load_checkpoint_meta, load_model

        if folds != "loso":
            raise typer.BadParameter(f"--folds {folds!r}: only 'loso' is implemented")
        path = pretrained
        try:
            meta = load_checkpoint_meta(path)
            model = load_model(path)
            if model.cfg.encoder != "spectral":
                raise ValueError(f"{path}: cv fine-tunes spectral models only")
            recs = load_stage_recordings(data, dataset, meta.preprocess)
        except (DataError, ValueError) as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
        evals, fold_info = run_loso(model, recs, seed=seed, steps=steps)
        res = write_cv(evals, fold_info, out, seed, steps, {"pretrained": str(path)})
        for mode, p in res["modes"].items():
            typer.echo(f"{mode:>9}: accuracy {p['accuracy']:.4f}  macro-F1 {p['macro_f1']:.4f}  "
                       f"kappa {p['kappa']:.4f}  ({p['n_epochs']} epochs)")
        typer.echo(f"cv: {out / 'cv.json'}")


__all__ = ["finetune_config", "loso_split", "register", "run_loso", "write_cv"]

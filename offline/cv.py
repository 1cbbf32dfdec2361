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

import dataclasses
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from offline.spectral_train import Sequence, TrainConfig, finetune, raw_sequence
from offline.stage_data import StageRecording, shifted_grids, stage_fractions
from offline.stage_eval import ModeResult, RecordingEval, evaluate_model, write_report
from rtsleep.models.sleepnet import SleepNet

log = logging.getLogger(__name__)


SHIFT_S = 5.0
"""Training subjects also contribute their 30-s grids shifted by 5, 10, ... 25 s (DREAMS scores
5-s epochs; :func:`offline.stage_data.shifted_grids`): 6x the fine-tuning sequences."""


def finetune_config(seed: int = 0, steps: int = 150) -> TrainConfig:
    """Fine-tuning on raw staged EEG: short crops of 30-s epochs, gentle learning rate, class
    weights ``frequency ** -1`` (:mod:`offline.spectral_train` says what the clip makes of them).
    """
    return TrainConfig(
        steps=steps, batch=32, lr=2e-4, min_len=20, max_len=60, gain_log=0.5,
        band_log_std=0.2, noise_std=0.1, eval_every=25, class_weight_power=1.0, seed=seed,
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


def training_sequences(model: SleepNet, recs: list[StageRecording],
                       shift_s: float = 0.0) -> list[Sequence]:
    """Fine-tuning sequences of ``recs``: each recording's own grid plus, with ``shift_s > 0``,
    its grids shifted by multiples of ``shift_s`` (:func:`offline.stage_data.shifted_grids`)."""
    out = []
    for r in recs:
        for g in [r, *(shifted_grids(r, shift_s) if shift_s > 0 else [])]:
            out.append(raw_sequence(model, g.id, g.subject, g.x, g.mask, g.stages,
                                    stage_fractions(g)))
    return out


def run_loso(
    pretrained: SleepNet, recs: list[StageRecording], seed: int = 0, steps: int = 150,
    shift_s: float = SHIFT_S, template: TrainConfig | None = None,
    rehearsal: list[Sequence] | None = None,
) -> tuple[list[RecordingEval], list[dict[str, Any]]]:
    """Fine-tune ``pretrained`` per fold and score each fold's test recordings in both modes.

    Training subjects contribute their shifted grids too (``shift_s > 0``); the validation
    subject is scored on its own grid only, like the test subject. ``template`` replaces
    :func:`finetune_config` (its ``seed`` and ``steps`` are set per fold); ``rehearsal``
    sequences (disjoint from the CV dataset) are mixed into every fold's training crops
    (``TrainConfig.rehearsal_fraction``).
    Returns the evaluations (all folds) and the folds with their chosen step counts.
    """
    seqs: dict[str, list[Sequence]] = {
        r.id: training_sequences(pretrained, [r], shift_s) for r in recs
    }
    folds = loso_split([r.subject for r in recs], seed)
    evals: list[RecordingEval] = []
    for i, fold in enumerate(folds):
        train = [s for r in recs if r.subject in fold["train"] for s in seqs[r.id]]
        val = [seqs[r.id][0] for r in recs if r.subject == fold["val"]]
        cfg = dataclasses.replace(template or finetune_config(), seed=seed + i, steps=steps,
                                  history={})
        model, best_step = finetune(pretrained, train, val, cfg, rehearsal)
        fold["best_step"] = best_step
        fold["history"] = cfg.history
        test = [r for r in recs if r.subject == fold["test"]]
        evals.extend(evaluate_model(model, test))
        log.info("fold %d (test %s, val %s): chose step %d", i, fold["test"], fold["val"],
                 best_step)
    return evals, folds


def mean_evals(runs: list[list[RecordingEval]]) -> list[RecordingEval]:
    """The evaluations of a seed ensemble from its members' LOSO runs: per recording and mode,
    the mean of the members' probabilities (what ``SleepNetEnsemble`` outputs). Every run must
    hold the same recordings in the same order, with the same emitted epochs."""
    if not runs:
        raise ValueError("mean_evals needs at least one run")
    out = []
    for evs in zip(*runs, strict=True):
        rec = evs[0].rec
        runs_of: dict[str, ModeResult] = {}
        for mode, first in evs[0].runs.items():
            for ev in evs[1:]:
                if ev.rec.id != rec.id or not np.array_equal(ev.runs[mode].epochs, first.epochs):
                    raise ValueError(f"mean_evals: runs differ on recording {rec.id} ({mode})")
            probs = np.mean([ev.runs[mode].probs for ev in evs], axis=0)  # (n, 5)
            runs_of[mode] = ModeResult(probs.astype(np.float32), first.epochs)
        out.append(RecordingEval(rec, runs_of))
    return out


def split_record(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded part of each fold: test and validation subject, training subjects, chosen
    step (what ``cv.json`` keeps of a split)."""
    return [{k: f[k] for k in ("test", "val", "train", "best_step")} for f in folds]


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
        "split": split_record(folds),
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
                         "OUT/pretrained_seedN.safetensors of train-default."),
        ],
        dataset: Annotated[str, typer.Option(help="Dataset layout of DATA.")] = "dreams",
        folds: Annotated[str, typer.Option(help="Fold scheme; only 'loso'.")] = "loso",
        steps: Annotated[int, typer.Option(help="Fine-tuning steps per fold (max).")] = 150,
        seed: Annotated[int, typer.Option(help="Seed of the inner split and training.")] = 0,
        shift_s: Annotated[
            float, typer.Option(help="Also train on 30-s grids shifted by multiples of this "
                                "(s; needs finer source stages, DREAMS 5 s); 0 = off.")
        ] = SHIFT_S,
    ) -> None:
        """Leave-one-subject-out CV of fine-tuning PRETRAINED on DATA; prints pooled figures."""
        from offline.stage_data import load_stage_recordings
        from rtsleep.data.errors import DataError
        from rtsleep.models.checkpoint import load_checkpoint_meta, load_model

        if folds != "loso":
            raise typer.BadParameter(f"--folds {folds!r}: only 'loso' is implemented")
        if steps < 1:
            raise typer.BadParameter(f"--steps must be >= 1, got {steps}")
        path = pretrained
        try:
            # the report folder is checked first: not after hours of folds
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".rtsleep-write-test"
            probe.write_bytes(b"")
            probe.unlink()
            meta = load_checkpoint_meta(path)
            model = load_model(path)
            if model.cfg.encoder != "spectral":
                raise ValueError(f"{path}: cv fine-tunes spectral models only")
            recs = load_stage_recordings(data, dataset, meta.preprocess)
        except (DataError, ValueError, OSError) as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
        evals, fold_info = run_loso(model, recs, seed=seed, steps=steps, shift_s=shift_s)
        try:
            res = write_cv(evals, fold_info, out, seed, steps,
                           {"pretrained": str(path), "shift_s": shift_s})
        except OSError as exc:
            typer.echo(f"{out}: cannot write the report ({exc})", err=True)
            raise typer.Exit(1) from exc
        for mode, p in res["modes"].items():
            typer.echo(f"{mode:>9}: accuracy {p['accuracy']:.4f}  macro-F1 {p['macro_f1']:.4f}  "
                       f"kappa {p['kappa']:.4f}  ({p['n_epochs']} epochs)")
        typer.echo(f"cv: {out / 'cv.json'}")


__all__ = ["SHIFT_S", "finetune_config", "loso_split", "mean_evals", "register", "run_loso",
           "split_record", "training_sequences", "write_cv"]

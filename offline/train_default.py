"""``rtsleep-train train-default``: reproduce the shipped stage model in one command.

``rtsleep-train train-default --data <shared data> --out DIR`` runs, on CPU:

1. pre-training of the spectral model on the Sleep-EDF feature nights
   (``<data>/sleep-edf-sc-subset/features``; subject 07 is its validation set), saved as
   ``DIR/pretrained.safetensors``;
2. leave-one-subject-out CV of fine-tuning on the DREAMS excerpts (``<data>/dreams-spindles``),
   see :mod:`offline.cv`, written to ``DIR/cv/`` (``cv.json``, ``report.json``, figures);
3. the final fine-tuning on every DREAMS excerpt (with its shifted 30-s grids, as in the CV
   folds), stopped at the median-low of the step counts the CV folds chose on their inner
   validation subjects, on the same ``finetune_steps``-long learning-rate schedule (0 = the
   pre-trained model is shipped unchanged);
4. ``DIR/default.safetensors`` with the model card (training data, licences, CV figures,
   training curves) in its metadata. Copy it to ``rtsleep/assets/default.safetensors`` to ship it.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from offline.cv import SHIFT_S, finetune_config, run_loso, training_sequences, write_cv
from offline.spectral_train import (
    TrainConfig,
    finetune,
    load_sleep_edf_features,
    pretrain_sleep_edf,
)
from offline.stage_data import load_raw
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models.checkpoint import save_model

log = logging.getLogger(__name__)

SEDF_FEATURES = Path("sleep-edf-sc-subset") / "features"
DREAMS = Path("dreams-spindles")

TRAINING_DATA = [
    {
        "name": "Sleep-EDF Expanded, sleep-cassette SC4001-SC4072 (16 nights, 8 subjects)",
        "use": "pre-training on per-epoch Welch band powers (Fpz-Cz, Pz-Oz) with hypnograms",
        "licence": "ODC-By 1.0 (cite Kemp et al. 2000, Goldberger et al. 2000)",
    },
    {
        "name": "DREAMS Sleep Spindles DB, excerpts 1, 2, 3, 5, 7, 8 (6 subjects, 30 min each)",
        "use": "LOSO cross-validation and fine-tuning on raw single-channel EEG (C3-A1/Cz-A1)",
        "licence": "CC BY-NC-ND 3.0: research / non-commercial use only",
    },
]


def pretrain_config(seed: int, steps: int) -> TrainConfig:
    """Pre-training on Sleep-EDF feature sequences (crops of 20-240 epochs)."""
    return TrainConfig(steps=steps, batch=32, lr=2e-3, min_len=20, max_len=240, gain_log=1.0,
                       band_log_std=0.3, noise_std=0.1, eval_every=100, seed=seed)


def train_default(
    data: Path, out: Path, pretrain_steps: int = 600, finetune_steps: int = 150, seed: int = 0
) -> dict[str, Any]:
    """Run the whole recipe (module doc); returns the model card."""
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec.default()
    nights = load_sleep_edf_features(Path(data) / SEDF_FEATURES)
    pcfg = pretrain_config(seed, pretrain_steps)
    pre, pre_step = pretrain_sleep_edf(nights, pcfg)
    history = {k: list(v) for k, v in pcfg.history.items()}
    save_model(pre, out / "pretrained.safetensors", spec,
               card={"name": "rtsleep spectral stage model, pre-trained only",
                     "history": history, "pretrain_best_step": pre_step})
    recs = load_raw("dreams", Path(data) / DREAMS, spec)
    evals, folds = run_loso(pre, recs, seed=seed, steps=finetune_steps)
    cv = write_cv(evals, folds, out / "cv", seed, finetune_steps,
                  {"pretrained": str(out / "pretrained.safetensors"), "shift_s": SHIFT_S})
    final_steps = int(statistics.median_low([int(f["best_step"]) for f in folds]))
    model = pre
    if final_steps > 0:
        seqs = training_sequences(pre, recs, SHIFT_S)
        fcfg = dataclasses.replace(finetune_config(seed=seed, steps=finetune_steps),
                                   stop_at=final_steps)
        model, _ = finetune(pre, seqs, None, fcfg)
        history.update(fcfg.history)
    card: dict[str, Any] = {
        "name": "rtsleep default stage model (spectral encoder + causal Mamba)",
        "training_data": TRAINING_DATA,
        "recipe": "rtsleep-train train-default --data <shared data> --out DIR "
                  f"--pretrain-steps {pretrain_steps} --finetune-steps {finetune_steps} "
                  f"--seed {seed}",
        "pretrain_best_step": pre_step,
        "finetune_steps": final_steps,
        "cv": {
            "protocol": "LOSO over the 6 DREAMS subjects (sorted), inner validation subject "
                        f"drawn from the training subjects with seed {seed}",
            "split": cv["split"],
            "pooled": cv["pooled"],
            "modes": cv["modes"],
            "streaming_matches_offline": cv["streaming_matches_offline"],
        },
        "intended_use": "research: real-time 5-class staging from one EEG channel",
        "limits": "trained on 16 Sleep-EDF nights (features) and 3 h of DREAMS EEG; not a "
                  "medical device; REM barely represented in DREAMS",
        "history": history,
    }
    model_id = save_model(model, out / "default.safetensors", spec, card=card)
    card["model_id"] = model_id
    return card


def register(app: typer.Typer) -> None:
    """Add ``train-default`` to the offline CLI."""

    @app.command("train-default")
    def train_default_cmd(
        data: Annotated[Path, typer.Option(help="The shared data folder (SOURCES.md layout).")],
        out: Annotated[Path, typer.Option(help="Output folder.")],
        pretrain_steps: Annotated[int, typer.Option(help="Pre-training steps.")] = 600,
        finetune_steps: Annotated[int, typer.Option(help="Max fine-tuning steps per fold.")] = 150,
        seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    ) -> None:
        """Pre-train, cross-validate and fine-tune the default stage model; writes
        OUT/default.safetensors (copy it to rtsleep/assets/ to ship it)."""
        from rtsleep.data.errors import DataError

        try:
            card = train_default(data, out, pretrain_steps, finetune_steps, seed)
        except DataError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
        for mode, p in card["cv"]["modes"].items():
            typer.echo(f"LOSO {mode:>9}: accuracy {p['accuracy']:.4f}  macro-F1 "
                       f"{p['macro_f1']:.4f}  kappa {p['kappa']:.4f}  ({p['n_epochs']} epochs)")
        typer.echo(f"model: {out / 'default.safetensors'} ({card['model_id'][:12]})")


__all__ = ["TRAINING_DATA", "pretrain_config", "register", "train_default"]

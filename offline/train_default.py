"""``rtsleep-train train-default``: reproduce the shipped stage model in one command.

``rtsleep-train train-default --data <shared data> --out DIR`` runs, on CPU, for each member seed
(``--members N``: seeds ``seed`` ... ``seed + N - 1``; default one):

1. pre-training of the spectral model on the Sleep-EDF feature nights
   (``<data>/sleep-edf-sc-subset/features``, each with ``--wake-margin-epochs`` of the
   recording's wake before and after the sleep period; subject 07 is its validation set), saved as
   ``DIR/pretrained_seed<S>.safetensors``;
2. leave-one-subject-out CV of fine-tuning on the DREAMS excerpts (``<data>/dreams-spindles``),
   see :mod:`offline.cv`, written to ``DIR/cv/`` (``cv.json``, ``report.json``, figures);
3. the final fine-tuning on every DREAMS excerpt (with its shifted 30-s grids, as in the CV
   folds), stopped at the median-low of the step counts the CV folds chose on their inner
   validation subjects, on the same ``finetune_steps``-long learning-rate schedule (0 = the
   pre-trained model is shipped unchanged);
4. ``DIR/default.safetensors``: the model, or with several members their
   :class:`~rtsleep.models.ensemble.SleepNetEnsemble` (CV figures: per fold, the mean of the
   members' fold models, none of which saw the test subject), with the model card (training data,
   licences, CV figures, training curves) in its metadata. Copy it to
   ``rtsleep/assets/default.safetensors`` to ship it.

**Derivation groups** (default; ``--no-bipolar-members`` ships the fine-tuned members alone).
The fine-tuning adapts the members to the referential central derivations of DREAMS (C3-A1,
Cz-A1) and costs them what they had learnt of the bipolar Sleep-EDF derivations (Fpz-Cz,
Pz-Oz): on Sleep-EDF subject 07, Fpz-Cz, whole recordings, 0.748 accuracy against 0.924 with
the pre-trained members (docs/benchmarks.md, "Derivation groups"). So the shipped ensemble holds
both: the fine-tuned members as group ``referential`` (group 0, also used when a label names no
derivation) and models pre-trained only, with the same seeds, as group ``bipolar``; each
recording or bed is scored by the group its EEG label names
(:func:`rtsleep.models.ensemble.route_derivation`). The bipolar members have a pre-training of
their own, ``--bipolar-pretrain-steps`` long (default :data:`BIPOLAR_PRETRAIN_FACTOR` times
``--pretrain-steps``), saved as ``DIR/bipolar_seed<S>.safetensors``: longer than the fine-tuning
base's, which helps Sleep-EDF and would hurt the transfer to DREAMS. The LOSO figures are the
referential group's (every DREAMS excerpt is referential); the bipolar group's are the Sleep-EDF
subject-wise CV (``tools/bench_sleepedf_cv.py --steps 1200``).

``--lookahead K`` trains every phase with an output delay of ``K`` epochs (``SleepNet`` module
doc); the daemon then publishes each epoch's stage ``K`` epochs after it ends.
``--running-epochs N`` gives the encoder its running normalisation (band powers relative to the
stream's own running mean, :mod:`rtsleep.models.spectral`; 0 = none).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from offline.cv import (
    SHIFT_S,
    finetune_config,
    mean_evals,
    run_loso,
    split_record,
    training_sequences,
    write_cv,
)
from offline.spectral_train import (
    Sequence,
    TrainConfig,
    finetune,
    load_sleep_edf_features,
    pretrain_sleep_edf,
)
from offline.stage_data import StageRecording, load_raw
from offline.stage_eval import RecordingEval
from rtsleep.data.channels import BIPOLAR, REFERENTIAL
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models.checkpoint import Predictor, save_model
from rtsleep.models.ensemble import SleepNetEnsemble
from rtsleep.models.sleepnet import SleepNet

log = logging.getLogger(__name__)

SEDF_FEATURES = Path("sleep-edf-sc-subset") / "features"
DREAMS = Path("dreams-spindles")

RUNNING_EPOCHS = 240
"""Running normalisation of the recipe (``--running-epochs``): the cumulative mean of the band
powers over a stream's first 240 epochs (2 h, the longest training crop), then exponential with
weight 1/240. Measured against none and against 480 and 1200 (docs/benchmarks.md): better on the
Sleep-EDF subject-wise CV, on trimmed nights and on whole 20-h recordings, and for the DREAMS
LOSO ensemble."""

WAKE_MARGIN_EPOCHS = 240
"""Pre-training nights keep this many epochs (2 h) of the recording's wake before the first and
after the last sleep epoch (``--wake-margin-epochs``). Against the 60 of the scoring convention
(30 min) it taught the model the evening and morning wake of a whole recording and the running
mean's start in it. Sleep-EDF subject-wise CV, seeds 0 and 1: whole 20-h recordings 0.631 and
0.555 -> 0.901 and 0.897 accuracy, trimmed nights 0.784 and 0.772 -> 0.797 and 0.798; DREAMS LOSO
ensemble 0.742 / 0.466 / 0.500 -> 0.742 / 0.485 / 0.513 (docs/benchmarks.md)."""

BIPOLAR_PRETRAIN_FACTOR = 2
"""The bipolar members' pre-training is this many times as long as the fine-tuning base's
(``--bipolar-pretrain-steps`` sets it directly; 0 = the fine-tuning base, pre-trained for
``--pretrain-steps``, serves as the bipolar member too). The recipe's 1200 against 600 steps,
Sleep-EDF subject-wise CV, seeds 0 and 1: trimmed nights 0.797 and 0.798 -> 0.807 and
0.802 accuracy, whole recordings 0.901 and 0.897 -> 0.914 and 0.907, better on all six figures
with both seeds. The same longer pre-training as the base of the DREAMS fine-tuning lowers the
DREAMS LOSO ensemble (0.742 -> 0.692 accuracy with seeds 0-4, 0.725 -> 0.683 with 5-9), so the
referential members keep the 600-step base (docs/benchmarks.md)."""

PRETRAIN_VAL_SUBJECTS = ("07",)
"""The Sleep-EDF subject that chooses the pre-training step (and is never trained on)."""

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


def _pretrain(
    path: Path, name: str, nights: list[Sequence], seed: int, steps: int, lookahead: int,
    running_epochs: int,
) -> tuple[SleepNet, int, dict[str, list[float]]]:
    """Pre-train on the Sleep-EDF ``nights`` (subject 07 chooses the step) and save the model
    to ``path`` with a card called ``name``. Returns the model, its chosen step and history."""
    cfg = pretrain_config(seed, steps)
    model, best_step = pretrain_sleep_edf(nights, cfg, PRETRAIN_VAL_SUBJECTS,
                                          lookahead_epochs=lookahead,
                                          running_epochs=running_epochs)
    history = {k: list(v) for k, v in cfg.history.items()}
    save_model(model, path, PreprocessSpec.default(),
               card={"name": name, "history": history, "pretrain_best_step": best_step})
    return model, best_step, history


def _train_member(
    out: Path, recs: list[StageRecording], nights: list[Sequence],
    pretrain_steps: int, finetune_steps: int, seed: int, lookahead: int, running_epochs: int,
    rehearsal_fraction: float = 0.0, soft_labels: float = 0.0,
    bipolar_pretrain_steps: int | None = None,
) -> tuple[SleepNet, SleepNet, list[RecordingEval], list[dict[str, Any]], dict[str, Any]]:
    """One member of the recipe: pre-training, LOSO CV and the final fine-tuning with ``seed``,
    then the bipolar member's own pre-training for ``bipolar_pretrain_steps``, saved as
    ``bipolar_seed<S>.safetensors`` (None or ``pretrain_steps``: the fine-tuning base itself).

    Returns the final model, the bipolar (pre-trained only) model, its CV evaluations and folds,
    and its card entries (history, steps).
    """
    pre, pre_step, history = _pretrain(
        out / f"pretrained_seed{seed}.safetensors", "rtsleep spectral stage model, pre-trained "
        "only", nights, seed, pretrain_steps, lookahead, running_epochs)
    # rehearsal: the pre-training nights (not its validation subject) keep being seen
    rehearsal = [n for n in nights if n.subject not in PRETRAIN_VAL_SUBJECTS]
    template = dataclasses.replace(finetune_config(), rehearsal_fraction=rehearsal_fraction,
                                   soft_labels=soft_labels)
    evals, folds = run_loso(pre, recs, seed=seed, steps=finetune_steps, template=template,
                            rehearsal=rehearsal)
    final_steps = int(statistics.median_low([int(f["best_step"]) for f in folds]))
    model = pre
    if final_steps > 0:
        seqs = training_sequences(pre, recs, SHIFT_S)
        fcfg = dataclasses.replace(template, seed=seed, steps=finetune_steps,
                                   stop_at=final_steps, history={})
        model, _ = finetune(pre, seqs, None, fcfg, rehearsal)
        history.update(fcfg.history)
    info = {"seed": seed, "pretrain_best_step": pre_step, "finetune_steps": final_steps,
            "history": history}
    bipolar = pre
    if bipolar_pretrain_steps not in (None, pretrain_steps):
        bipolar, info["bipolar_pretrain_best_step"], _ = _pretrain(
            out / f"bipolar_seed{seed}.safetensors",
            "rtsleep spectral stage model, pre-trained only (bipolar member)", nights, seed,
            bipolar_pretrain_steps, lookahead, running_epochs)
    return model, bipolar, evals, folds, info


def train_default(
    data: Path, out: Path, pretrain_steps: int = 600, finetune_steps: int = 150, seed: int = 0,
    lookahead: int = 0, members: int = 1, running_epochs: int = RUNNING_EPOCHS,
    wake_margin_epochs: int = WAKE_MARGIN_EPOCHS, rehearsal_fraction: float = 0.0,
    bipolar_members: bool = True, soft_labels: float = 0.0,
    bipolar_pretrain_steps: int | None = None,
) -> dict[str, Any]:
    """Run the whole recipe (module doc) for a model with an output delay of ``lookahead``
    epochs and running normalisation over ``running_epochs``, pre-trained on nights with
    ``wake_margin_epochs`` of wake around their sleep period; with ``members > 1`` once per
    seed ``seed, seed + 1, ...`` and the models are shipped as one :class:`SleepNetEnsemble`
    (its CV figures: the mean of the members' fold models). With ``bipolar_members`` models
    pre-trained for ``bipolar_pretrain_steps`` (None: :data:`BIPOLAR_PRETRAIN_FACTOR` times
    ``pretrain_steps``) with the same seeds join the ensemble as the ``bipolar`` derivation
    group (module doc). Returns the model card."""
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    if wake_margin_epochs < 0:
        raise ValueError(f"wake_margin_epochs must be >= 0, got {wake_margin_epochs}")
    if not 0.0 <= rehearsal_fraction < 1.0:
        raise ValueError(f"rehearsal_fraction must be in [0, 1), got {rehearsal_fraction}")
    if not 0.0 <= soft_labels <= 1.0:
        raise ValueError(f"soft_labels must be in [0, 1], got {soft_labels}")
    if bipolar_pretrain_steps is not None and bipolar_pretrain_steps < 0:
        raise ValueError(f"bipolar_pretrain_steps must be >= 0, got {bipolar_pretrain_steps}")
    bipolar_default = BIPOLAR_PRETRAIN_FACTOR * pretrain_steps
    bipolar_steps = bipolar_default if bipolar_pretrain_steps is None else bipolar_pretrain_steps
    bipolar_effective = bipolar_steps or pretrain_steps  # 0: the fine-tuning base
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec.default()
    nights = load_sleep_edf_features(Path(data) / SEDF_FEATURES,
                                     wake_margin_epochs=wake_margin_epochs)
    recs = load_raw("dreams", Path(data) / DREAMS, spec)
    seeds = list(range(seed, seed + members))
    models, bipolar, runs, infos = [], [], [], []
    all_folds: list[list[dict[str, Any]]] = []
    for s in seeds:
        model, bip, evals, folds, info = _train_member(
            out, recs, nights, pretrain_steps, finetune_steps, s, lookahead, running_epochs,
            rehearsal_fraction, soft_labels, bipolar_effective if bipolar_members else None)
        models.append(model)
        bipolar.append(bip)
        runs.append(evals)
        all_folds.append(folds)
        infos.append(info)
        log.info("member seed %d: chose %d fine-tuning steps", s, info["finetune_steps"])
    cv = write_cv(mean_evals(runs), all_folds[0], out / "cv", seed, finetune_steps,
                  {"pretrained": [str(out / f"pretrained_seed{s}.safetensors") for s in seeds],
                   "shift_s": SHIFT_S, "members": seeds, "lookahead_epochs": lookahead,
                   "running_epochs": running_epochs,
                   "wake_margin_epochs": wake_margin_epochs,
                   "rehearsal_fraction": rehearsal_fraction,
                   "soft_labels": soft_labels,
                   "member_splits": [split_record(folds) for folds in all_folds]})
    recipe = (f"rtsleep-train train-default --data <shared data> --out DIR --pretrain-steps "
              f"{pretrain_steps} --finetune-steps {finetune_steps} --seed {seed}")
    if lookahead:
        recipe += f" --lookahead {lookahead}"
    if members > 1:
        recipe += f" --members {members}"
    if running_epochs != RUNNING_EPOCHS:
        recipe += f" --running-epochs {running_epochs}"
    if wake_margin_epochs != WAKE_MARGIN_EPOCHS:
        recipe += f" --wake-margin-epochs {wake_margin_epochs}"
    if rehearsal_fraction:
        recipe += f" --rehearsal {rehearsal_fraction:g}"
    if not bipolar_members:
        recipe += " --no-bipolar-members"
    if soft_labels:
        recipe += f" --soft-labels {soft_labels:g}"
    if bipolar_members and bipolar_steps != bipolar_default:
        recipe += f" --bipolar-pretrain-steps {bipolar_steps}"
    kind = "causal Mamba" if not lookahead else f"Mamba, output delay {lookahead} epoch(s)"
    name = f"rtsleep default stage model (spectral encoder + {kind})"
    card: dict[str, Any] = {
        "name": name if members == 1 else f"{name}, ensemble of {members} seeds",
        "training_data": TRAINING_DATA,
        "recipe": recipe,
        "lookahead_epochs": lookahead,
        "running_epochs": running_epochs,
        "wake_margin_epochs": wake_margin_epochs,
        "rehearsal_fraction": rehearsal_fraction,
        "soft_labels": soft_labels,
        "bipolar_pretrain_steps": bipolar_effective if bipolar_members else None,
        "derivation_groups": (
            {REFERENTIAL: "members fine-tuned on DREAMS (C3-A1, Cz-A1); also for labels that "
                          "name no derivation",
             BIPOLAR: "the same seeds pre-trained only (Sleep-EDF Fpz-Cz, Pz-Oz), for "
                      f"{bipolar_effective} steps"}
            if bipolar_members else None),
        "members": [{k: v for k, v in i.items() if k != "history"} for i in infos],
        "pretrain_best_step": infos[0]["pretrain_best_step"],
        "finetune_steps": infos[0]["finetune_steps"],
        "cv": {
            "protocol": "LOSO over the 6 DREAMS subjects (sorted), inner validation subject "
                        "drawn from the training subjects with each member's seed; "
                        "probabilities averaged over the members' fold models",
            "split": cv["split"],
            "pooled": cv["pooled"],
            "modes": cv["modes"],
            "streaming_matches_offline": cv["streaming_matches_offline"],
        },
        "intended_use": "research: real-time 5-class staging from one EEG channel",
        "limits": "trained on 16 Sleep-EDF nights (features) and 3 h of DREAMS EEG; not a "
                  "medical device; REM barely represented in DREAMS",
        "history": infos[0]["history"],
    }
    shipped: Predictor
    if bipolar_members:
        shipped = SleepNetEnsemble.from_members(
            models + bipolar, [REFERENTIAL] * members + [BIPOLAR] * members)
    else:
        shipped = models[0] if members == 1 else SleepNetEnsemble.from_members(models)
    model_id = save_model(shipped, out / "default.safetensors", spec, card=card)
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
        seed: Annotated[int, typer.Option(help="Seed (of the first member).")] = 0,
        lookahead: Annotated[int, typer.Option(
            help="Output delay in epochs (0: causal, the stage of an epoch as it ends).")] = 0,
        members: Annotated[int, typer.Option(
            help="Seeds in the shipped ensemble (seed, seed + 1, ...).")] = 1,
        running_epochs: Annotated[int, typer.Option(
            help="Running normalisation of the band powers over the stream's first N epochs "
                 "(0: none).")] = RUNNING_EPOCHS,
        wake_margin_epochs: Annotated[int, typer.Option(
            help="Epochs of wake kept before and after each pre-training night's sleep "
                 "period.")] = WAKE_MARGIN_EPOCHS,
        rehearsal: Annotated[float, typer.Option(
            help="Share of the fine-tuning crops drawn from the pre-training nights "
                 "(0: none).")] = 0.0,
        bipolar_members: Annotated[bool, typer.Option(
            help="Ship the pre-trained models too, as the group for bipolar EEG derivations "
                 "(Fpz-Cz, Pz-Oz).")] = True,
        soft_labels: Annotated[float, typer.Option(
            help="Fine-tuning targets mix the 30-s label with this share of the epoch's 5-s "
                 "stage mixture (0: the 30-s labels).")] = 0.0,
        bipolar_pretrain_steps: Annotated[int | None, typer.Option(
            help="Pre-training steps of the bipolar members (default: twice --pretrain-steps; "
                 "0: they are the fine-tuning bases).", show_default=False)] = None,
    ) -> None:
        """Pre-train, cross-validate and fine-tune the default stage model; writes
        OUT/default.safetensors (copy it to rtsleep/assets/ to ship it)."""
        from rtsleep.data.errors import DataError

        try:
            card = train_default(data, out, pretrain_steps, finetune_steps, seed, lookahead,
                                 members, running_epochs, wake_margin_epochs, rehearsal,
                                 bipolar_members, soft_labels, bipolar_pretrain_steps)
        except DataError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
        for mode, p in card["cv"]["modes"].items():
            typer.echo(f"LOSO {mode:>9}: accuracy {p['accuracy']:.4f}  macro-F1 "
                       f"{p['macro_f1']:.4f}  kappa {p['kappa']:.4f}  ({p['n_epochs']} epochs)")
        typer.echo(f"model: {out / 'default.safetensors'} ({card['model_id'][:12]})")


__all__ = ["BIPOLAR_PRETRAIN_FACTOR", "RUNNING_EPOCHS", "TRAINING_DATA", "WAKE_MARGIN_EPOCHS",
           "pretrain_config", "register", "train_default"]

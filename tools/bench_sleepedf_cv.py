"""Subject-wise CV of the spectral pre-training on the Sleep-EDF feature nights in shared data.

For each of the 8 subjects: a fresh spectral model (output delay ``--lookahead`` epochs) is
pre-trained as ``train-default`` does (``offline.train_default.pretrain_config``, no model
selection) on the nights of the other 7 subjects (each with ``--wake-margin-epochs`` of wake
around its sleep period) and scored on both nights of the held-out subject, on both EEG channels
(Fpz-Cz, Pz-Oz), with ``lookahead`` absent epochs after each night's end as in evaluation
(``--running-epochs N``: with the encoder's running normalisation). Scored twice: on nights
trimmed to 30 min of wake around sleep (the usual convention) and on the whole 20-h recordings
(every labelled epoch, hours of daytime wake included). Prints and optionally writes pooled
accuracy / macro-F1 / kappa, per-class F1 and per-subject accuracy.

    python tools/bench_sleepedf_cv.py --out sedf.json   # the shipped recipe; ~16 min on one core
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline.spectral_train import (  # noqa: E402
    Sequence,
    absent_padded,
    fit_standardisation,
    load_sleep_edf_features,
    spectral_model_config,
    stage_logits_from_log_power,
    train_phase,
)
from offline.stage_eval import stage_metrics  # noqa: E402
from offline.train_default import (  # noqa: E402
    RUNNING_EPOCHS,
    SEDF_FEATURES,
    WAKE_MARGIN_EPOCHS,
    pretrain_config,
)
from rtsleep.models.sleepnet import SleepNet  # noqa: E402
from rtsleep.settings import data_dir  # noqa: E402

log = logging.getLogger("bench_sleepedf_cv")


SCORED: dict[str, int | None] = {"trimmed": 60, "whole": None}
"""Scored nights: wake margin (epochs) around the sleep period; None keeps whole recordings."""


def _score(model: SleepNet, nights: list[Sequence], lookahead: int) -> tuple[list[np.ndarray],
                                                                              list[np.ndarray]]:
    """Truth and predictions over ``nights``, both channels each, streamed from the start."""
    yt, yp = [], []
    with torch.no_grad():
        for n in nights:
            for ch in range(n.log_power.shape[1]):
                lp = absent_padded(n.log_power[:, ch], len(n.stages) + lookahead)
                logits = stage_logits_from_log_power(model, lp[None])  # (1, T + k, 5)
                ok = n.stages >= 0
                yt.append(n.stages[ok].numpy())
                yp.append(logits[0, lookahead:][ok].argmax(-1).numpy())
    return yt, yp


def run(data: Path, lookahead: int, seed: int, steps: int, running: int = 0,
        wake_margin: int = WAKE_MARGIN_EPOCHS) -> dict[str, object]:
    """The CV (module doc); returns the figures per scored set."""
    train_nights = load_sleep_edf_features(data / SEDF_FEATURES, wake_margin_epochs=wake_margin)
    scored = {k: load_sleep_edf_features(data / SEDF_FEATURES, wake_margin_epochs=m)
              for k, m in SCORED.items()}
    subjects = sorted({n.subject for n in train_nights})
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {k: ([], []) for k in SCORED}
    per_subject: dict[str, dict[str, float]] = {k: {} for k in SCORED}
    for s in subjects:
        torch.manual_seed(seed)
        model = SleepNet(spectral_model_config(lookahead_epochs=lookahead,
                                               running_epochs=running))
        train = [n for n in train_nights if n.subject != s]
        fit_standardisation(model, train)
        model, _ = train_phase(model, train, None, pretrain_config(seed, steps), "cv")
        for kind, nights in scored.items():
            yt, yp = _score(model, [n for n in nights if n.subject == s], lookahead)
            m = stage_metrics(np.concatenate(yt), np.concatenate(yp))
            per_subject[kind][s] = float(m["accuracy"])
            pooled[kind][0].extend(yt)
            pooled[kind][1].extend(yp)
        log.info("subject %s: accuracy %s", s,
                 ", ".join(f"{k} {v[s]:.3f}" for k, v in per_subject.items()))
    out: dict[str, object] = {"lookahead_epochs": lookahead, "running_epochs": running,
                              "wake_margin_epochs": wake_margin, "seed": seed, "steps": steps}
    for kind, (yt, yp) in pooled.items():
        m = stage_metrics(np.concatenate(yt), np.concatenate(yp))
        out[kind] = {"pooled": {k: m[k] for k in ("accuracy", "macro_f1", "kappa", "n_epochs")},
                     "per_class_f1": m["per_class_f1"],
                     "per_subject_accuracy": per_subject[kind]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--lookahead", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--running-epochs", type=int, default=RUNNING_EPOCHS,
                    help="running normalisation of the band powers (0: none)")
    ap.add_argument("--wake-margin-epochs", type=int, default=WAKE_MARGIN_EPOCHS,
                    help="epochs of wake around each training night's sleep period")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    res = run(args.data, args.lookahead, args.seed, args.steps, args.running_epochs,
              args.wake_margin_epochs)
    text = json.dumps(res, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    log.info("%s", text)


if __name__ == "__main__":
    main()

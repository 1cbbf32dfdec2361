"""Subject-wise CV of the spectral pre-training on the Sleep-EDF feature nights in shared data.

For each of the 8 subjects: a fresh spectral model (output delay ``--lookahead`` epochs) is
pre-trained as ``train-default`` does (``offline.train_default.pretrain_config``, no model
selection) on the nights of the other 7 subjects (each with ``--wake-margin-epochs`` of wake
around its sleep period) and scored on both nights of the held-out subject, on both EEG channels
(Fpz-Cz, Pz-Oz), with ``lookahead`` absent epochs after each night's end as in evaluation
(``--running-epochs N``: with the encoder's running normalisation). Scored twice: on nights
trimmed to 30 min of wake around sleep (the usual convention) and on the whole 20-h recordings
(every labelled epoch, hours of daytime wake included). Prints and optionally writes pooled
accuracy / macro-F1 / kappa, per-class F1 and per-subject accuracy of both channels' predictions
together (each epoch counted twice, the pre-training figure), plus per channel (``channels``:
what a PSG scored on that one derivation gets) and for the mean of the two channels'
probabilities (``channel_mean``).

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


CHANNELS = ("Fpz-Cz", "Pz-Oz")
"""The feature files' EEG channels, in ``Sequence.log_power``'s channel order."""

SCORED: dict[str, int | None] = {"trimmed": 60, "whole": None}
"""Scored nights: wake margin (epochs) around the sleep period; None keeps whole recordings."""


def _score(model: SleepNet, nights: list[Sequence], lookahead: int
           ) -> tuple[list[np.ndarray], list[list[np.ndarray]], list[np.ndarray]]:
    """Truth ``(n,)`` per night, each channel's predictions per night (``[channel][night]``) and
    the argmax of the channels' mean probabilities per night; streamed from the start."""
    yt: list[np.ndarray] = []
    per_ch: list[list[np.ndarray]] = [[] for _ in range(len(CHANNELS))]
    mean: list[np.ndarray] = []
    with torch.no_grad():
        for n in nights:
            ok = n.stages >= 0
            probs = []
            for ch in range(n.log_power.shape[1]):
                lp = absent_padded(n.log_power[:, ch], len(n.stages) + lookahead)
                logits = stage_logits_from_log_power(model, lp[None])  # (1, T + k, 5)
                p = torch.softmax(logits[0, lookahead:][ok], dim=-1)  # (n_ok, 5)
                probs.append(p)
                per_ch[ch].append(p.argmax(-1).numpy())
            yt.append(n.stages[ok].numpy())
            mean.append(torch.stack(probs).mean(0).argmax(-1).numpy())
    return yt, per_ch, mean


def _figures(yt: list[np.ndarray], yp: list[np.ndarray]) -> dict[str, object]:
    m = stage_metrics(np.concatenate(yt), np.concatenate(yp))
    return {"pooled": {k: m[k] for k in ("accuracy", "macro_f1", "kappa", "n_epochs")},
            "per_class_f1": m["per_class_f1"]}


def run(data: Path, lookahead: int, seed: int, steps: int, running: int = 0,
        wake_margin: int = WAKE_MARGIN_EPOCHS) -> dict[str, object]:
    """The CV (module doc); returns the figures per scored set."""
    train_nights = load_sleep_edf_features(data / SEDF_FEATURES, wake_margin_epochs=wake_margin)
    scored = {k: load_sleep_edf_features(data / SEDF_FEATURES, wake_margin_epochs=m)
              for k, m in SCORED.items()}
    subjects = sorted({n.subject for n in train_nights})
    # per scored set: truth, predictions of each channel, of the channels' mean
    truth: dict[str, list[np.ndarray]] = {k: [] for k in SCORED}
    chans: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in CHANNELS] for k in SCORED}
    means: dict[str, list[np.ndarray]] = {k: [] for k in SCORED}
    per_subject: dict[str, dict[str, float]] = {k: {} for k in SCORED}
    for s in subjects:
        torch.manual_seed(seed)
        model = SleepNet(spectral_model_config(lookahead_epochs=lookahead,
                                               running_epochs=running))
        train = [n for n in train_nights if n.subject != s]
        fit_standardisation(model, train)
        model, _ = train_phase(model, train, None, pretrain_config(seed, steps), "cv")
        for kind, nights in scored.items():
            yt, per_ch, mean = _score(model, [n for n in nights if n.subject == s], lookahead)
            both = np.concatenate([np.concatenate(p) for p in per_ch])
            per_subject[kind][s] = float(np.mean(np.concatenate(yt * len(CHANNELS)) == both))
            truth[kind].extend(yt)
            means[kind].extend(mean)
            for c, p in enumerate(per_ch):
                chans[kind][c].extend(p)
        log.info("subject %s: accuracy %s", s,
                 ", ".join(f"{k} {v[s]:.3f}" for k, v in per_subject.items()))
    out: dict[str, object] = {"lookahead_epochs": lookahead, "running_epochs": running,
                              "wake_margin_epochs": wake_margin, "seed": seed, "steps": steps}
    for kind in SCORED:
        yt = truth[kind]
        out[kind] = {
            **_figures(yt * len(CHANNELS), [p for c in chans[kind] for p in c]),
            "per_subject_accuracy": per_subject[kind],
            "channels": {name: _figures(yt, chans[kind][c]) for c, name in enumerate(CHANNELS)},
            "channel_mean": _figures(yt, means[kind]),
        }
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

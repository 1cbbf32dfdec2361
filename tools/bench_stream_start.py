"""How fast a stage model settles after a stream starts: accuracy by epoch position.

The daemon starts every bed's context (recurrent state and running band-power mean) afresh at
hook-up, so the first minutes of a stream are scored with little context. This tool streams each
recording epoch by epoch from its first epoch, as the daemon does
(:func:`offline.stage_eval.run_streaming`), and reports the accuracy of the epochs at positions
``[lo, hi)`` after the start, pooled over the recordings, with the stages the wrong calls went to.

    # the shipped model on the Sleep-EDF feature nights (every night starts in daytime wake)
    python tools/bench_stream_start.py --data ../shared/data/sleep-edf-sc-subset/features \
        --dataset sleep-edf-features
    # on the DREAMS excerpts (they start wherever the excerpt was cut)
    python tools/bench_stream_start.py --data ../shared/data/dreams-spindles --dataset dreams
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline.stage_data import StageRecording, load_stage_recordings  # noqa: E402
from offline.stage_eval import default_model_path, run_streaming  # noqa: E402
from rtsleep.data.labels import Stage  # noqa: E402
from rtsleep.models.checkpoint import load_checkpoint_meta, load_predictor  # noqa: E402

log = logging.getLogger("bench_stream_start")

BOUNDS = (0, 5, 10, 15, 30, 60)
"""Default position bins in epochs after the stream start (0-2.5 min, 2.5-5, 5-7.5, 7.5-15,
15-30)."""


def position_accuracy(
    truth: list[np.ndarray], pred: list[np.ndarray], bounds: tuple[int, ...] = BOUNDS
) -> list[dict[str, Any]]:
    """Per bin ``[bounds[i], bounds[i + 1])`` of epoch positions (0 = first epoch of each
    recording): scored epochs, accuracy, and the counts of the wrong calls by predicted stage.

    ``truth[r]`` and ``pred[r]`` are recording ``r``'s stages and predictions ``(T_r,)`` (truth
    ``< 0`` = unscored, left out)."""
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} truth arrays but {len(pred)} prediction arrays")
    if len(bounds) < 2 or any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"bounds must increase and hold at least two values, got {bounds}")
    out = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        n = right = 0
        wrong: dict[str, int] = {}
        for y, p in zip(truth, pred, strict=True):
            y, p = y[lo:hi], p[lo:hi]
            ok = y >= 0
            n += int(ok.sum())
            right += int((y[ok] == p[ok]).sum())
            for s in p[ok & (y != p)]:
                wrong[Stage(int(s)).name] = wrong.get(Stage(int(s)).name, 0) + 1
        out.append({"from_epoch": lo, "to_epoch": hi, "n_epochs": n,
                    "accuracy": right / n if n else None, "wrong_calls": wrong})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="recordings (raw folder or store)")
    ap.add_argument("--dataset", required=True,
                    help="dataset layout (as for rtsleep-train evaluate)")
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--bounds", default=",".join(map(str, BOUNDS)),
                    help="position bin edges in epochs, comma-separated")
    ap.add_argument("--out", type=Path, default=None, help="write the bins as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    bounds = tuple(int(b) for b in args.bounds.split(","))
    path = args.model or default_model_path()
    meta = load_checkpoint_meta(path)
    model = load_predictor(path)
    recs = load_stage_recordings(args.data, args.dataset, meta.preprocess,
                                 meta.config.eeg_views)
    hi = bounds[-1]
    truth, pred = [], []
    for rec in recs:
        res = run_streaming(model, _head(rec, hi))
        truth.append(rec.stages[res.epochs])
        pred.append(res.probs.argmax(-1))
    bins = position_accuracy(truth, pred, bounds)
    for b in bins:
        acc = "-" if b["accuracy"] is None else f"{b['accuracy']:.3f}"
        log.info("epochs %3d-%3d after the start: accuracy %s over %d epochs; wrong calls %s",
                 b["from_epoch"], b["to_epoch"], acc, b["n_epochs"], b["wrong_calls"])
    if args.out is not None:
        args.out.write_text(json.dumps({"model": str(path), "model_id": meta.model_id,
                                        "data": str(args.data), "recordings": len(recs),
                                        "bins": bins}, indent=1))
    return 0


def _head(rec: StageRecording, n: int) -> StageRecording:
    """``rec`` cut to its first ``n`` epochs (the bins need no more; fine stages dropped)."""
    lp = None if rec.log_power is None else rec.log_power[:n]
    view_x = None if rec.view_x is None else rec.view_x[:, :n]
    view_lp = None if rec.view_log_power is None else rec.view_log_power[:, :n]
    return dataclasses.replace(rec, x=rec.x[:n], stages=rec.stages[:n], log_power=lp,
                               view_x=view_x, view_log_power=view_lp,
                               fine_stages=None, fine_step_s=0.0)


if __name__ == "__main__":
    sys.exit(main())

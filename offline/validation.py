"""Held-out validation during fine-tuning: whole recordings through the model, as the daemon
would score them, and the metric that selects the kept weights.

:func:`predict_source` runs ``SleepNet.forward`` over a recording in chunks with the state carried
(equal to one pass, and to ``step`` epoch by epoch), feeds ``k = lookahead_epochs`` input-free
epochs after the end so every epoch gets an output, and aligns outputs to epochs through
``epoch_index``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from offline.data import RecordingSource, task_targets
from rtsleep.models.sleepnet import SleepNet


def predict_source(
    net: SleepNet, src: RecordingSource, n_times: int, chunk: int = 256
) -> dict[str, np.ndarray]:
    """Per-epoch outputs for all ``n`` epochs of ``src``: ``stage_probs (n, 5)``,
    ``apnea_prob (n,)``, ``hypopnea_prob (n,)`` (float32)."""
    n, k = src.n_epochs, net.cfg.lookahead_epochs
    device = next(net.parameters()).device
    state = net.init_state(1, device=device)
    stage = np.zeros((n, net.cfg.heads.n_outputs), dtype=np.float32)
    apnea = np.zeros(n, dtype=np.float32)
    hypopnea = np.zeros(n, dtype=np.float32)
    mask_row = torch.from_numpy(src.mask)
    with torch.no_grad():
        for start in range(0, n + k, chunk):
            stop = min(start + chunk, n + k)
            x = torch.from_numpy(src.read_epochs(start, stop, n_times))[None].to(device)
            inside = torch.arange(start, stop) < n  # (T,)
            mask = (inside[:, None] & mask_row[None, :])[None].to(device)  # (1, T, M)
            out, state = net(x, mask, state)
            idx = out.epoch_index[0].cpu().numpy()  # (T,)
            ok = (idx >= 0) & (idx < n)
            sel = torch.from_numpy(ok).to(device)
            stage[idx[ok]] = out.stage_probs[0][sel].float().cpu().numpy()
            apnea[idx[ok]] = out.apnea_prob[0][sel].float().cpu().numpy()
            hypopnea[idx[ok]] = out.hypopnea_prob[0][sel].float().cpu().numpy()
    return {"stage_probs": stage, "apnea_prob": apnea, "hypopnea_prob": hypopnea}


def macro_f1(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes present in ``truth`` or ``pred`` (NaN when both are empty)."""
    scores = []
    for c in range(n_classes):
        tp = int(((pred == c) & (truth == c)).sum())
        fp = int(((pred == c) & (truth != c)).sum())
        fn = int(((pred != c) & (truth == c)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def validation_metrics(
    net: SleepNet, sources: Sequence[RecordingSource], task: str, n_times: int
) -> dict[str, float]:
    """Pooled ``accuracy``, ``macro_f1`` and ``n_epochs`` of ``task`` over ``sources``."""
    truths, preds = [], []
    for src in sources:
        target, valid = task_targets(src, task)
        out = predict_source(net, src, n_times)
        if task == "stage":
            pred = out["stage_probs"].argmax(axis=1)
        else:
            pred = (out[f"{task}_prob"] > 0.5).astype(np.int64)
        truths.append(target[valid].astype(np.int64))
        preds.append(pred[valid])
    truth = np.concatenate(truths) if truths else np.zeros(0, dtype=np.int64)
    pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    n_classes = net.cfg.heads.n_outputs if task == "stage" else 2
    acc = float((truth == pred).mean()) if len(truth) else float("nan")
    return {"accuracy": acc, "macro_f1": macro_f1(truth, pred, n_classes),
            "n_epochs": float(len(truth))}

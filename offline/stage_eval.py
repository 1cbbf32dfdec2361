"""Sleep-stage evaluation: metrics, offline and streaming runs, ``REPORT/report.json`` and figures.

Each recording is scored twice by the same model:

- **offline**: ``SleepNet.forward`` over the whole recording (state from zero);
- **streaming**: epoch by epoch through ``SleepNet.step``, as the daemon does.

A model declaring EEG views (``SleepNetConfig.eeg_views``) scores a recording's other
derivations of the set beside its EEG (``StageRecording.view_labels``), one batch row each, and
the stage probabilities are their mean, in both modes, as the daemon does.

The model is a ``SleepNet`` or a ``SleepNetEnsemble`` (same calls). A grouped ensemble scores each
recording with the members of the derivation its EEG label names
(:func:`~rtsleep.models.ensemble.route_derivation`), as the daemon does per bed; the report
names the group per recording. A recording given as band log powers (Sleep-EDF feature files,
``StageRecording.log_power``) is run through ``forward_log_power`` / ``step_log_power``, the
same model after its Welch step.

Outputs are aligned to epochs through ``epoch_index``. A model with a look-ahead of ``k`` epochs
gets ``k`` absent epochs (EEG masked) after the end of the recording, as the daemon feeds it when
a stream ends, so every epoch is emitted. Unscored epochs (stage -1) are left out.

Metrics (classes W, N1, N2, N3, R): accuracy, macro-F1 (mean F1 over the classes present in the
truth or the prediction), Cohen's kappa, per-class F1 (``null`` for a class absent from both),
and the confusion matrix (rows = truth, columns = prediction), per recording and pooled over all
epochs of all recordings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline.failures import Failed, skip_failed
from offline.stage_data import StageRecording
from rtsleep.data.recording import EXG_MODALITIES, STAGE_NAMES, Modality
from rtsleep.models.checkpoint import Predictor
from rtsleep.models.ensemble import route_derivation

log = logging.getLogger(__name__)

N_CLASSES = len(STAGE_NAMES)
MODES = ("offline", "streaming")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts, rows = truth, columns = prediction."""
    yt, yp = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true {yt.shape} and y_pred {yp.shape} differ in shape")
    if yt.size and (min(yt.min(), yp.min()) < 0 or max(yt.max(), yp.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (yt, yp), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, Cohen's kappa, per-class F1 and the matrix from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    truth, pred = cm.sum(1).astype(np.float64), cm.sum(0).astype(np.float64)
    present = (truth + pred) > 0
    denom = truth + pred
    f1 = np.where(present, 2 * tp / np.where(denom > 0, denom, 1.0), np.nan)
    acc = float(tp.sum() / n) if n else float("nan")
    pe = float((truth * pred).sum() / n**2) if n else float("nan")
    kappa = (acc - pe) / (1 - pe) if n and pe < 1 else (1.0 if n else float("nan"))
    return {
        "accuracy": acc,
        "macro_f1": float(np.nanmean(f1)) if present.any() else float("nan"),
        "kappa": float(kappa),
        "n_epochs": n,
        "per_class_f1": {
            name: (None if np.isnan(v) else float(v))
            for name, v in zip(STAGE_NAMES, f1, strict=True)
        },
        "confusion": cm.tolist(),
    }


def stage_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """:func:`metrics_from_confusion` of the labels ``(n,)``."""
    return metrics_from_confusion(confusion(y_true, y_pred))


@dataclass
class ModeResult:
    """Per-epoch output of one run: ``probs (n, 5)`` float32 and ``epochs (n,)`` int64, the epoch
    each row refers to (only rows with ``epochs >= 0``)."""

    probs: np.ndarray
    epochs: np.ndarray
    #: The ensemble derivation group that scored the recording (None: an ungrouped model).
    group: str | None = None


def _fresh_state(model: Predictor, rec: StageRecording) -> tuple[dict[str, torch.Tensor],
                                                                  str | None]:
    """``init_state(R)``, one row per scored EEG derivation (the primary and
    ``rec.view_labels``), pointed at the derivation group of ``rec``'s EEG label."""
    state = model.init_state(1 + len(rec.view_labels))
    return state, route_derivation(model, state, rec.eeg_label)


def _log_power(rec: StageRecording, lookahead: int) -> torch.Tensor:
    """``(R, T + k, n_bands)``: the band log powers of the primary EEG and of each view, then
    ``k`` absent (NaN) rows."""
    if rec.log_power is None:
        raise ValueError(f"{rec.id}: no band log powers")
    lp = torch.from_numpy(np.ascontiguousarray(rec.log_power, dtype=np.float32))[None]  # (1, T, nb)
    if rec.view_labels:
        if rec.view_log_power is None:
            raise ValueError(f"{rec.id}: views {rec.view_labels} without their band log powers")
        views = torch.from_numpy(np.ascontiguousarray(rec.view_log_power, dtype=np.float32))
        lp = torch.cat([lp, views])  # (R, T, nb)
    return torch.cat([lp, lp.new_full((lp.shape[0], lookahead, lp.shape[2]), float("nan"))],
                     dim=1)


def _inputs(rec: StageRecording, lookahead: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (R, T + k, M, S)`` and ``mask (R, T + k, M)``: the recording, once per scored EEG
    derivation (row ``r > 0`` holds view ``r - 1`` in the EEG slot), then ``k = lookahead``
    absent epochs (zeros, all masked)."""
    x = torch.from_numpy(np.ascontiguousarray(rec.x, dtype=np.float32))  # (T, M, S)
    mask = torch.from_numpy(np.broadcast_to(rec.mask, rec.x.shape[:2]).copy())  # (T, M)
    x = torch.cat([x, x.new_zeros((lookahead, *x.shape[1:]))])  # (T + k, M, S)
    mask = torch.cat([mask, mask.new_zeros((lookahead, mask.shape[1]))])  # (T + k, M)
    rows = [x]
    if rec.view_labels:
        if rec.view_x is None:
            raise ValueError(f"{rec.id}: views {rec.view_labels} without their samples")
        eeg = EXG_MODALITIES.index(Modality.EEG)
        for v in np.asarray(rec.view_x, dtype=np.float32):  # (T, S) each
            xv = x.clone()
            xv[: v.shape[0], eeg] = torch.from_numpy(v)
            rows.append(xv)
    return torch.stack(rows), mask.expand(len(rows), *mask.shape)  # (R, T+k, M, S), (R, T+k, M)


@torch.no_grad()
def run_offline(model: Predictor, rec: StageRecording) -> ModeResult:
    """``SleepNet.forward`` over the whole recording from a zero state (one row per scored EEG
    derivation; the stage probabilities are their mean)."""
    state, group = _fresh_state(model, rec)
    if rec.log_power is not None:
        lp = _log_power(rec, model.cfg.lookahead_epochs)
        out, _ = model.forward_log_power(lp, state)  # fields (R, T, ...)
    else:
        x, mask = _inputs(rec, model.cfg.lookahead_epochs)
        out, _ = model(x, mask, state)  # fields (R, T, ...)
    idx = out.epoch_index[0].numpy()
    keep = idx >= 0
    probs = out.stage_probs.float().mean(dim=0).numpy()  # (T, 5)
    return ModeResult(probs[keep], idx[keep], group)


@torch.no_grad()
def run_streaming(model: Predictor, rec: StageRecording) -> ModeResult:
    """``SleepNet.step`` epoch by epoch from ``init_state(R)``, as the daemon runs (one row per
    scored EEG derivation; the stage probabilities are their mean)."""
    state, group = _fresh_state(model, rec)
    probs, idx = [], []
    if rec.log_power is not None:
        lp = _log_power(rec, model.cfg.lookahead_epochs)  # (R, T + k, n_bands)
        outs = (model.step_log_power(lp[:, t], state) for t in range(lp.shape[1]))
    else:
        x, mask = _inputs(rec, model.cfg.lookahead_epochs)
        outs = (model.step(x[:, t], mask[:, t], state) for t in range(x.shape[1]))
    for out in outs:  # fields (R, ...)
        probs.append(out.stage_probs.float().mean(dim=0).numpy())
        idx.append(int(out.epoch_index[0]))
    p, i = np.stack(probs), np.asarray(idx, dtype=np.int64)  # (T, 5), (T,)
    keep = i >= 0
    return ModeResult(p[keep], i[keep], group)


def scored(rec: StageRecording, res: ModeResult) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` over the emitted, scored epochs."""
    truth = rec.stages[res.epochs]
    ok = truth >= 0
    return truth[ok], res.probs[ok].argmax(-1)


@dataclass
class RecordingEval:
    """Both runs of one recording."""

    rec: StageRecording
    runs: dict[str, ModeResult]


def evaluate_model(model: Predictor, recs: list[StageRecording]) -> list[RecordingEval]:
    """Run every recording offline and streaming."""
    model.eval()
    out = []
    for rec in recs:
        runs = {"offline": run_offline(model, rec), "streaming": run_streaming(model, rec)}
        out.append(RecordingEval(rec, runs))
    return out


def build_report(evals: list[RecordingEval], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict: ``pooled`` (offline figures) plus ``modes.{offline,streaming}`` each with
    ``pooled`` and ``recordings``, and ``streaming_matches_offline`` / ``max_abs_prob_diff``."""
    modes: dict[str, Any] = {}
    for mode in MODES:
        per_rec: dict[str, Any] = {}
        cm = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
        for ev in evals:
            yt, yp = scored(ev.rec, ev.runs[mode])
            c = confusion(yt, yp)
            cm += c
            per_rec[ev.rec.id] = {"subject": ev.rec.subject, "eeg_label": ev.rec.eeg_label,
                                  "eeg_views": list(ev.rec.view_labels),
                                  "derivation_group": ev.runs[mode].group,
                                  **metrics_from_confusion(c)}
        modes[mode] = {"pooled": metrics_from_confusion(cm), "recordings": per_rec}
    diff = 0.0
    same = True
    for ev in evals:
        a, b = ev.runs["offline"], ev.runs["streaming"]
        if not np.array_equal(a.epochs, b.epochs):
            same = False
            continue
        if len(a.probs):
            diff = max(diff, float(np.abs(a.probs - b.probs).max()))
        same &= bool(np.array_equal(a.probs.argmax(-1), b.probs.argmax(-1)))
    pooled = {k: modes["offline"]["pooled"][k] for k in ("accuracy", "macro_f1", "kappa",
                                                          "n_epochs")}
    report: dict[str, Any] = {
        "pooled": pooled,
        "modes": modes,
        "recordings": {
            ev.rec.id: {m: modes[m]["recordings"][ev.rec.id] for m in MODES} for ev in evals
        },
        "streaming_matches_offline": same,
        "max_abs_prob_diff": diff,
        "classes": list(STAGE_NAMES),
    }
    if extra:
        report.update(extra)
    return report


def _plot_hypnogram(ev: RecordingEval, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = ev.runs["offline"]
    order = [0, 4, 1, 2, 3]  # plot rows top to bottom: W, R, N1, N2, N3
    level = {c: i for i, c in enumerate(order)}
    truth = ev.rec.stages
    t_h = np.arange(len(truth)) * 30 / 3600
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    ok = truth >= 0
    ax1.step(t_h[ok], [-level[int(s)] for s in truth[ok]], where="post", label="truth", lw=1.5)
    pred = res.probs.argmax(-1)
    ax1.step(res.epochs * 30 / 3600, [-level[int(s)] for s in pred], where="post",
             label="predicted", lw=1.0, alpha=0.8)
    ax1.set_yticks([-i for i in range(5)], [STAGE_NAMES[c] for c in order])
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"{ev.rec.id}: hypnogram (offline run)")
    colors = ["#f4d03f", "#85c1e9", "#2e86c1", "#1b4f72", "#e74c3c"]
    ax2.stackplot(res.epochs * 30 / 3600, res.probs.T, labels=list(STAGE_NAMES), colors=colors,
                  step="post")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("probability")
    ax2.set_xlabel("time (h)")
    ax2.legend(loc="upper right", fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_confusion(cm: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(N_CLASSES), STAGE_NAMES)
    ax.set_yticks(range(N_CLASSES), STAGE_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_curves(history: dict[str, list[float]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = sorted({k.rsplit("_step", 1)[0] for k in history if k.endswith("_step")})
    if not phases:
        return False
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.5), squeeze=False)
    for ax, ph in zip(axes[0], phases, strict=True):
        steps = history.get(f"{ph}_step", [])
        for key in ("train_loss", "val_loss"):
            vals = history.get(f"{ph}_{key}", [])
            if vals and len(vals) == len(steps):
                ax.plot(steps, vals, label=key)
        ax.set_title(ph)
        ax.set_xlabel("step")
        ax.set_ylabel("weighted cross-entropy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(
    evals: list[RecordingEval],
    out_dir: Path,
    extra: dict[str, Any] | None = None,
    history: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/report.json`` and the PNG figures; returns the report dict.

    Figures: ``hypnogram_<id>.png`` per recording (truth vs predicted + hypnodensity),
    ``confusion_offline.png`` / ``confusion_streaming.png`` (pooled), and
    ``training_curves.png`` when ``history`` holds curves.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(evals, extra)
    figures = []
    for ev in evals:
        name = f"hypnogram_{ev.rec.id}.png"
        _plot_hypnogram(ev, out_dir / name)
        figures.append(name)
    for mode in MODES:
        name = f"confusion_{mode}.png"
        p = report["modes"][mode]["pooled"]
        _plot_confusion(
            np.asarray(p["confusion"]),
            f"{mode}: acc {p['accuracy']:.3f} MF1 {p['macro_f1']:.3f} k {p['kappa']:.3f}",
            out_dir / name,
        )
        figures.append(name)
    if history and _plot_curves(history, out_dir / "training_curves.png"):
        figures.append("training_curves.png")
    report["figures"] = figures
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return report


__all__ = [
    "MODES",
    "ModeResult",
    "RecordingEval",
    "build_report",
    "confusion",
    "evaluate_model",
    "metrics_from_confusion",
    "run_offline",
    "run_streaming",
    "scored",
    "stage_metrics",
    "write_report",
]


def default_model_path() -> Path:
    """The shipped model, ``rtsleep/assets/default.safetensors``."""
    import rtsleep

    return Path(rtsleep.__file__).resolve().parent / "assets" / "default.safetensors"


def evaluate_stage(
    dataset: str, data: Path, model_path: Path | None, out: Path,
    wake_margin_epochs: int | None = None,
) -> dict[str, Any]:
    """Score the stage model ``model_path`` (the shipped model when None) on ``data`` (a raw
    ``dataset`` folder or a store), both modes; write ``out/report.json`` and figures.
    ``wake_margin_epochs``: score only the sleep period with that many epochs on each side
    (:func:`offline.stage_data.sleep_period`); None scores every labelled epoch. A raw
    recording that cannot be read is logged and listed in the report's ``failed`` (source,
    error), and the others are scored; ``DataError`` when none can be."""
    from offline.stage_data import iter_stage_recordings, sleep_period, without_signals
    from rtsleep.data.errors import DataError
    from rtsleep.models.checkpoint import load_checkpoint_meta, load_predictor

    path = Path(model_path) if model_path is not None else default_model_path()
    try:
        meta = load_checkpoint_meta(path)
        model = load_predictor(path)
    except (OSError, ValueError, KeyError) as err:  # the loader's messages name the file
        raise DataError(path, str(err).removeprefix(f"{path}: ")) from None
    evals: list[RecordingEval] = []
    failed: Failed = []
    # one recording in memory at a time: each is scored, then kept without its signals
    for rec in iter_stage_recordings(Path(data), dataset, meta.preprocess,
                                     meta.config.eeg_views, failed):
        if meta.config.encoder != "spectral" and rec.log_power is not None:
            raise DataError(Path(data), f"band-power features need a spectral model; "
                                        f"{path.name} has encoder {meta.config.encoder!r}")
        if any(e.rec.id == rec.id for e in evals):  # the report is keyed by recording id
            skip_failed(Path(data) / rec.id, DataError(
                Path(data), f"recording id {rec.id} read a second time (two copies of one night "
                "in the folder?); only the first is scored"), failed)
            continue
        if wake_margin_epochs is not None:
            rec = sleep_period(rec, wake_margin_epochs)
        t0 = time.perf_counter()
        (ev,) = evaluate_model(model, [rec])
        evals.append(RecordingEval(without_signals(ev.rec), ev.runs))
        yt, yp = scored(ev.rec, ev.runs["offline"])
        log.info("%s: %d epochs, %d scored, accuracy %s (both modes in %.1f s; %d recording(s) "
                 "done)", rec.id, rec.n_epochs, len(yt),
                 f"{float(np.mean(yt == yp)):.3f}" if len(yt) else "-",
                 time.perf_counter() - t0, len(evals))
    history = None
    if meta.card and isinstance(meta.card.get("history"), dict):
        history = meta.card["history"]
    extra = {
        "model": str(path),
        "model_id": meta.model_id,
        "dataset": dataset,
        "data": str(data),
        "wake_margin_epochs": wake_margin_epochs,
        "failed": [{"source": src, "error": err} for src, err in failed],
    }
    return write_report(evals, Path(out), extra=extra, history=history)

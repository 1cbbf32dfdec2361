"""Apnea evaluation: per-minute metrics of the ECG model, respiratory-event agreement, figures.

Used by ``rtsleep-train evaluate --task apnea`` and by ``tools/bench_apnea.py`` (cross-validation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from offline.apnea_data import ApneaNight, read_apnea_ecg_dir
from offline.failures import Failed
from rtsleep.apnea.aasm import RespEvent
from rtsleep.apnea.ahi import SEVERITY_BOUNDS, SEVERITY_NAMES, ahi_from_minutes, severity_index
from rtsleep.apnea.ecg_model import VARIANTS, load_ecg_model
from rtsleep.data.recording import EPOCH_S, Event, EventType

log = logging.getLogger(__name__)

#: Reading of the DREAMS ``event_pneumo`` codes (see docs/apnea.md): 1 and 3 are apneas (airflow
#: nearly absent for 14-30 s; the detector finds >= 90 % drops there), 10 is a hypopnea (airflow
#: reduced by about half for 15-29 s, recurring every ~45 s).
DREAMS_PNEUMO_CODES: dict[int, EventType] = {
    1: EventType.APNEA,
    3: EventType.APNEA,
    10: EventType.HYPOPNEA,
}


def _safe_div(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def minute_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, AUPRC over minutes ``(n,)`` (None where undefined)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y, dtype=bool)
    pred = np.asarray(prob) >= threshold
    tp, tn = int(np.sum(pred & y)), int(np.sum(~pred & ~y))
    fp, fn = int(np.sum(pred & ~y)), int(np.sum(~pred & y))
    auprc = float(average_precision_score(y, prob)) if 0 < y.sum() < y.size else None
    return {
        "accuracy": _safe_div(tp + tn, y.size),
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "auprc": auprc,
        "n_minutes": int(y.size),
    }


def recording_entry(
    night_id: str, y: np.ndarray, prob: np.ndarray, threshold: float = 0.5
) -> dict[str, Any]:
    """Per-recording metrics plus true and estimated AHI (apnea minutes per hour) and classes."""
    m = minute_metrics(y, prob, threshold)
    ahi_true, ahi_est = ahi_from_minutes(y), ahi_from_minutes(np.asarray(prob) >= threshold)
    return {
        "id": night_id,
        **m,
        "ahi_true": round(ahi_true, 2),
        "ahi_est": round(ahi_est, 2),
        "class_true": SEVERITY_NAMES[severity_index(ahi_true)],
        "class_est": SEVERITY_NAMES[severity_index(ahi_est)],
    }


def summarise(
    ids: list[str], labels: list[np.ndarray], probs: list[np.ndarray], threshold: float = 0.5
) -> dict[str, Any]:
    """``{pooled, ahi_class_agreement, ahi_corr, recordings}`` for one variant."""
    recs = [recording_entry(i, y, p, threshold) for i, y, p in zip(ids, labels, probs, strict=True)]
    pooled = minute_metrics(np.concatenate(labels), np.concatenate(probs), threshold)
    agree = float(np.mean([r["class_true"] == r["class_est"] for r in recs]))
    a_t = np.array([r["ahi_true"] for r in recs], dtype=float)
    a_e = np.array([r["ahi_est"] for r in recs], dtype=float)
    corr = (
        float(np.corrcoef(a_t, a_e)[0, 1])
        if len(recs) > 2 and a_t.std() > 0 and a_e.std() > 0
        else None
    )
    return {"pooled": pooled, "ahi_class_agreement": agree, "ahi_corr": corr, "recordings": recs}


def _figures(
    out: Path, result: dict[str, Any], labels: list[np.ndarray], probs: list[np.ndarray]
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    names = []
    recs: list[dict[str, Any]] = result["recordings"]
    fig, ax = plt.subplots(figsize=(5, 5))
    t = [r["ahi_true"] for r in recs]
    e = [r["ahi_est"] for r in recs]
    ax.scatter(t, e, s=14)
    hi = max(max(t), max(e), 35.0) * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    for b in SEVERITY_BOUNDS:
        ax.axvline(b, color="0.8", lw=0.6)
        ax.axhline(b, color="0.8", lw=0.6)
    ax.set_xlabel("true AHI proxy (apnea min/h)")
    ax.set_ylabel("estimated (apnea min/h)")
    ax.set_title(f"AHI class agreement {result['ahi_class_agreement']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "ahi_scatter.png", dpi=110)
    plt.close(fig)
    names.append("ahi_scatter.png")
    y, p = np.concatenate(labels), np.concatenate(probs)
    if 0 < y.sum() < y.size:
        prec, rec, _ = precision_recall_curve(y, p)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(rec, prec)
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        pooled: dict[str, Any] = result["pooled"]
        ax.set_title(f"per-minute PR curve, AUPRC {pooled['auprc']:.3f}")
        fig.tight_layout()
        fig.savefig(out / "pr_curve.png", dpi=110)
        plt.close(fig)
        names.append("pr_curve.png")
    fig, axes = plt.subplots(
        min(4, len(labels)), 1, figsize=(9, 1.6 * min(4, len(labels))), squeeze=False
    )
    for ax, r, yy, pp in zip(axes[:, 0], recs, labels, probs, strict=False):
        ax.fill_between(np.arange(yy.size), yy.astype(float), step="mid", alpha=0.3, label="label")
        ax.plot(pp, lw=0.8, label="probability")
        ax.set_ylabel(str(r["id"]))
        ax.set_ylim(-0.05, 1.05)
    axes[-1, 0].set_xlabel("minute")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "minutes.png", dpi=110)
    plt.close(fig)
    names.append("minutes.png")
    return names


def evaluate_apnea_ecg(
    data: Path, out: Path, model_path: Path | None = None, threshold: float = 0.5
) -> dict[str, Any]:
    """Score every night in ``data`` with both variants; write ``out/report.json`` and figures.

    The top-level ``pooled`` / ``recordings`` are the non-causal (offline) variant; both variants
    are under ``variants``. A night that cannot be read is logged and listed in ``failed``
    (source, error), and the others are scored; ``DataError`` when none can be.
    """
    failed: Failed = []
    nights: list[ApneaNight] = read_apnea_ecg_dir(data, failed)
    model = load_ecg_model(model_path)
    ids = [n.id for n in nights]
    labels = [n.labels for n in nights]
    feats = [n.features() for n in nights]
    variants = {}
    probs_by = {}
    for v in VARIANTS:
        probs_by[v] = [
            model.predict_proba(f, n.traces(v), v) for f, n in zip(feats, nights, strict=True)
        ]
        variants[v] = summarise(ids, labels, probs_by[v], threshold)
    main = variants["noncausal"]
    report: dict[str, Any] = {
        "task": "apnea",
        "dataset": "apnea-ecg",
        "data": str(data),
        "model": str(model_path) if model_path else "shipped",
        "model_card": model.card,
        "threshold": threshold,
        "ahi_definition": "apnea minutes per hour of labelled minutes (Apnea-ECG proxy)",
        "pooled": main["pooled"],
        "ahi_class_agreement": main["ahi_class_agreement"],
        "recordings": main["recordings"],
        "variants": variants,
        "failed": [{"source": src, "error": err} for src, err in failed],
    }
    out.mkdir(parents=True, exist_ok=True)
    report["figures"] = _figures(out, main, labels, probs_by["noncausal"])
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report


def dreams_expert_events(codes_1hz: np.ndarray) -> list[Event]:
    """Runs of non-zero ``event_pneumo`` codes (1 Hz) -> events typed by DREAMS_PNEUMO_CODES."""
    c = np.asarray(codes_1hz).round().astype(int)
    events = []
    i = 0
    while i < c.size:
        j = i
        while j < c.size and c[j] == c[i]:
            j += 1
        if c[i] != 0:
            typ = DREAMS_PNEUMO_CODES.get(int(c[i]), EventType.APNEA_HYPOPNEA)
            events.append(Event(float(i), float(j - i), typ, label=str(c[i])))
        i = j
    return events


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def event_agreement(detected: list[RespEvent], expert: list[Event]) -> dict[str, Any]:
    """Event-level match by any overlap: sensitivity (expert found), precision (detections real)."""
    hit_exp = [
        any(_overlaps(e.onset_s, e.end_s, d.onset_s, d.end_s) for d in detected) for e in expert
    ]
    hit_det = [
        any(_overlaps(d.onset_s, d.end_s, e.onset_s, e.end_s) for e in expert) for d in detected
    ]
    apnea_exp = [e for e in expert if e.type.is_apnea]
    apnea_det = [d for d in detected if d.type.is_apnea]
    apnea_hit = [
        any(_overlaps(e.onset_s, e.end_s, d.onset_s, d.end_s) for d in apnea_det) for e in apnea_exp
    ]
    return {
        "n_expert": len(expert),
        "n_detected": len(detected),
        "sensitivity": _safe_div(sum(hit_exp), len(expert)),
        "precision": _safe_div(sum(hit_det), len(detected)),
        "n_expert_apnea": len(apnea_exp),
        "n_detected_apnea": len(apnea_det),
        "apnea_sensitivity": _safe_div(sum(apnea_hit), len(apnea_exp)),
    }


def epoch_agreement(
    detected: list[RespEvent], expert: list[Event], duration_s: float
) -> dict[str, Any]:
    """30-s epochs flagged by overlap with any event: accuracy and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    n = int(duration_s // EPOCH_S)

    def flags(evs: list[tuple[float, float]]) -> np.ndarray:
        f = np.zeros(n, dtype=bool)
        for a, b in evs:
            for k in range(int(a // EPOCH_S), min(n, int(np.ceil(b / EPOCH_S)))):
                f[k] = True
        return f

    fd = flags([(d.onset_s, d.end_s) for d in detected])
    fe = flags([(e.onset_s, e.end_s) for e in expert])
    kappa = float(cohen_kappa_score(fe, fd)) if len(set(fe) | set(fd)) > 1 else None
    return {
        "n_epochs": n,
        "accuracy": float(np.mean(fd == fe)),
        "kappa": kappa,
        "expert_positive": int(fe.sum()),
        "detected_positive": int(fd.sum()),
    }


def second_agreement(
    detected: list[RespEvent], expert: list[Event], duration_s: float
) -> dict[str, Any]:
    """1-s bins inside any event: accuracy and Cohen's kappa (finer than 30-s epochs)."""
    from sklearn.metrics import cohen_kappa_score

    n = int(duration_s)
    fd = np.zeros(n, dtype=bool)
    fe = np.zeros(n, dtype=bool)
    for d in detected:
        fd[int(np.floor(d.onset_s)) : int(np.ceil(d.end_s))] = True
    for e in expert:
        fe[int(np.floor(e.onset_s)) : int(np.ceil(e.end_s))] = True
    kappa = float(cohen_kappa_score(fe, fd)) if len(set(fe) | set(fd)) > 1 else None
    return {"n_seconds": n, "accuracy": float(np.mean(fd == fe)), "kappa": kappa}

"""Apnea benchmarks: cross-validation of the ECG model and AASM-detector agreement on DREAMS.

    .venv/bin/python tools/bench_apnea.py cv --folds 35        # LOSO on apnea-ecg-hr/train
    .venv/bin/python tools/bench_apnea.py cv --folds 35 --variant causal   # one variant only
    .venv/bin/python tools/bench_apnea.py resp                 # excerpt3 detector vs expert
    .venv/bin/python tools/bench_apnea.py stream               # per-epoch cost, one bed
    .venv/bin/python tools/bench_apnea.py stream --resp-rate 500   # airflow etc. resampled

Both print a JSON summary (and ``--out FILE`` writes it). The folds are fixed: record ``i`` of the
sorted ids goes to fold ``i mod K``; K = number of records is leave-one-subject-out (one night per
subject in Apnea-ECG). Training uses one thread; timings are noisy on the shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline.apnea_data import read_apnea_ecg_dir  # noqa: E402
from offline.apnea_eval import (  # noqa: E402
    dreams_expert_events,
    epoch_agreement,
    event_agreement,
    second_agreement,
    summarise,
)
from offline.apnea_train import (  # noqa: E402
    TraceTrainConfig,
    TrainConfig,
    cross_validate,
    night_inputs,
)
from rtsleep.apnea.aasm import AasmConfig, detect_respiratory_events  # noqa: E402
from rtsleep.settings import data_dir  # noqa: E402

log = logging.getLogger("bench_apnea")


def run_cv(
    data: Path, folds: int, epochs: int, variants: tuple[str, ...] = ("causal", "noncausal")
) -> dict[str, object]:
    """K-fold / LOSO out-of-fold metrics for both variants: the shipped model (the feature GRU
    and the trace CNN averaged) and each of its two parts alone."""
    t0 = time.perf_counter()
    nights = read_apnea_ecg_dir(data)
    inputs = [night_inputs(n) for n in nights]
    t_feat = time.perf_counter() - t0
    ids = [n.id for n in nights]
    labels = [n.labels for n in nights]
    cfg = TrainConfig(epochs=epochs)
    trace_cfg = TraceTrainConfig()
    probs = cross_validate(inputs, folds, cfg, trace_cfg, variants)
    res: dict[str, object] = {
        "data": str(data),
        "folds": min(folds, len(ids)),
        "n_records": len(ids),
        "train_config": cfg.__dict__,
        "trace_train_config": trace_cfg.__dict__,
        "feature_seconds": round(t_feat, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    for v, by_part in probs.items():
        for part, p in by_part.items():
            s = summarise(ids, labels, p)
            key = v if part == "model" else f"{v}_{part}_only"
            res[key] = {k: s[k] for k in ("pooled", "ahi_class_agreement", "ahi_corr")}
            if part == "model":
                res[v + "_per_record_accuracy"] = {
                    r["id"]: round(r["accuracy"], 4) for r in s["recordings"]
                }
    return res


def run_resp(edf: Path) -> dict[str, object]:
    """AASM detector on excerpt3 (rule ``flow``: its SAO2 channel holds no usable saturation)."""
    import edfio

    sig = {s.label: s for s in edfio.read_edf(edf).signals}
    fs = float(sig["NAF1"].sampling_frequency)
    flow = sig["NAF1"].data
    effort = np.stack([sig["VTH"].data, sig["VAB"].data])
    spo2 = sig["SAO2"].data
    valid_spo2 = float(np.mean((spo2 >= 50) & (spo2 <= 100)))
    expert = dreams_expert_events(sig["event_pneumo"].data)
    out: dict[str, object] = {"edf": str(edf), "spo2_valid_fraction": round(valid_spo2, 4)}
    for rule in ("flow", "1A"):
        t0 = time.perf_counter()
        det = detect_respiratory_events(flow, fs, effort, spo2, AasmConfig(rule=rule))  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
        out[rule] = {
            "events": event_agreement(det, expert),
            "epochs": epoch_agreement(det, expert, flow.size / fs),
            "seconds": second_agreement(det, expert, flow.size / fs),
            "detected_types": {
                t: sum(d.type.value == t for d in det) for t in sorted({d.type.value for d in det})
            },
            "seconds_for_30_min": round(dt, 2),
        }
    return out


def run_stream(edf: Path, resp_rate: float | None = None) -> dict[str, object]:
    """Per-epoch CPU cost of one bed's apnea pathways on excerpt3 (50 Hz), epoch by epoch;
    ``resp_rate``: airflow, effort and SpO2 resampled to this rate first (an amplifier that
    records them faster)."""
    from fractions import Fraction

    import edfio
    from scipy.signal import resample_poly

    from rtsleep.apnea.aasm import RespiratoryDetector
    from rtsleep.apnea.alerts import AlertTracker
    from rtsleep.apnea.ecg_model import load_ecg_model
    from rtsleep.apnea.ecg_stream import EcgApneaStream

    sig = {s.label: s for s in edfio.read_edf(edf).signals}
    fs = float(sig["ECG"].sampling_frequency)
    n_ep = int(sig["ECG"].data.size // (30 * fs))
    ecg = EcgApneaStream(load_ecg_model(), ecg_fs=fs)
    rfs = float(resp_rate or fs)
    ratio = Fraction(rfs / fs).limit_denominator(100)
    resp = {k: sig[k].data if rfs == fs else resample_poly(sig[k].data, ratio.numerator,
                                                           ratio.denominator)
            for k in ("NAF1", "VTH", "VAB", "SAO2")}
    det = RespiratoryDetector(rfs, AasmConfig(rule="flow"), has_effort=True, has_spo2=True)
    alerts = AlertTracker("bench", gate_by_stage=False)
    t_ecg, t_resp = [], []
    for k in range(n_ep):
        sl = slice(int(k * 30 * fs), int((k + 1) * 30 * fs))
        rl = slice(int(k * 30 * rfs), int((k + 1) * 30 * rfs))
        t0 = time.perf_counter()
        ecg.push_ecg(sig["ECG"].data[sl])
        t1 = time.perf_counter()
        eff = np.stack([resp["VTH"][rl], resp["VAB"][rl]])
        alerts.on_updates(det.push(resp["NAF1"][rl], eff, resp["SAO2"][rl]))
        t2 = time.perf_counter()
        t_ecg.append(t1 - t0)
        t_resp.append(t2 - t1)

    def stats(x: list[float]) -> dict[str, float]:
        a = np.asarray(x) * 1000.0
        return {
            "median_ms": round(float(np.median(a)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2),
        }

    return {"epochs": n_ep, "fs": fs, "resp_fs": rfs, "ecg_pathway": stats(t_ecg),
            "resp_pathway": stats(t_resp), "resp_events_confirmed": alerts.ahi.n_events}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    cv = sub.add_parser("cv")
    cv.add_argument("--data", type=Path, default=data_dir() / "apnea-ecg-hr" / "train")
    cv.add_argument("--folds", type=int, default=35)
    cv.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    cv.add_argument("--variant", choices=["causal", "noncausal", "both"], default="both",
                    help="one variant per process lets two cores share a LOSO run")
    rp = sub.add_parser("resp")
    rp.add_argument("--edf", type=Path, default=data_dir() / "dreams-spindles" / "excerpt3.edf")
    st = sub.add_parser("stream")
    st.add_argument("--edf", type=Path, default=data_dir() / "dreams-spindles" / "excerpt3.edf")
    st.add_argument("--resp-rate", type=float, default=None,
                    help="resample airflow, effort and SpO2 to this rate (Hz) first")
    for p in (cv, rp, st):
        p.add_argument("--out", type=Path, default=None)
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.cmd == "cv":
        chosen = ("causal", "noncausal") if args.variant == "both" else (args.variant,)
        res = run_cv(args.data, args.folds, args.epochs, chosen)
    elif args.cmd == "resp":
        res = run_resp(args.edf)
    else:
        res = run_stream(args.edf, args.resp_rate)
    text = json.dumps(res, indent=2)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()

"""Peer comparison: YASA and GSSC beside an rtsleep model on the very same 30-s epochs.

    .venv/bin/python tools/bench_peers.py --data ../shared/data/dreams-spindles --dataset dreams \\
        [--model M.safetensors] [--cv-report OUT/cv/report.json] --out bench_peers.json

Every recording is read once through ``rtsleep.data.readers``; the EEG channel is the primary EEG
channel that rtsleep itself selects (``rtsleep.data.epochs.select_channels``) and epochs are the
30-s epochs from the recording start (the last partial epoch is dropped), so all three score the
same epochs against the same truth. Unscored epochs are left out for all.

- **YASA** 0.8 (``yasa.SleepStaging``, EEG only): needs >= 80 Hz, so a slower channel (DREAMS
  excerpt3, 50 Hz) is upsampled to 100 Hz with MNE first. Non-causal (whole-recording features).
- **GSSC** 0.0.9 (``gssc.infer.EEGInfer.mne_infer``, EEG only, offline mode): the continuous EEG is
  band-passed 0.3-30 Hz with MNE as GSSC does, then handed over as an ``EpochsArray`` of exactly
  our epochs (its Raw path drops the last epoch of a recording whose length is a multiple of
  30 s). GSSC pickles whole modules, which torch >= 2.6 refuses by default: its two wheel files are
  loaded with ``weights_only=False`` (only those files; see peers.md).
- **rtsleep**: ``--model`` scored offline and streaming (``offline.stage_eval``) and/or the pooled
  LOSO figures of a ``cv`` report (``--cv-report``).

Writes a JSON file and prints a Markdown table (accuracy / macro-F1 / kappa, pooled).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline.stage_eval import confusion, metrics_from_confusion  # noqa: E402
from rtsleep.data.epochs import select_channels  # noqa: E402
from rtsleep.data.preprocessing import PreprocessSpec  # noqa: E402
from rtsleep.data.readers import list_sources, read_recording  # noqa: E402
from rtsleep.data.recording import STAGE_NAMES, Modality  # noqa: E402

log = logging.getLogger("bench_peers")

_NAME_TO_STAGE = {"W": 0, "WAKE": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4, "REM": 4}


def _raw(eeg: np.ndarray, sfreq: float, label: str) -> Any:
    import mne

    info = mne.create_info([label], sfreq, ch_types=["eeg"])
    return mne.io.RawArray(eeg[None] * 1e-6, info, verbose="ERROR")  # µV -> V


def run_yasa(eeg: np.ndarray, sfreq: float, label: str, n_epochs: int) -> np.ndarray:
    """YASA stages ``(n_epochs,)`` (``Stage`` values) for EEG ``(n,)`` in µV."""
    import yasa

    raw = _raw(eeg[: int(round(n_epochs * 30 * sfreq))], sfreq, label)
    if sfreq < 80:
        raw.resample(100.0, verbose="ERROR")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = yasa.SleepStaging(raw, eeg_name=label).predict()
    values = getattr(pred, "hypno", pred)  # yasa >= 0.7 returns a Hypnogram
    out = np.array([_NAME_TO_STAGE[str(p).upper()] for p in values], dtype=np.int64)
    if len(out) != n_epochs:
        raise ValueError(f"YASA returned {len(out)} epochs, expected {n_epochs}")
    return out


@contextlib.contextmanager
def _gssc_weights_loadable() -> Iterator[None]:
    """Let ``torch.load`` unpickle GSSC's own wheel files (only files inside the gssc package)."""
    import gssc
    import torch

    root = Path(gssc.__file__).resolve().parent
    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(str(f)).resolve().is_relative_to(root):
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original


_GSSC: Any = None


def run_gssc(eeg: np.ndarray, sfreq: float, label: str, n_epochs: int) -> np.ndarray:
    """GSSC stages ``(n_epochs,)`` for EEG ``(n,)`` in µV (offline mode, EEG only)."""
    import mne
    from gssc.infer import EEGInfer

    global _GSSC
    if _GSSC is None:
        with _gssc_weights_loadable(), contextlib.redirect_stdout(sys.stderr):
            _GSSC = EEGInfer(use_cuda=False)
    raw = _raw(eeg[: int(round(n_epochs * 30 * sfreq))], sfreq, label)
    hi = 30.0 if sfreq / 2 > 30.0 else None
    raw.filter(0.3, hi, verbose="ERROR")
    n = int(round(30 * sfreq))
    data = raw.get_data()[0, : n_epochs * n].reshape(n_epochs, 1, n)  # (n_epochs, 1, n)
    epo = mne.EpochsArray(data, raw.info, verbose="ERROR")
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        pred, _ = _GSSC.mne_infer(epo, eeg=[label], eog=[], filter=False)
    out = np.asarray(pred, dtype=np.int64)
    if len(out) != n_epochs:
        raise ValueError(f"GSSC returned {len(out)} epochs, expected {n_epochs}")
    return out


def _pooled(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    cm = sum((confusion(t, p) for t, p in pairs), np.zeros((5, 5), dtype=np.int64))
    return metrics_from_confusion(np.asarray(cm))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--dataset", default="dreams")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--cv-report", type=Path, default=None)
    ap.add_argument("--peers", default="yasa,gssc")
    ap.add_argument("--out", type=Path, default=Path("bench_peers.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    peers = [p for p in args.peers.split(",") if p]
    runners = {"yasa": run_yasa, "gssc": run_gssc}
    spec = PreprocessSpec.default()
    results: dict[str, Any] = {name: {"recordings": {}} for name in peers}
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in peers}
    for source in list_sources(args.dataset, args.data):
        rec = read_recording(args.dataset, source)
        if rec.stages is None:
            continue
        eeg_ch = select_channels(rec, spec).get(Modality.EEG)
        if eeg_ch is None:
            log.warning("%s: no EEG channel; skipped", source)
            continue
        n_epochs = min(int(eeg_ch.n_samples // round(30 * eeg_ch.sfreq)), len(rec.stages))
        truth = np.asarray(rec.stages[:n_epochs], dtype=np.int64)
        ok = truth >= 0
        for name in peers:
            t0 = time.perf_counter()
            pred = runners[name](eeg_ch.data.astype(np.float64), eeg_ch.sfreq, eeg_ch.label,
                                 n_epochs)
            dt = time.perf_counter() - t0
            pairs[name].append((truth[ok], pred[ok]))
            m = metrics_from_confusion(confusion(truth[ok], pred[ok]))
            m["seconds"] = dt
            results[name]["recordings"][rec.id] = m
            log.info("%s %s: acc %.3f kappa %.3f (%.1f s)", name, rec.id, m["accuracy"],
                     m["kappa"], dt)
    for name in peers:
        results[name]["pooled"] = _pooled(pairs[name])
    if args.model is not None:
        from offline.stage_data import load_stage_recordings
        from offline.stage_eval import build_report, evaluate_model
        from rtsleep.models.checkpoint import load_checkpoint_meta, load_predictor

        meta = load_checkpoint_meta(args.model)
        recs = load_stage_recordings(args.data, args.dataset, meta.preprocess,
                                     meta.config.eeg_views)
        rep = build_report(evaluate_model(load_predictor(args.model), recs))
        results["rtsleep_model"] = {
            "model": str(args.model),
            "pooled": rep["modes"]["offline"]["pooled"],
            "streaming_pooled": rep["modes"]["streaming"]["pooled"],
        }
    if args.cv_report is not None:
        cv = json.loads(args.cv_report.read_text())
        results["rtsleep_loso"] = {"report": str(args.cv_report),
                                   "pooled": cv["modes"]["offline"]["pooled"],
                                   "streaming_pooled": cv["modes"]["streaming"]["pooled"]}
    results["classes"] = list(STAGE_NAMES)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| model | accuracy | macro-F1 | kappa | epochs |")
    print("|---|---|---|---|---|")
    for name, res in results.items():
        if not isinstance(res, dict) or "pooled" not in res:
            continue
        p = res["pooled"]
        print(f"| {name} | {p['accuracy']:.3f} | {p['macro_f1']:.3f} | {p['kappa']:.3f} | "
              f"{p['n_epochs']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

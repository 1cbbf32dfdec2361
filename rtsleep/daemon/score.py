"""``rtsleep score FILE --out FILE [--png]``: offline scoring through the daemon's own code path.

The recording is cut exactly as the daemon would see it from ``rtsleep replay``: the replayer's
channel loading and outlet plan (one stream per modality and rate, same channel metadata), each
stream's samples stamped ``i / fs`` and pushed through the daemon's :class:`BedEpocher` (same
epoch cutting, hold-filling and quality verdicts), then the daemon's :class:`Scorer` (same causal
preprocessing, same model ``step``, batch 1). The output is one stage message per line, in the
daemon's wire format, so its ``stage`` and ``probs`` equal what ``rtsleep serve`` publishes for the
same recording. Offline, ``start_lsl``/``end_lsl`` are seconds from the recording start, ``seq``
is the line number, ``run`` is ``"score"`` and ``latency_ms`` is null.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtsleep.daemon.epocher import BedEpocher, ModalityResolver
from rtsleep.daemon.inlet import StreamLayout
from rtsleep.daemon.replay import load_channels, plan_outlets, stream_info
from rtsleep.daemon.scorer import EpochResult, Scorer, result_message
from rtsleep.data.recording import EPOCH_S, STAGE_NAMES, Channel

log = logging.getLogger(__name__)

OFFLINE_BED = "offline"


def iter_results(
    scorer: Scorer,
    source: str,
    channels: Sequence[Channel],
    bed: str = OFFLINE_BED,
    modality_of: ModalityResolver | None = None,
) -> Iterator[EpochResult]:
    """Score ``channels`` epoch by epoch; yields one result per complete 30-s epoch, in order
    (with an output delay, the last ones after the end, fed absent epochs: ``Scorer.flush``).

    ``source`` names the recording (as the replayer names its outlets).
    """
    plans = plan_outlets(source, channels)
    layouts = [StreamLayout.from_info(stream_info(p), p.source_id) for p in plans]
    epocher = BedEpocher(bed, [lay.key for lay in layouts], modality_of=modality_of,
                         timeout_s=float("inf"))
    for lay in layouts:
        epocher.attach(lay.key, lay)
    if bed not in scorer.beds:
        scorer.add_bed(bed)
    n_epochs = min(int(p.n_samples // round(EPOCH_S * p.sfreq)) for p in plans)
    for k in range(n_epochs):
        for p, lay in zip(plans, layouts, strict=True):
            per = int(round(EPOCH_S * p.sfreq))
            idx = np.arange(k * per, (k + 1) * per)  # (per,) sample indices of epoch k
            epocher.push(lay.key, p.data[idx], idx / p.sfreq)
        blocks = epocher.pop_ready()
        yield from scorer.score(blocks)
    yield from scorer.flush([bed])  # a model with an output delay: the last epochs


def score_file(
    path: Path,
    out: Path,
    scorer: Scorer,
    dataset: str = "edf",
) -> list[dict[str, Any]]:
    """Score a recording file into ``out`` (JSON lines); returns the messages written.

    ``out`` is replaced only when the whole file has been scored: a run that fails leaves an
    existing ``out`` as it was."""
    channels = load_channels(Path(path), dataset)
    messages: list[dict[str, Any]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    try:
        with part.open("w", encoding="utf-8") as fh:
            for seq, res in enumerate(iter_results(scorer, str(path), channels)):
                msg = result_message(res, scorer.model_id, None, None)
                msg["seq"] = seq
                msg["run"] = "score"
                fh.write(json.dumps(msg, allow_nan=False, separators=(",", ":")) + "\n")
                messages.append(msg)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    log.info("%s: %d epochs scored -> %s", path, len(messages), out)
    return messages


def plot_hypnogram(messages: Sequence[dict[str, Any]], png: Path, title: str = "",
                   expert: np.ndarray | None = None) -> None:
    """Hypnogram + stacked stage probabilities (hypnodensity) to ``png``.

    ``expert``: optional expert stages per epoch (``Stage`` values, -1 unscored) drawn on top.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(messages)
    t_h = np.arange(n) * EPOCH_S / 3600.0  # (n,) epoch starts in hours
    probs = np.full((n, len(STAGE_NAMES)), np.nan)
    stage = np.full(n, np.nan)
    for i, m in enumerate(messages):
        if m.get("probs") and m.get("stage"):
            probs[i] = [m["probs"][s] for s in STAGE_NAMES]
            stage[i] = STAGE_NAMES.index(m["stage"])
    # hypnogram order top to bottom: W, R, N1, N2, N3
    y_of = {0: 4, 4: 3, 1: 2, 2: 1, 3: 0}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    ys = np.array([y_of[int(s)] if np.isfinite(s) else np.nan for s in stage])
    ax1.step(t_h, ys, where="post", label="rtsleep", color="k")
    if expert is not None:
        n_e = min(n, len(expert))
        ye = np.array([y_of[int(s)] if s >= 0 else np.nan for s in expert[:n_e]])
        ax1.step(t_h[:n_e], ye + 0.1, where="post", label="expert", color="tab:red", alpha=0.7)
        ax1.legend(loc="upper right")
    ax1.set_yticks([4, 3, 2, 1, 0], ["W", "R", "N1", "N2", "N3"])
    ax1.set_title(title or "rtsleep score")
    filled = np.nan_to_num(probs)
    ax2.stackplot(t_h, filled.T, labels=list(STAGE_NAMES), step="post")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("time (h)")
    ax2.set_ylabel("probability")
    ax2.legend(loc="upper right", ncol=5, fontsize="small")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)

"""A bed's ECG apnea pathway in the daemon (opt-in: ``[alerts] ecg = true``).

Glue between the epoch blocks and :class:`rtsleep.apnea.ecg_stream.EcgApneaStream` (the shipped
causal ECG apnea model): every epoch's raw samples of the bed's primary ECG channel go in; the
per-epoch apnea(-hypopnea) probability of epoch ``k`` comes out once the R-peak detector has seen
every beat up to its end (about 12 s later, so in practice while epoch ``k + 1`` is processed).
Each probability, with the stage the daemon scored for that epoch, drives an alert state machine
(:class:`~rtsleep.daemon.alerts.BedAlerts`, source ``ecg``, event ``apnea_hypopnea``): alerts
for epoch ``k`` are therefore published one epoch late.

An ECG interruption (missing samples, unusable channel) ends the current stream; a new one starts
at the next clean epoch (its first minutes are scored on partial windows: the GRU features read
the last 60 s, the trace CNN the last 300 s, and a window with too few beats reads as missing).
Not persisted across restarts. Cost: 5.3 ms median per bed and epoch on the idle machine
(``tools/bench_apnea.py stream``, DREAMS excerpt3), about 50 ms on 2 busy cores; opt-in.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from rtsleep.apnea.ecg_model import EcgApneaModel
from rtsleep.apnea.ecg_stream import EcgApneaStream
from rtsleep.daemon.alerts import AlertThresholds, BedAlerts
from rtsleep.daemon.epocher import EpochBlock
from rtsleep.daemon.scorer import EpochResult, choose_primary
from rtsleep.data.recording import Modality

log = logging.getLogger(__name__)

ECG_EVENT = "apnea_hypopnea"


class BedEcgApnea:
    """One bed's ECG apnea stream, pending probabilities and alert state (see the module doc)."""

    def __init__(self, bed: str, model: EcgApneaModel, thresholds: AlertThresholds,
                 model_id: str = "") -> None:
        self.bed = bed
        self.model = model
        self.label: str | None = None
        self.alerts = BedAlerts(bed, thresholds, model_id, source="ecg", sensor="ECG",
                                events=("apnea",), names={"apnea": ECG_EVENT})
        self.probs: dict[int, float] = {}
        self._results: dict[int, EpochResult] = {}
        self._stream: EcgApneaStream | None = None
        self._epoch0 = 0
        self._next = -1  # next epoch to hand to the alert state machine (-1: none seen yet)

    @property
    def stream_start_epoch(self) -> int | None:
        """The epoch the current ECG stream began at (``None`` while there is none)."""
        return self._epoch0 if self._stream is not None else None

    @property
    def active(self) -> bool:
        """Whether this bed has an ECG channel."""
        return self.label is not None

    def on_block(self, block: EpochBlock) -> None:
        """Feed one epoch of raw ECG (or end the stream on an interruption)."""
        if self.label is None:
            ch = choose_primary(list(block.channels), Modality.ECG)
            if ch is None:
                return
            self.label = ch.label
            self.alerts.sensor = ch.label
            log.info("bed %s: ECG apnea model on %s", self.bed, ch.label)
        by_label = {c.label: c for c in block.channels}
        quality = {c.label: c for c in block.quality.channels}
        ecg = by_label.get(self.label)
        q = quality.get(self.label)
        if ecg is None or q is None or not q.usable or q.n_missing:
            if self._stream is not None:
                log.info("bed %s: ECG interrupted at epoch %d; apnea stream restarts",
                         self.bed, block.index)
            self._stream = None
            return
        if self._stream is None:
            self._stream = EcgApneaStream(self.model, ecg.sfreq, f"bed {self.bed} {self.label}")
            self._epoch0 = block.index
        for k, p in self._stream.push_ecg(ecg.data):
            self.probs[self._epoch0 + k] = p

    def on_result(self, res: EpochResult, utc_offset: float | None) -> list[dict[str, Any]]:
        """Record the epoch's stage; alerts for the epochs before it (one-epoch delay)."""
        if self.label is None:
            return []
        self._results[res.index] = res
        if self._next < 0:
            self._next = res.index
        out: list[dict[str, Any]] = []
        while self._next < res.index and self._next in self._results:
            r = self._results.pop(self._next)
            p = self.probs.pop(self._next, None)
            out += self.alerts.update(dataclasses.replace(r, apnea_prob=p, hypopnea_prob=None),
                                      utc_offset)
            self._next += 1
        return out

    def summary(self) -> dict[str, Any]:
        """``ahi`` and ``severity`` from the confirmed ECG events."""
        s = self.alerts.summary()
        return {"ahi": s["ahi"], "severity": s["severity"]}

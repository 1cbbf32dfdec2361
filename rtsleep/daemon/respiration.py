"""A bed's AASM respiratory pathway in the daemon: raw airflow/effort/SpO2 -> alerts and AHI.

Glue between the epoch blocks and the apnea library (:mod:`rtsleep.apnea`):
:class:`~rtsleep.apnea.aasm.RespiratoryDetector` gets every epoch's raw samples of the bed's
airflow channel (the preferred RESP label: nasal pressure, airflow, NAF1 ...), the other RESP
channels at that rate as effort belts, and the SpO2 channel (held up to the airflow rate, or
taken every k-th sample when it is faster, when the rate ratio is an integer; without SpO2 the
hypopnea rule falls back to ``flow``; an SpO2 stream that attaches later starts a new segment
with it);
:class:`~rtsleep.apnea.alerts.AlertTracker` turns its updates plus each epoch's scored stage into
``provisional`` / ``confirmed`` / ``retracted`` alerts and a running AHI.

The detector is never fed garbage: an epoch whose airflow channel is missing samples or unusable
ends the current detector segment (``flush``: open events are decided on what was seen) and a new
segment starts at the next clean epoch; NaN samples of a usable epoch go in as NaN (not the
epocher's held value, a flat line that would read as an apnea) and score no event. Only epochs
with a clean airflow count as sleep time for the AHI (an hour without airflow is not an hour
without events). Event times
are re-based to the bed's epoch 0, and event ids are unique across segments. The detector state
is not persisted: after a restart a new segment starts (the first ``min_baseline_s`` seconds
build a new baseline).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from rtsleep.apnea.aasm import AasmConfig, RespiratoryDetector, RespUpdate
from rtsleep.apnea.alerts import AlertTracker
from rtsleep.daemon.epocher import EpochBlock, EpochChannel
from rtsleep.daemon.messages import alert_message
from rtsleep.daemon.scorer import EpochResult, choose_primary
from rtsleep.data.recording import EPOCH_S, Modality, Stage

log = logging.getLogger(__name__)

_ID_STRIDE = 1_000_000  # detector ids of segment g start at g * stride


@dataclasses.dataclass(frozen=True)
class RespChannels:
    """The labels the detector reads (``spo2_repeat`` = airflow samples per SpO2 sample, each
    SpO2 sample held that often; ``spo2_step`` = SpO2 samples per airflow sample, every
    ``spo2_step``-th taken; at most one of them is above 1)."""

    flow: str
    effort: tuple[str, ...]
    spo2: str | None
    spo2_repeat: int
    sfreq: float
    spo2_step: int = 1

    def spo2_at_flow_rate(self, spo2: np.ndarray) -> np.ndarray:
        """One epoch's SpO2 samples ``(m,)`` at the airflow rate ``(n,)``."""
        if self.spo2_step > 1:
            return spo2[self.spo2_step - 1 :: self.spo2_step]  # the last of each group
        return np.repeat(spo2, self.spo2_repeat)


def pick_channels(channels: tuple[EpochChannel, ...] | list[EpochChannel]) -> RespChannels | None:
    """Airflow, effort belts and SpO2 of a bed from its channel list; ``None`` without airflow."""
    flow = choose_primary(list(channels), Modality.RESP)
    if flow is None:
        return None
    effort = tuple(c.label for c in channels if c.modality == Modality.RESP
                   and c.label != flow.label and c.sfreq == flow.sfreq)
    spo2 = choose_primary(list(channels), Modality.SPO2)
    repeat, step = 0, 1
    if spo2 is not None:
        ratio = flow.sfreq / spo2.sfreq
        if abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1:
            repeat = int(round(ratio))
        elif abs(1 / ratio - round(1 / ratio)) < 1e-9:  # SpO2 faster, an integer multiple
            repeat, step = 1, int(round(1 / ratio))
        else:
            log.warning("SpO2 at %g Hz cannot be aligned to airflow at %g Hz; hypopneas use "
                        "the flow-only rule", spo2.sfreq, flow.sfreq)
            spo2 = None
    return RespChannels(flow.label, effort, spo2.label if spo2 is not None else None, repeat,
                        flow.sfreq, step)


class BedRespiration:
    """One bed's respiratory detector segments, alert tracker and AHI (see the module docstring).

    ``rule``: AASM hypopnea rule ``1A`` (3 % desaturation) or ``1B`` (4 %); ``min_sleep_s``:
    seconds of sleep before the AHI is published (the model alerts' ``min_sleep_s``).
    """

    def __init__(self, bed: str, rule: str = "1A", model_id: str = "",
                 min_sleep_s: float = 600.0) -> None:
        self.bed = bed
        self.rule = rule
        self.model_id = model_id
        self.tracker = AlertTracker(bed, min_sleep_s=min_sleep_s)
        self.channels: RespChannels | None = None
        self._detector: RespiratoryDetector | None = None
        self._epoch0 = 0
        self._generation = -1
        self._spo2_warned = False
        self._monitored: set[int] = set()  # epochs with a clean airflow, not yet staged
        self._spo2_seen: set[str] = set()  # SpO2 labels already considered by a pick

    @property
    def n_segments(self) -> int:
        """Detector segments started so far (a new one after every airflow interruption)."""
        return self._generation + 1

    @property
    def active(self) -> bool:
        """Whether this bed has an airflow channel."""
        return self.channels is not None

    def _new_detector(self, ch: RespChannels, epoch0: int) -> RespiratoryDetector:
        rule = self.rule if ch.spo2 is not None else "flow"
        self._generation += 1
        self._epoch0 = epoch0
        cfg = AasmConfig(rule=rule)  # type: ignore[arg-type]
        return RespiratoryDetector(ch.sfreq, cfg, sensor=ch.flow, has_effort=bool(ch.effort),
                                   has_spo2=ch.spo2 is not None)

    def _close_segment(self) -> list[RespUpdate]:
        """End the current detector segment (open events are decided on what was seen); its
        last updates, re-based. Nothing when no segment is open."""
        if self._detector is None:
            return []
        updates = self._rebase(self._detector.flush())
        self._detector = None
        return updates

    def _rebase(self, updates: list[RespUpdate]) -> list[RespUpdate]:
        shift_s = self._epoch0 * EPOCH_S
        base_id = self._generation * _ID_STRIDE
        return [RespUpdate(u.kind, dataclasses.replace(
            u.event, onset_s=u.event.onset_s + shift_s, id=u.event.id + base_id))
            for u in updates]

    def on_block(self, block: EpochBlock, anchor: float | None,
                 utc_offset: float | None) -> list[dict[str, Any]]:
        """Feed one epoch's raw samples; returns alert messages (without ``seq``/``run``)."""
        updates: list[RespUpdate] = []
        spo2_labels = {c.label for c in block.channels if c.modality == Modality.SPO2}
        if self.channels is None or (self.channels.spo2 is None
                                     and not spo2_labels <= self._spo2_seen):
            # until an airflow channel shows up, and an SpO2 that attaches later (streams may
            # be late): a new segment starts with it, so hypopneas get their oxygen test
            self._spo2_seen |= spo2_labels  # looked at once, not every epoch
            picked = pick_channels(block.channels)
            if picked != self.channels and picked is not None:
                updates = self._close_segment()
                self.channels = picked
                log.info("bed %s: respiratory events from %s (effort %s, SpO2 %s) from epoch %d",
                         self.bed, picked.flow, list(picked.effort) or "none",
                         picked.spo2 or "none", block.index)
        ch = self.channels
        if ch is None:
            return []
        by_label = {c.label: c for c in block.channels}
        qual = {c.label: c for c in block.quality.channels}
        flow = by_label.get(ch.flow)
        fq = qual.get(ch.flow)
        clean = fq is not None and fq.usable and fq.n_missing == 0
        if flow is not None and clean:
            self._monitored.add(block.index)
            if self._detector is None:
                self._detector = self._new_detector(ch, block.index)
            effort = [_received(by_label[e]) for e in ch.effort if e in by_label]
            eff = np.stack(effort) if len(effort) == len(ch.effort) and effort else None  # (k, n)
            if ch.effort and eff is None:
                eff = np.zeros((1, flow.data.shape[0]))  # a belt vanished: no effort signal
            sp = None
            if ch.spo2 is not None:
                s = by_label.get(ch.spo2)
                sp = (ch.spo2_at_flow_rate(_received(s)) if s is not None
                      else np.full(flow.data.shape[0], np.nan))
                self._check_spo2(ch.spo2, sp)
            # += : a segment flushed above (a late SpO2) keeps its decided events
            updates += self._rebase(self._detector.push(_received(flow), eff, sp))
        elif self._detector is not None:
            updates = self._close_segment()
            log.info("bed %s: airflow interrupted at epoch %d; respiratory segment closed",
                     self.bed, block.index)
        alerts = self.tracker.on_updates(updates)
        return [self._message(a, block.index, anchor, utc_offset) for a in alerts]

    def _check_spo2(self, label: str, sp: np.ndarray) -> None:
        """Warn once when a whole epoch of SpO2 holds no saturation in 50-100 % (a fraction,
        another unit, or not an oximeter): every hypopnea is then rejected for lack of SpO2."""
        finite = sp[np.isfinite(sp)]
        if self._spo2_warned or finite.size == 0 or ((finite >= 50) & (finite <= 100)).any():
            return
        self._spo2_warned = True
        log.warning("bed %s: SpO2 channel %s has no values in 50-100 %% (median %.3g): not a "
                    "saturation in %%? Hypopneas cannot be confirmed (rule %s)", self.bed,
                    label, float(np.median(finite)), self.rule)

    def on_result(self, res: EpochResult, anchor: float | None,
                  utc_offset: float | None) -> list[dict[str, Any]]:
        """The epoch's stage (unscorable counts as unscored) decides waiting events; an epoch
        without a clean airflow counts as unscored (not as sleep time for the AHI)."""
        if self.channels is None:
            return []
        stage = res.stage_index if res.index in self._monitored else None
        self._monitored = {i for i in self._monitored if i > res.index}
        alerts = self.tracker.on_stage(res.index, int(Stage.UNSCORED) if stage is None
                                       else stage)
        return [self._message(a, res.index, anchor, utc_offset) for a in alerts]

    def summary(self) -> dict[str, Any]:
        """``ahi`` (events per hour of sleep) and ``severity`` from the confirmed events."""
        s = self.tracker.summary()
        return {"ahi": s.get("ahi"), "severity": s.get("severity")}

    def _message(self, a: dict[str, Any], epoch: int, anchor: float | None,
                 utc_offset: float | None) -> dict[str, Any]:
        onset = None if anchor is None else anchor + float(a["onset_s"])
        return alert_message(
            bed=self.bed, epoch=epoch, event=str(a["type"]), state=str(a["state"]),
            onset_lsl=onset,
            onset_utc=None if (onset is None or utc_offset is None) else onset + utc_offset,
            duration_s=a.get("duration_s"), source="aasm", rule=str(a.get("rule") or ""),
            sensor=str(a.get("sensor") or ""), model_id=self.model_id,
            desaturation_pct=a.get("desaturation_pct"), reason=a.get("reason") or None,
        )


def _received(ch: EpochChannel) -> np.ndarray:
    """The channel's samples with NaN where none was received or it was not finite (the epocher
    holds the last good value there; a held airflow is a flat line, i.e. an apnea)."""
    return np.where(ch.received, ch.data, np.nan)

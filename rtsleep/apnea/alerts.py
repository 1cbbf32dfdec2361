"""Per-bed respiratory-event alerts: provisional -> confirmed / retracted, gated by stage.

The daemon feeds :class:`AlertTracker` the updates of a
:class:`rtsleep.apnea.aasm.RespiratoryDetector` and each scored epoch's stage. An alert is

* ``provisional`` when a candidate begins (flow dropped >= 30 % below baseline), type
  ``undetermined``;
* ``confirmed`` once the detector confirms it (duration, and desaturation for a hypopnea) **and**
  the epoch holding its onset is sleep; it then counts in the running AHI;
* ``retracted`` when the detector rejects it, or its onset epoch is wake or unscored.

While the onset epoch's stage is not known yet, a detector-confirmed event stays provisional and is
decided by :meth:`AlertTracker.on_stage`. Onsets in epochs already known to be wake raise no alert
at all. With ``gate_by_stage=False`` (no staging available) events count as soon as confirmed and
the AHI is per hour of recording. Alert dicts are JSON-ready; times are seconds from the bed's
anchor.
"""

from __future__ import annotations

from rtsleep.apnea.aasm import RespEvent, RespUpdate
from rtsleep.apnea.ahi import SLEEP_STAGES, RunningAhi
from rtsleep.data.recording import EPOCH_S, Stage


class AlertTracker:
    """One bed's alerts and AHI."""

    def __init__(self, bed: str, gate_by_stage: bool = True, min_sleep_s: float = 0.0) -> None:
        """``min_sleep_s``: seconds of sleep before the AHI is defined (:class:`RunningAhi`)."""
        self.bed = bed
        self.gate_by_stage = gate_by_stage
        self.ahi = RunningAhi(min_sleep_s)
        self._stages: dict[int, int] = {}
        self._open: dict[int, dict[str, object]] = {}  # detector id -> provisional alert
        self._waiting: dict[int, RespEvent] = {}  # detector-confirmed, stage unknown
        self._silent: set[int] = set()  # onsets during known wake
        self._seq = 0

    def on_stage(self, epoch: int, stage: int) -> list[dict[str, object]]:
        """Record epoch ``epoch``'s stage; decide events waiting for it."""
        self._stages[epoch] = int(stage)
        if self.gate_by_stage:
            self.ahi.add_epoch(int(stage))
        else:
            self.ahi.add_epoch(int(Stage.N2))  # every recorded epoch counts as time at risk
        out = []
        for det_id, ev in list(self._waiting.items()):
            if self._onset_epoch(ev) == epoch:
                del self._waiting[det_id]
                out.append(self._decide(ev))
        return out

    def on_updates(self, updates: list[RespUpdate]) -> list[dict[str, object]]:
        """Detector updates -> alert dicts whose state changed, in order."""
        out = []
        for u in updates:
            ev = u.event
            if u.kind == "onset":
                known = self._stages.get(self._onset_epoch(ev))
                if self.gate_by_stage and known is not None and known not in SLEEP_STAGES:
                    self._silent.add(ev.id)
                    continue
                alert = self._alert(ev, "provisional")
                alert["type"] = "undetermined"
                alert["duration_s"] = None
                self._open[ev.id] = alert
                out.append(alert)
            elif ev.id in self._silent:
                self._silent.discard(ev.id)
            elif u.kind == "rejected":
                self._open.pop(ev.id, None)
                out.append(self._alert(ev, "retracted", ev.reason))
            else:
                stage = self._stages.get(self._onset_epoch(ev))
                if self.gate_by_stage and stage is None:
                    self._waiting[ev.id] = ev
                    continue
                out.append(self._decide(ev))
        return out

    def summary(self) -> dict[str, object]:
        """Running AHI for the status message."""
        return {"bed": self.bed, **self.ahi.summary()}

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _onset_epoch(ev: RespEvent) -> int:
        return int(ev.onset_s // EPOCH_S)

    def _decide(self, ev: RespEvent) -> dict[str, object]:
        self._open.pop(ev.id, None)
        if self.gate_by_stage:
            stage = self._stages[self._onset_epoch(ev)]
            if stage not in SLEEP_STAGES:
                why = "wake" if stage == Stage.W else "stage unscored"
                return self._alert(ev, "retracted", f"onset epoch is {why}")
        self.ahi.add_event()
        return self._alert(ev, "confirmed")

    def _alert(self, ev: RespEvent, state: str, reason: str = "") -> dict[str, object]:
        self._seq += 1
        return {
            "bed": self.bed,
            "id": f"{self.bed}-{ev.id}",
            "seq": self._seq,
            "state": state,
            "onset_s": round(ev.onset_s, 3),
            "duration_s": round(ev.duration_s, 3),
            "type": ev.type.value,
            "rule": ev.rule,
            "sensor": ev.sensor,
            "desaturation_pct": None
            if ev.desaturation_pct is None
            else round(ev.desaturation_pct, 2),
            "reason": reason,
        }

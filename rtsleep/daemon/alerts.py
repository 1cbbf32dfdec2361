"""Per-bed respiratory alerts from the model's per-epoch apnea / hypopnea probabilities, and AHI.

For each event type (``apnea``, ``hypopnea``) a bed runs a small state machine over its epochs:

- an epoch scored as sleep (not W when ``gate_wake``) with probability >= the threshold opens an
  event and publishes ``provisional``;
- a second such epoch in a row publishes ``confirmed``;
- the first epoch that is below the threshold, wake, or unscorable closes the event: a confirmed
  one publishes ``ended`` (with its duration) and counts towards the AHI, a provisional one
  publishes ``retracted``.

The AHI estimate is confirmed events per hour of scored sleep (non-W epochs); it is ``None`` until
``min_sleep_s`` of sleep has been scored, so the first minutes do not give absurd rates.
Severity classes (AASM): < 5 normal, 5-15 mild, 15-30 moderate, >= 30 severe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtsleep.daemon.messages import alert_message
from rtsleep.daemon.scorer import EpochResult
from rtsleep.data.recording import EPOCH_S, STAGE_NAMES

EVENTS = ("apnea", "hypopnea")


def severity(ahi: float | None) -> str | None:
    """AASM severity class of an AHI (events/h), or ``None``."""
    if ahi is None:
        return None
    if ahi < 5:
        return "normal"
    if ahi < 15:
        return "mild"
    if ahi < 30:
        return "moderate"
    return "severe"


@dataclass
class AlertThresholds:
    """Per-epoch probabilities that open an event; ``gate_wake``: nothing counts during W."""

    apnea_prob: float = 0.5
    hypopnea_prob: float = 0.5
    gate_wake: bool = True
    min_sleep_s: float = 600.0


class BedAlerts:
    """The alert state machines and AHI counters of one bed (see the module docstring)."""

    def __init__(self, bed: str, thresholds: AlertThresholds, model_id: str = "",
                 source: str = "model", sensor: str = "model",
                 events: tuple[str, ...] = EVENTS,
                 names: dict[str, str] | None = None) -> None:
        """``events``: which probabilities of the results to follow (``apnea``, ``hypopnea``);
        ``names``: the event name published for each (default: the same); ``source``/``sensor``
        go into the messages."""
        self.bed = bed
        self.t = thresholds
        self.model_id = model_id
        self.source = source
        self.sensor = sensor
        self.events = tuple(events)
        self.names = {e: e for e in self.events} | dict(names or {})
        self.active: dict[str, dict[str, Any]] = {}
        self.n_events: dict[str, int] = {e: 0 for e in self.events}
        self.sleep_s = 0.0

    def _threshold(self, event: str) -> float:
        return self.t.apnea_prob if event == "apnea" else self.t.hypopnea_prob

    def _msg(self, res: EpochResult, event: str, state: str, ev: dict[str, Any],
             utc_offset: float | None) -> dict[str, Any]:
        onset = ev["onset_lsl"]
        return alert_message(
            bed=self.bed, epoch=res.index, event=self.names[event], state=state,
            onset_lsl=onset,
            onset_utc=None if (onset is None or utc_offset is None) else onset + utc_offset,
            duration_s=ev["n_epochs"] * EPOCH_S, source=self.source,
            probability=ev["max_prob"], rule=f"p>={self._threshold(event):g} per 30-s epoch",
            sensor=self.sensor, model_id=self.model_id,
        )

    def update(self, res: EpochResult, utc_offset: float | None = None) -> list[dict[str, Any]]:
        """Advance with one epoch result; returns the alert messages (without ``seq``/``run``).

        ``utc_offset``: POSIX seconds minus LSL seconds, for ``onset_utc``.
        """
        stage = res.stage_index
        asleep = stage is not None and STAGE_NAMES[stage] != "W"
        if asleep:
            self.sleep_s += EPOCH_S
        out: list[dict[str, Any]] = []
        for event in self.events:
            prob = res.apnea_prob if event == "apnea" else res.hypopnea_prob
            counts = (res.scored and prob is not None and prob >= self._threshold(event)
                      and (asleep or not self.t.gate_wake))
            ev = self.active.get(event)
            if counts and prob is not None:
                if ev is None:
                    ev = self.active[event] = {"onset_epoch": res.index, "onset_lsl": res.start,
                                               "n_epochs": 1, "max_prob": prob,
                                               "state": "provisional"}
                    out.append(self._msg(res, event, "provisional", ev, utc_offset))
                else:
                    ev["n_epochs"] += 1
                    ev["max_prob"] = max(ev["max_prob"], prob)
                    if ev["state"] == "provisional":
                        ev["state"] = "confirmed"
                        out.append(self._msg(res, event, "confirmed", ev, utc_offset))
            elif ev is not None:
                if ev["state"] == "confirmed":
                    self.n_events[event] += 1
                    out.append(self._msg(res, event, "ended", ev, utc_offset))
                else:
                    out.append(self._msg(res, event, "retracted", ev, utc_offset))
                del self.active[event]
        return out

    def ahi(self) -> float | None:
        """Confirmed events (ended) per hour of scored sleep, or ``None`` before ``min_sleep_s``."""
        if self.sleep_s < self.t.min_sleep_s:
            return None
        return sum(self.n_events.values()) / (self.sleep_s / 3600.0)

    def summary(self) -> dict[str, Any]:
        """``ahi``, ``severity``, event counts and sleep time, for the heartbeat."""
        ahi = self.ahi()
        return {"ahi": ahi, "severity": severity(ahi), "events": dict(self.n_events),
                "sleep_s": self.sleep_s}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (persisted with the bed state)."""
        return {"active": {k: dict(v) for k, v in self.active.items()},
                "n_events": dict(self.n_events), "sleep_s": self.sleep_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.active = {str(k): dict(v) for k, v in state.get("active", {}).items()}
        self.n_events = {e: int(state.get("n_events", {}).get(e, 0)) for e in self.events}
        self.sleep_s = float(state.get("sleep_s", 0.0))

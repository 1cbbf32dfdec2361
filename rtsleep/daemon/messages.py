"""The ZeroMQ wire format: topics and versioned JSON messages.

The JSON Schema is ``rtsleep/schemas/messages.schema.json``.

Every message is two frames: the topic (``stage/<bed>/``, ``alert/<bed>/`` or ``status/``; ending in
``/`` so that ``stage/bed1/`` does not match ``bed10``) and one UTF-8 JSON object. JSON is strict:
``NaN`` and infinities become ``null`` (browsers' ``JSON.parse`` rejects ``NaN``).

Common fields: ``schema`` (``"rtsleep.<kind>/<version>"``), ``seq`` (per publisher process, starts
at 0) and ``run`` (random id of the publisher process): ``(run, seq)`` identifies a message, so a
client drops the repeats that the last-value cache resends.

Stage messages carry one epoch of one bed; the probabilities are in the class order W, N1, N2, N3,
R. Times: ``start_lsl``/``end_lsl`` are LSL clock seconds in the daemon (seconds from the recording
start in ``rtsleep score`` output); ``start_utc``/``end_utc`` are ISO 8601 UTC or ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rtsleep.data.recording import STAGE_NAMES

SCHEMA_VERSION = 1
STAGE_SCHEMA = f"rtsleep.stage/{SCHEMA_VERSION}"
ALERT_SCHEMA = f"rtsleep.alert/{SCHEMA_VERSION}"
STATUS_SCHEMA = f"rtsleep.status/{SCHEMA_VERSION}"

STATUS_TOPIC = "status/"


def stage_topic(bed: str) -> str:
    """Topic of a bed's stage messages."""
    return f"stage/{bed}/"


def alert_topic(bed: str) -> str:
    """Topic of a bed's alert messages."""
    return f"alert/{bed}/"


def utc_iso(t_unix: float | None) -> str | None:
    """POSIX seconds -> ``"2026-11-21T03:27:00.000000Z"``; ``None`` or non-finite -> ``None``."""
    if t_unix is None or not math.isfinite(t_unix):
        return None
    return datetime.fromtimestamp(t_unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def sanitize(obj: Any) -> Any:
    """Recursively replace NaN/inf floats by ``None`` and tuples by lists (strict JSON)."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, Mapping):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [sanitize(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return sanitize(obj.item())
    return obj


def encode(msg: Mapping[str, Any]) -> bytes:
    """One message -> compact strict JSON bytes (never ``NaN``)."""
    return json.dumps(sanitize(msg), allow_nan=False, separators=(",", ":")).encode("utf-8")


def decode(payload: bytes) -> dict[str, Any]:
    """JSON bytes -> dict (for clients and tests)."""
    out = json.loads(payload.decode("utf-8"))
    if not isinstance(out, dict):
        raise ValueError("message is not a JSON object")
    return out


@dataclass
class ChannelQuality:
    """Quality of one channel in one epoch: modality, fraction of clean samples, flags."""

    modality: str
    clean: float
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"modality": self.modality, "clean": _finite(self.clean), "flags": list(self.flags)}


def stage_message(
    *,
    bed: str,
    epoch: int,
    start_lsl: float | None,
    end_lsl: float | None,
    start_utc: float | None,
    end_utc: float | None,
    probs: Sequence[float] | None,
    apnea_prob: float | None,
    hypopnea_prob: float | None,
    quality: Mapping[str, ChannelQuality],
    model_id: str,
    reason: str | None = None,
    latency_ms: float | None = None,
) -> dict[str, Any]:
    """A stage message without ``seq``/``run`` (the publisher adds them).

    ``probs``: 5 class probabilities (W, N1, N2, N3, R) or ``None`` when unscorable, in which case
    ``reason`` says why and ``stage`` is ``null``. ``start_utc``/``end_utc`` in POSIX seconds.
    """
    if probs is not None and len(probs) != len(STAGE_NAMES):
        raise ValueError(f"expected {len(STAGE_NAMES)} probabilities, got {len(probs)}")
    scored = probs is not None and reason is None
    stage: str | None = None
    prob_map: dict[str, float | None] | None = None
    if probs is not None:
        prob_map = {name: _finite(p) for name, p in zip(STAGE_NAMES, probs, strict=True)}
        if scored:
            best = max(range(len(probs)), key=lambda i: float(probs[i]))
            stage = STAGE_NAMES[best]
    return {
        "schema": STAGE_SCHEMA,
        "bed": bed,
        "epoch": int(epoch),
        "start_lsl": _finite(start_lsl),
        "end_lsl": _finite(end_lsl),
        "start_utc": utc_iso(start_utc),
        "end_utc": utc_iso(end_utc),
        "status": "scored" if scored else "unscorable",
        "reason": reason,
        "stage": stage,
        "probs": prob_map,
        "apnea_prob": _finite(apnea_prob),
        "hypopnea_prob": _finite(hypopnea_prob),
        "quality": {label: q.to_json() for label, q in quality.items()},
        "model_id": model_id,
        "latency_ms": _finite(latency_ms),
    }


def alert_message(
    *,
    bed: str,
    epoch: int,
    event: str,
    state: str,
    onset_lsl: float | None,
    duration_s: float | None,
    source: str,
    probability: float | None = None,
    rule: str | None = None,
    sensor: str | None = None,
    onset_utc: float | None = None,
    model_id: str = "",
    desaturation_pct: float | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """An alert: ``event`` apnea/hypopnea/..., ``state`` provisional/confirmed/retracted/ended.

    ``source`` is ``"model"`` (per-epoch probability over the configured threshold), ``"ecg"``
    (the ECG apnea model's per-epoch probability) or ``"aasm"`` (respiratory-signal detector);
    ``rule``/``sensor`` name the criteria; ``desaturation_pct`` (SpO2 drop, % points) and
    ``reason`` (why retracted) are optional.
    """
    return {
        "schema": ALERT_SCHEMA,
        "bed": bed,
        "epoch": int(epoch),
        "event": event,
        "state": state,
        "onset_lsl": _finite(onset_lsl),
        "onset_utc": utc_iso(onset_utc),
        "duration_s": _finite(duration_s),
        "source": source,
        "probability": _finite(probability),
        "rule": rule,
        "sensor": sensor,
        "model_id": model_id,
        "desaturation_pct": _finite(desaturation_pct),
        "reason": reason,
    }


def status_message(
    *,
    state: str,
    uptime_s: float,
    model_id: str,
    beds: Mapping[str, Mapping[str, Any]],
    now_utc: float,
) -> dict[str, Any]:
    """The heartbeat: daemon ``state`` (running/stopping) and per-bed liveness and AHI summary.

    ``beds[bed]``: ``last_epoch`` (int or None), ``streams_connected`` (int: streams whose inlet
    is open and delivered samples within ``daemon.epoch_timeout_s``), ``streams_open`` (int:
    streams whose inlet is open, silent or not), ``streams_total`` (int),
    ``epochs_scored``, ``epochs_unscorable`` and ``ahi`` (events/h of sleep or None),
    ``severity`` (normal/mild/moderate/severe or None).
    """
    return {
        "schema": STATUS_SCHEMA,
        "state": state,
        "time_utc": utc_iso(now_utc),
        "uptime_s": _finite(uptime_s),
        "model_id": model_id,
        "beds": {bed: dict(info) for bed, info in beds.items()},
    }

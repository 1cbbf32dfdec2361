"""AASM 2012 adult respiratory-event rules on airflow, effort and SpO2, streaming.

Two layers, both causal and chunk-exact:

* :class:`EnvelopeTracker` turns a raw breathing signal into an amplitude envelope: the
  peak-to-peak range over a trailing window of ``envelope_s`` seconds, then the minimum of that
  range over the next ``envelope_s`` seconds (a morphological opening). A sample's envelope is low
  exactly when some whole window around it holds only low breaths, so the low run of an event of
  true length D lasts D (not D - window). The envelope lags the input by ``envelope_s``.
* :class:`RespiratoryScorer` applies the rules to envelope samples:

  - **baseline**: median of the per-second mean envelope over the last ``baseline_s`` seconds of
    breathing outside events, frozen at an event's onset;
  - **event**: a run with ``drop = 1 - env / baseline >= hypopnea_drop`` (0.30) lasting
    ``>= min_duration_s`` (10 s);
  - **apnea**: the run holds a sub-run with ``drop >= apnea_drop`` (0.90) of ``>= min_duration_s``;
    typed from effort: central (effort absent in both halves of the apnea), mixed (absent in the
    first half, present in the second), obstructive (otherwise); untyped without an effort channel;
  - **hypopnea**: otherwise, confirmed when SpO2 falls by ``>= desat_pct`` points (3 for rule
    ``1A``, 4 for ``1B``) from its maximum over the ``desat_pre_s`` seconds before onset to its
    minimum between onset and ``desat_window_s`` seconds after the end; rule ``flow`` drops the
    oxygen criterion (for recordings without a usable SpO2, and marked as such).

All thresholds are inclusive (``>=``) up to a 1e-6 tolerance. Times are seconds from the first
sample; SpO2 in %, values outside [50, 100] count as missing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from rtsleep.data.recording import EventType

Rule = Literal["1A", "1B", "flow"]
_EPS = 1e-6
_DESAT_BY_RULE = {"1A": 3.0, "1B": 4.0}


@dataclass(frozen=True)
class AasmConfig:
    """Rule thresholds; defaults are AASM 2012 adult, hypopnea rule 1A."""

    rule: Rule = "1A"
    apnea_drop: float = 0.90
    hypopnea_drop: float = 0.30
    min_duration_s: float = 10.0
    desat_window_s: float = 30.0
    desat_pre_s: float = 30.0
    baseline_s: float = 120.0
    min_baseline_s: float = 30.0
    envelope_s: float = 6.0
    effort_present_ratio: float = 0.25
    effort_absent_frac: float = 0.2
    #: A "drop" longer than this is a lost or displaced sensor, not an event: it is rejected and
    #: the baseline is rebuilt from scratch.
    max_event_s: float = 120.0

    @property
    def desat_pct(self) -> float | None:
        """Required desaturation in % points, None for rule ``flow``."""
        return _DESAT_BY_RULE.get(self.rule)

    def __post_init__(self) -> None:
        if self.rule not in ("1A", "1B", "flow"):
            raise ValueError(f"unknown hypopnea rule {self.rule!r}; choose 1A, 1B or flow")
        if not 0.0 < self.hypopnea_drop <= self.apnea_drop <= 1.0:
            raise ValueError("need 0 < hypopnea_drop <= apnea_drop <= 1")


@dataclass
class RespEvent:
    """One scored (or rejected) respiratory event; times in s from the first sample."""

    id: int
    onset_s: float
    duration_s: float
    type: EventType
    rule: str
    sensor: str
    status: Literal["pending", "confirmed", "rejected"] = "pending"
    desaturation_pct: float | None = None
    max_drop: float = 0.0
    reason: str = ""

    @property
    def end_s(self) -> float:
        return self.onset_s + self.duration_s


@dataclass(frozen=True)
class RespUpdate:
    """A scorer change: ``onset`` (a candidate begins), ``confirmed`` or ``rejected``."""

    kind: Literal["onset", "confirmed", "rejected"]
    event: RespEvent


class EnvelopeTracker:
    """Causal amplitude envelope of a breathing signal at its own rate ``fs``.

    ``push(chunk)`` returns the envelope of earlier samples: after ``n`` input samples in total,
    ``max(0, n - (w - 1))`` outputs have been returned (``w = round(window_s * fs)``), and output
    ``j`` describes input sample ``j``: it is low when some ``w``-sample window containing ``j``
    has a low peak-to-peak range. Before the first sample the signal is taken as constant.
    """

    def __init__(self, fs: float, window_s: float) -> None:
        self.w = max(2, int(round(window_s * fs)))
        self._x: np.ndarray | None = None
        self._a = np.zeros(0)

    @property
    def lag(self) -> int:
        """Samples between an input sample and the envelope output that describes it."""
        return self.w - 1

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Raw samples ``(n,)`` -> newly completed envelope samples ``(m,)``."""
        x = np.asarray(chunk, dtype=np.float64)
        if x.size == 0:
            return np.zeros(0)
        if self._x is None:
            self._x = np.full(self.w - 1, x[0])
        xx = np.concatenate([self._x, x])  # (w-1+n,)
        self._x = xx[-(self.w - 1) :]
        a = _window_reduce(xx, self.w, maximum_filter1d) - _window_reduce(
            xx, self.w, minimum_filter1d)  # (n,) trailing peak-to-peak
        aa = np.concatenate([self._a, a])
        if aa.size < self.w:
            self._a = aa
            return np.zeros(0)
        env = _window_reduce(aa, self.w, minimum_filter1d)  # (len(aa)-w+1,) forward opening
        self._a = aa[-(self.w - 1) :]
        return env


def _window_reduce(x: np.ndarray, w: int, filt: Callable[..., np.ndarray]) -> np.ndarray:
    """``filt`` (scipy's running max or min, O(1) per sample) over each ``w``-sample window of
    ``x``: output ``i`` covers ``x[i : i + w]``, ``(len(x) - w + 1,)``. A window holding a NaN
    gives NaN, as numpy's reductions over the windows did."""
    nan = np.isnan(x)
    has_nan = bool(nan.any())
    out = filt(np.where(nan, 0.0, x) if has_nan else x, w, mode="nearest")[
        w // 2 : w // 2 + x.size - w + 1]  # scipy centres window i + w // 2 on its sample
    if has_nan:
        counts = np.concatenate([[0], np.cumsum(nan)])  # (len(x) + 1,)
        out[(counts[w:] - counts[:-w]) > 0] = np.nan
    return out


class _RunningBaseline:
    """Median of per-second means of samples outside events, over the last ``n_s`` seconds."""

    def __init__(self, per_s: int, n_s: float, min_s: float) -> None:
        self.per_s = per_s
        self.hist: deque[float] = deque(maxlen=max(1, int(round(n_s))))
        self.min_n = max(1, int(round(min_s)))
        self._acc = 0.0
        self._n = 0
        self._count = 0
        self.value: float | None = None

    def reset(self) -> None:
        self.hist.clear()
        self._acc, self._n = 0.0, 0
        self.value = None

    def add(self, v: float, use: bool) -> None:
        if use and np.isfinite(v):
            self._acc += v
            self._n += 1
        self._count += 1
        if self._count % self.per_s == 0:
            if self._n > 0:
                self.hist.append(self._acc / self._n)
            self._acc, self._n = 0.0, 0
            if len(self.hist) >= self.min_n:
                self.value = float(np.median(np.fromiter(self.hist, float)))


@dataclass
class _Candidate:
    event: RespEvent
    start: int
    baseline: float
    effort_baseline: float | None
    apnea_run: int = 0
    best_apnea: tuple[int, int] = (0, 0)  # (start, length) of the longest apnea sub-run
    effort: list[bool] = field(default_factory=list)


class RespiratoryScorer:
    """The AASM state machine on envelope samples at rate ``fs`` (see the module docstring)."""

    def __init__(
        self,
        fs: float,
        config: AasmConfig | None = None,
        sensor: str = "airflow",
        has_effort: bool = False,
        has_spo2: bool = False,
    ) -> None:
        self.fs = float(fs)
        self.cfg = config or AasmConfig()
        self.sensor = sensor
        self.has_effort = has_effort
        self.has_spo2 = has_spo2
        per_s = max(1, int(round(fs)))
        self._flow_base = _RunningBaseline(per_s, self.cfg.baseline_s, self.cfg.min_baseline_s)
        self._effort_base = _RunningBaseline(per_s, self.cfg.baseline_s, self.cfg.min_baseline_s)
        self._n = 0  # samples consumed
        self._cand: _Candidate | None = None
        self._pending: list[RespEvent] = []
        self._next_id = 0
        keep = max(1, int(round(self.cfg.desat_pre_s * fs)))
        self._spo2_hist: deque[float] = deque(maxlen=keep)  # pre-onset SpO2 history
        self._spo2_min: dict[int, float] = {}  # pending hypopnea id -> min SpO2 since onset
        self._spo2_ref: dict[int, float] = {}
        self._min_len = int(np.ceil(self.cfg.min_duration_s * self.fs - _EPS))
        self._max_len = int(round(self.cfg.max_event_s * self.fs))

    @property
    def time_s(self) -> float:
        """Time of the next sample, s."""
        return self._n / self.fs

    def push(
        self,
        flow_env: np.ndarray,
        effort_env: np.ndarray | None = None,
        spo2: np.ndarray | None = None,
    ) -> list[RespUpdate]:
        """Envelope (and SpO2) samples ``(n,)`` -> updates, in time order."""
        flow = np.asarray(flow_env, dtype=np.float64)
        n = flow.size
        eff = np.asarray(effort_env, dtype=np.float64) if effort_env is not None else None
        sp = np.asarray(spo2, dtype=np.float64) if spo2 is not None else None
        for arr, name in ((eff, "effort"), (sp, "spo2")):
            if arr is not None and arr.size != n:
                raise ValueError(f"{name} chunk has {arr.size} samples, flow has {n}")
        if sp is not None:
            sp = np.where((sp >= 50.0) & (sp <= 100.0), sp, np.nan)
        out: list[RespUpdate] = []
        for i in range(n):
            self._step(
                float(flow[i]),
                float(eff[i]) if eff is not None else None,
                float(sp[i]) if sp is not None else float("nan"),
                out,
            )
        return out

    def flush(self) -> list[RespUpdate]:
        """End of recording: close the open candidate and decide pending hypopneas."""
        out: list[RespUpdate] = []
        if self._cand is not None:
            self._close(self._n, out)
        for ev in list(self._pending):
            self._decide_hypopnea(ev, out, final=True)
        return out

    # -- internals -----------------------------------------------------------------------------

    def _step(self, f: float, e: float | None, s: float, out: list[RespUpdate]) -> None:
        cfg = self.cfg
        j = self._n
        base = self._flow_base.value
        in_event = False
        if self._cand is None and base is not None and base > 0:
            drop = 1.0 - f / base
            if drop >= cfg.hypopnea_drop - _EPS:
                ev = RespEvent(
                    self._next_id, j / self.fs, 0.0, EventType.HYPOPNEA, cfg.rule, self.sensor
                )
                self._next_id += 1
                self._cand = _Candidate(
                    ev, j, base, self._effort_base.value if e is not None else None
                )
                self._spo2_ref[ev.id] = _nanmax(self._spo2_hist)
                self._spo2_min[ev.id] = float("nan")
                out.append(RespUpdate("onset", replace(ev)))
        if self._cand is not None:
            c = self._cand
            drop = 1.0 - f / c.baseline
            if j - c.start >= self._max_len:
                c.event.duration_s = (j - c.start) / self.fs
                c.event.status = "rejected"
                c.event.reason = f"longer than {cfg.max_event_s:g} s: sensor lost?"
                self._cand = None
                self._spo2_min.pop(c.event.id, None)
                self._spo2_ref.pop(c.event.id, None)
                self._flow_base.reset()
                self._effort_base.reset()
                out.append(RespUpdate("rejected", replace(c.event)))
            elif drop >= cfg.hypopnea_drop - _EPS:
                in_event = True
                c.event.max_drop = max(c.event.max_drop, drop)
                if drop >= cfg.apnea_drop - _EPS:
                    c.apnea_run += 1
                    if c.apnea_run > c.best_apnea[1]:
                        c.best_apnea = (j - c.apnea_run + 1 - c.start, c.apnea_run)
                else:
                    c.apnea_run = 0
                present = (
                    e is not None
                    and c.effort_baseline is not None
                    and e >= cfg.effort_present_ratio * c.effort_baseline - _EPS
                )
                c.effort.append(bool(present))
            else:
                self._close(j, out)
        # SpO2 bookkeeping: pre-onset history and running minima of open/pending events.
        for k in self._spo2_min:
            self._spo2_min[k] = _fmin(self._spo2_min[k], s)
        self._spo2_hist.append(s)
        self._n += 1
        for ev in list(self._pending):
            self._decide_hypopnea(ev, out, final=False)
        self._flow_base.add(f, use=not in_event)
        if e is not None:
            self._effort_base.add(e, use=not in_event)

    def _close(self, j_end: int, out: list[RespUpdate]) -> None:
        c = self._cand
        if c is None:
            return
        self._cand = None
        ev = c.event
        length = j_end - c.start
        ev.duration_s = length / self.fs
        if length < self._min_len:
            ev.status, ev.reason = "rejected", "shorter than the minimum duration"
            self._spo2_min.pop(ev.id, None)
            self._spo2_ref.pop(ev.id, None)
            out.append(RespUpdate("rejected", replace(ev)))
            return
        if c.best_apnea[1] >= self._min_len:
            ev.type = self._apnea_type(c)
            ev.status = "confirmed"
            self._spo2_min.pop(ev.id, None)
            self._spo2_ref.pop(ev.id, None)
            out.append(RespUpdate("confirmed", replace(ev)))
            return
        ev.type = EventType.HYPOPNEA
        self._pending.append(ev)
        self._decide_hypopnea(ev, out, final=False)

    def _apnea_type(self, c: _Candidate) -> EventType:
        if c.effort_baseline is None:
            return EventType.APNEA
        s0, n = c.best_apnea
        eff = np.asarray(c.effort[s0 : s0 + n], dtype=bool)
        half = n // 2
        first, second = eff[:half].mean(), eff[half:].mean()
        absent = self.cfg.effort_absent_frac
        if first < absent and second < absent:
            return EventType.APNEA_CENTRAL
        if first < absent:
            return EventType.APNEA_MIXED
        return EventType.APNEA_OBSTRUCTIVE

    def _decide_hypopnea(self, ev: RespEvent, out: list[RespUpdate], final: bool) -> None:
        need = self.cfg.desat_pct
        if need is None:
            ev.status = "confirmed"
            ev.reason = "flow criterion only (no oxygen criterion)"
        else:
            ref, low = (
                self._spo2_ref.get(ev.id, float("nan")),
                self._spo2_min.get(ev.id, float("nan")),
            )
            desat = ref - low if np.isfinite(ref) and np.isfinite(low) else None
            ev.desaturation_pct = desat
            window_over = self.time_s > ev.end_s + self.cfg.desat_window_s + _EPS
            if desat is not None and desat >= need - _EPS:
                ev.status = "confirmed"
            elif window_over or final:
                ev.status = "rejected"
                ev.reason = (
                    "no valid SpO2" if desat is None else f"desaturation {desat:.1f} % < {need:g} %"
                )
            else:
                return
        self._pending.remove(ev)
        self._spo2_min.pop(ev.id, None)
        self._spo2_ref.pop(ev.id, None)
        out.append(RespUpdate("confirmed" if ev.status == "confirmed" else "rejected", replace(ev)))


def _nanmax(values: deque[float]) -> float:
    arr = np.fromiter(values, float)
    return float(np.nanmax(arr)) if arr.size and np.isfinite(arr).any() else float("nan")


def _fmin(a: float, b: float) -> float:
    if not np.isfinite(b):
        return a
    return b if not np.isfinite(a) else min(a, b)


SCORER_MAX_HZ = 50.0
"""Above this rate the envelopes go to the (per-sample, Python) rule scorer decimated by the
integer factor ``floor(fs / SCORER_MAX_HZ)``: a 500-Hz airflow is scored at 50 Hz, ten times
cheaper, while event times keep a resolution of 0.02 s or better. The envelope is an opening over
``envelope_s`` seconds, so it holds nothing faster to lose."""


class RespiratoryDetector:
    """Raw airflow (+ effort, + SpO2) chunks at one rate ``fs`` -> :class:`RespUpdate` s.

    Effort is the sum of the belts given (thorax + abdomen, like a RIP sum). The output lags the
    input by ``envelope_s`` (plus the rule's own waiting: the event end, the desaturation window).
    Above :data:`SCORER_MAX_HZ` the rules run on every ``decimation``-th envelope sample.
    """

    def __init__(
        self,
        fs: float,
        config: AasmConfig | None = None,
        sensor: str = "airflow",
        has_effort: bool = False,
        has_spo2: bool = False,
    ) -> None:
        self.cfg = config or AasmConfig()
        self.fs = float(fs)
        self._flow = EnvelopeTracker(fs, self.cfg.envelope_s)
        self._effort = EnvelopeTracker(fs, self.cfg.envelope_s) if has_effort else None
        self._spo2: deque[float] | None = deque() if has_spo2 else None
        self.decimation = max(1, int(self.fs // SCORER_MAX_HZ))
        self._phase = 0  # envelope samples since the last one kept, modulo ``decimation``
        self.scorer = RespiratoryScorer(self.fs / self.decimation, self.cfg, sensor, has_effort,
                                        has_spo2)

    def push(
        self, flow: np.ndarray, effort: np.ndarray | None = None, spo2: np.ndarray | None = None
    ) -> list[RespUpdate]:
        """Equal-length raw chunks ``(n,)``; effort may be ``(k, n)`` (belts, summed)."""
        flow = np.asarray(flow, dtype=np.float64)
        if (effort is None) != (self._effort is None) or (spo2 is None) != (self._spo2 is None):
            raise ValueError("push the same channels (effort, spo2) as declared at construction")
        env = self._flow.push(flow)
        eff_env = None
        if effort is not None and self._effort is not None:
            eff = np.asarray(effort, dtype=np.float64)
            eff = eff.sum(axis=0) if eff.ndim == 2 else eff  # (k, n) -> (n,)
            if eff.shape != flow.shape:
                raise ValueError(f"effort chunk {eff.shape} does not match flow {flow.shape}")
            eff_env = self._effort.push(eff)
        sp = None
        if spo2 is not None and self._spo2 is not None:
            s_arr = np.asarray(spo2, dtype=np.float64)
            if s_arr.shape != flow.shape:
                raise ValueError(f"spo2 chunk {s_arr.shape} does not match flow {flow.shape}")
            self._spo2.extend(s_arr.tolist())
            sp = np.array([self._spo2.popleft() for _ in range(env.size)])
        if self.decimation > 1:  # every decimation-th envelope sample, across chunk borders
            keep = (self._phase + np.arange(env.size)) % self.decimation == 0  # (m,)
            self._phase = (self._phase + env.size) % self.decimation
            env = env[keep]
            eff_env = eff_env[keep] if eff_env is not None else None
            sp = sp[keep] if sp is not None else None
        return self.scorer.push(env, eff_env, sp)

    def flush(self) -> list[RespUpdate]:
        """End of recording (the last ``envelope_s`` seconds are not scored)."""
        return self.scorer.flush()


def detect_respiratory_events(
    flow: np.ndarray,
    fs: float,
    effort: np.ndarray | None = None,
    spo2: np.ndarray | None = None,
    config: AasmConfig | None = None,
    sensor: str = "airflow",
    chunk_s: float | None = None,
) -> list[RespEvent]:
    """Offline: confirmed events of a whole recording (the streaming detector, fed in chunks).

    ``flow (n,)``, ``effort (n,)`` or ``(k, n)``, ``spo2 (n,)`` at ``fs`` Hz; ``chunk_s`` None feeds
    everything at once (the result does not depend on it).
    """
    det = RespiratoryDetector(fs, config, sensor, effort is not None, spo2 is not None)
    n = int(np.asarray(flow).shape[-1])
    step = n if chunk_s is None else max(1, int(round(chunk_s * fs)))
    updates: list[RespUpdate] = []
    for a in range(0, n, step):
        b = min(n, a + step)
        e = None if effort is None else np.asarray(effort)[..., a:b]
        s = None if spo2 is None else np.asarray(spo2)[a:b]
        updates += det.push(np.asarray(flow)[a:b], e, s)
    updates += det.flush()
    return [u.event for u in updates if u.kind == "confirmed"]

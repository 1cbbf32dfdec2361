"""Cut a bed's streams into 30-s epochs on LSL timestamps and sample indices, never the wall clock.

Public API (stable):

- ``BedEpocher(bed, stream_keys, *, anchor=None, next_index=0, timeout_s=5.0, ...)``: one bed,
  fed by one or several streams (one per modality in a replay).
  - ``attach(key, layout)`` once a stream's channel layout is known (``inlet.StreamLayout``).
  - ``push(key, samples (n, n_chans), timestamps (n,))``: samples in arrival order, timestamps
    on the stream's grid (``inlet.Dejitter`` output, LSL seconds).
  - ``pop_ready(now=None, lsl_now=None) -> list[EpochBlock]``: the epochs that are complete, in
    index order; with ``lsl_now`` (``pylsl.local_clock()``, the streams' corrected time base)
    also the epochs no stream delivered by the clock rule below.
  - ``anchor`` (LSL time of sample 0 of epoch 0; the bed's first sample timestamp unless given, to
    restore after a restart) and ``next_index`` (the next epoch to emit) are what to persist.
- ``EpochBlock``: bed, index, ``start_lsl``/``end_lsl`` (anchor + 30 k, + 30), ``channels``
  (``EpochChannel``: label, modality, sfreq, unit, stream key, ``data`` float64 ``(30 fs,)`` at the
  source rate -- µV for ExG --, ``received`` bool ``(30 fs,)``), and ``quality`` (``EpochQuality``).

Rules:

- Sample index of a sample with grid time ``t``: ``i = round((t - anchor) * fs)`` (a constant
  sub-sample phase of a stream that starts off the anchor's grid is removed first, so rounding is
  never ambiguous); it belongs to epoch ``k = i // (30 fs)`` (``30 fs`` must be an integer).
- An epoch is emitted when every stream has delivered a sample at or past its end, or
  ``timeout_s`` (monotonic seconds, ``now``) after the first stream did so: a vanished, late or
  never-opened stream then has its channels marked missing and the epoch goes out anyway. Such a
  stream is not waited for again until it catches up. Samples arriving for an epoch already
  emitted are dropped (counted in ``n_late``).
- Missing and non-finite samples are filled deterministically by holding the channel's last good
  value and are False in ``received``; quality counts them before filling. Before the channel's
  first good sample (a stream that starts after the bed's anchor) they take that first value, as
  the filters start (constant at the first sample), so no step from 0 rings through them; 0.0 in an
  epoch without any.
- Indices never repeat or skip: an epoch with no data at all (a gap over a whole epoch, downtime
  before a restart) is emitted with every channel missing, hence ``unscorable``.
- Clock rule (every stream stopped): with ``lsl_now`` given, an epoch that no stream has passed
  is emitted (what it holds, the rest missing: ``unscorable``, "no data from stream(s) ...") once
  its end is older than ``timeout_s`` in the streams' time, taken as
  ``min(lsl_now, t_last + (lsl_now - lsl_at_last))``: ``t_last`` the latest timestamp pushed and
  ``lsl_at_last`` the ``lsl_now`` of the first ``pop_ready`` after it. The ``min`` keeps a replay
  stamped ahead of the clock (faster than real time) from being declared empty early, and the
  extrapolation keeps a stream stamped in the past (synthetic, offset clock) from being
  overtaken. Nothing is emitted before the bed has an anchor; with a restored anchor and no data
  yet, ``t_last`` starts at the end of the last emitted epoch at the first ``pop_ready`` (an
  outage across a restart goes on at one epoch per 30 s). Data arriving later for an index
  already emitted are dropped (``n_late``); indices continue, with no duplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rtsleep.daemon.inlet import ChannelSpec, StreamLayout
from rtsleep.daemon.quality import (
    ChannelQuality,
    EpochQuality,
    QualityConfig,
    channel_quality,
    epoch_quality,
)
from rtsleep.data.channels import (
    DEFAULT_CHANNEL_MAP,
    MIN_EXG_SFREQ,
    too_slow_for_model,
    unit_scale_to_uv,
)
from rtsleep.data.errors import DataError
from rtsleep.data.recording import EPOCH_S, EXG_MODALITIES, Modality

log = logging.getLogger(__name__)


ModalityResolver = Callable[[ChannelSpec, StreamLayout], Modality]


def _as_modality(text: str) -> Modality | None:
    value = text.strip().upper()
    return Modality(value) if value in Modality.__members__ else None


def default_modality(spec: ChannelSpec, layout: StreamLayout) -> Modality:
    """Modality of a channel: its declared type, else the alias table, else the stream type."""
    declared = _as_modality(spec.type)
    if declared is not None:
        return declared
    by_label = DEFAULT_CHANNEL_MAP.resolve(spec.label)
    if by_label != Modality.OTHER:
        return by_label
    return _as_modality(layout.type) or Modality.OTHER


def to_uv_factor(unit: str, modality: Modality, source: str) -> float:
    """Factor that converts an ExG channel's ``unit`` to µV (1.0 for non-ExG channels)."""
    if modality not in EXG_MODALITIES:
        return 1.0
    factor = unit_scale_to_uv(unit)
    if factor is None:
        log.warning("%s: unknown unit %r for an %s channel; assuming µV", source, unit, modality)
        return 1.0
    return factor


@dataclass
class EpochChannel:
    """One channel over one epoch, at the source rate."""

    label: str
    modality: Modality
    sfreq: float
    #: Unit of ``data``: "uV" for ExG channels, the stream's unit otherwise.
    unit: str
    stream: str
    #: ``(n_times,)`` float64, finite; missing samples hold the last good value.
    data: np.ndarray
    #: ``(n_times,)`` bool, False where the sample was missing or not finite.
    received: np.ndarray

    @property
    def n_times(self) -> int:
        return int(self.data.shape[0])


@dataclass
class EpochBlock:
    """One 30-s epoch of one bed: raw samples per channel and their quality."""

    bed: str
    index: int
    #: LSL time of the epoch's first sample and of its end (start + 30 s).
    start_lsl: float
    end_lsl: float
    channels: tuple[EpochChannel, ...]
    quality: EpochQuality

    @property
    def unscorable(self) -> bool:
        return self.quality.unscorable

    def by_modality(self, modality: Modality) -> list[EpochChannel]:
        """Channels of one modality, in stream then channel order."""
        return [c for c in self.channels if c.modality == modality]

    def channel(self, label: str) -> EpochChannel:
        """The channel called ``label``."""
        for c in self.channels:
            if c.label == label:
                return c
        raise KeyError(f"bed {self.bed}: no channel {label!r} in epoch {self.index}")


@dataclass
class _Track:
    """Per-stream state of a bed."""

    key: str
    layout: StreamLayout | None = None
    per_epoch: int = 0
    modalities: tuple[Modality, ...] = ()
    factors: np.ndarray = field(default_factory=lambda: np.ones(0))
    phase: float | None = None
    #: One past the highest sample index received.
    frontier: int = 0
    #: epoch index -> (data (per_epoch, n_chans) NaN where missing, received (per_epoch, n_chans))
    pending: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: (n_chans,) last good value per channel; NaN before the channel's first good sample.
    hold: np.ndarray = field(default_factory=lambda: np.zeros(0))


class BedEpocher:
    """Epochs of one bed from one or several streams (see the module docstring for the rules)."""

    def __init__(
        self,
        bed: str,
        stream_keys: Sequence[str],
        *,
        anchor: float | None = None,
        next_index: int = 0,
        timeout_s: float = 5.0,
        quality: QualityConfig | None = None,
        modality_of: ModalityResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stream_keys:
            raise ValueError(f"bed {bed}: needs at least one stream")
        if len(set(stream_keys)) != len(stream_keys):
            raise ValueError(f"bed {bed}: duplicate stream keys {list(stream_keys)}")
        if next_index < 0:
            raise ValueError(f"bed {bed}: next_index must be >= 0, got {next_index}")
        self.bed = bed
        self.anchor = anchor
        self.next_index = int(next_index)
        self.timeout_s = timeout_s
        self.quality = quality or QualityConfig()
        self._modality_of = modality_of or default_modality
        self._clock = clock
        self._tracks = {k: _Track(k) for k in stream_keys}
        self._wait_since: float | None = None
        self._lagging: set[str] = set()
        #: Latest timestamp pushed (s, LSL) and whether it is newer than the last pop_ready.
        self._t_last: float | None = None
        self._t_fresh = False
        #: (latest timestamp, lsl_now when it was first seen) for the clock rule.
        self._clock_ref: tuple[float, float] | None = None
        #: Samples dropped because their epoch was already emitted or they repeat an index.
        self.n_late = 0

    @property
    def stream_keys(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    def attach(self, key: str, layout: StreamLayout) -> None:
        """Declare the channels of stream ``key`` (call once its inlet is open)."""
        track = self._track(key)
        if track.layout is not None:
            if track.layout.channels != layout.channels or track.layout.sfreq != layout.sfreq:
                raise DataError(key, "stream layout changed while the bed was running")
            return
        per_epoch = EPOCH_S * layout.sfreq
        if abs(per_epoch - round(per_epoch)) > 1e-9:
            raise DataError(key, f"{layout.sfreq} Hz gives a non-integer samples per 30-s epoch")
        track.layout = layout
        track.per_epoch = int(round(per_epoch))
        track.modalities = tuple(self._modality_of(c, layout) for c in layout.channels)
        pairs = zip(layout.channels, track.modalities, strict=True)
        track.factors = np.array([to_uv_factor(c.unit, m, key) for c, m in pairs])
        track.hold = np.full(layout.n_chans, np.nan)
        self._warn_unusable(key, layout, track.modalities)
        if self.anchor is not None:
            # after a restart the stream resumes at the next epoch, not at sample 0
            track.frontier = self.next_index * track.per_epoch

    def reattach(self, key: str, layout: StreamLayout) -> None:
        """Stream ``key`` came back with another ``layout`` (a new outlet): its track starts
        afresh at the next epoch to emit, as after a restart; the samples it held for epochs not
        yet emitted are dropped (logged). ``DataError`` (track unchanged) when ``layout`` cannot
        be epoched."""
        old = self._track(key)
        dropped = sum(int(r.any(axis=1).sum()) for _, r in old.pending.values())
        self._tracks[key] = _Track(key)
        try:
            self.attach(key, layout)
        except DataError:
            self._tracks[key] = old
            raise
        if dropped:
            log.warning("bed %s: stream %s: %d samples of the old layout not yet in an emitted "
                        "epoch dropped", self.bed, key, dropped)

    def _warn_unusable(self, key: str, layout: StreamLayout,
                       modalities: Sequence[Modality]) -> None:
        """Say once, when the stream is attached, what of it can never reach the model (its
        epochs then only carry the reason)."""
        labels = [c.label for c in layout.channels]
        if all(m == Modality.OTHER for m in modalities):
            log.warning("bed %s: stream %s: no channel maps to a modality (labels %s); map them "
                        "with the bed's channels = {...}", self.bed, key, ", ".join(labels))
            return
        slow = [f"{c.label} ({m})" for c, m in zip(layout.channels, modalities, strict=True)
                if too_slow_for_model(m, layout.sfreq)]
        if slow:
            log.warning("bed %s: stream %s: %s at %g Hz, below the %g-Hz ExG minimum; not model "
                        "input", self.bed, key, ", ".join(slow), layout.sfreq, MIN_EXG_SFREQ)

    def _track(self, key: str) -> _Track:
        try:
            return self._tracks[key]
        except KeyError:
            raise KeyError(f"bed {self.bed}: unknown stream {key!r}") from None

    def push(self, key: str, samples: np.ndarray, timestamps: np.ndarray) -> None:
        """Add samples ``(n, n_chans)`` of stream ``key`` with grid timestamps ``(n,)`` (s)."""
        track = self._track(key)
        layout = track.layout
        if layout is None:
            raise ValueError(f"bed {self.bed}: stream {key!r} pushed before attach()")
        samples = np.asarray(samples)
        ts = np.asarray(timestamps, dtype=np.float64)
        if samples.ndim != 2 or samples.shape[1] != layout.n_chans or ts.shape != samples.shape[:1]:
            raise ValueError(
                f"bed {self.bed}: stream {key!r} expects (n, {layout.n_chans}) samples and (n,) "
                f"timestamps, got {samples.shape} and {ts.shape}"
            )
        if ts.shape[0] == 0:
            return
        t_end = float(ts[-1])
        if self._t_last is None or t_end > self._t_last:
            self._t_last = t_end
        self._t_fresh = True
        if self.anchor is None:
            self.anchor = float(ts[0])
            log.info("bed %s: anchored at LSL time %.6f (stream %s)", self.bed, self.anchor, key)
        n = ts.shape[0]
        fs = layout.sfreq
        if track.phase is None:
            pos0 = (float(ts[0]) - self.anchor) * fs
            track.phase = pos0 - round(pos0)
        floor = max(track.frontier, self.next_index * track.per_epoch)
        i0 = round((float(ts[0]) - self.anchor) * fs - track.phase)
        i1 = round((float(ts[-1]) - self.anchor) * fs - track.phase)
        if i1 - i0 == n - 1 and i0 >= floor and (n < 3 or self._on_grid(ts, fs)):
            # fast path: one contiguous run of new samples (the usual chunk)
            self._store_run(track, layout.n_chans, i0, samples)
            track.frontier = i1 + 1
            return
        pos = (ts - self.anchor) * fs  # (n,) fractional sample positions
        idx = np.rint(pos - track.phase).astype(np.int64)  # (n,) sample indices
        keep = idx >= floor
        if not keep.all():
            # only strictly increasing indices past what was received and emitted are kept
            self.n_late += int((~keep).sum())
            idx, samples = idx[keep], samples[keep]
        if idx.shape[0] > 1 and np.any(np.diff(idx) <= 0):
            order_ok = np.concatenate(([True], np.diff(idx) > 0))
            order_ok &= idx >= np.maximum.accumulate(idx)
            self.n_late += int((~order_ok).sum())
            idx, samples = idx[order_ok], samples[order_ok]
        if idx.shape[0] == 0:
            return
        # split into runs of consecutive indices
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [idx.shape[0]]))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            self._store_run(track, layout.n_chans, int(idx[s]), samples[s:e])
        track.frontier = int(idx[-1]) + 1

    @staticmethod
    def _on_grid(ts: np.ndarray, fs: float) -> bool:
        """Whether consecutive timestamps are one sample apart (within a quarter sample)."""
        step = np.diff(ts) * fs  # (n - 1,) in samples
        return bool(np.abs(step - 1.0).max() < 0.25)

    @staticmethod
    def _store_run(track: _Track, n_chans: int, first: int, x: np.ndarray) -> None:
        """Write consecutive samples ``x (m, n_chans)`` starting at sample index ``first``."""
        pe = track.per_epoch
        m = x.shape[0]
        i = 0
        while i < m:
            k, off = divmod(first + i, pe)
            take = min(m - i, pe - off)
            buf = track.pending.get(k)
            if buf is None:
                buf = track.pending[k] = (
                    np.full((pe, n_chans), np.nan), np.zeros((pe, n_chans), dtype=bool)
                )
            buf[0][off : off + take] = x[i : i + take]
            buf[1][off : off + take] = True
            i += take

    def _passed(self, track: _Track, k: int) -> bool:
        return track.layout is not None and track.frontier >= (k + 1) * track.per_epoch

    def _stream_now(self, lsl_now: float | None) -> float | None:
        """The streams' current time (s, LSL) for the clock rule, or None without ``lsl_now``."""
        if lsl_now is None or self.anchor is None:
            return None
        if self._t_fresh and self._t_last is not None:
            self._clock_ref = (self._t_last, lsl_now)
            self._t_fresh = False
        elif self._clock_ref is None:
            # restored anchor, no data yet: the outage starts at the last emitted epoch's end
            self._clock_ref = (self.anchor + self.next_index * EPOCH_S, lsl_now)
        t_ref, lsl_ref = self._clock_ref
        return min(lsl_now, t_ref + (lsl_now - lsl_ref))

    def pop_ready(self, now: float | None = None, lsl_now: float | None = None) -> list[EpochBlock]:
        """Emit every epoch that is complete (or timed out), in index order.

        ``now``: monotonic seconds for the lagging-stream timeout. ``lsl_now``: the LSL clock
        (``pylsl.local_clock()``, s) for the clock rule (module docstring); None disables it.
        """
        now = self._clock() if now is None else now
        stream_now = self._stream_now(lsl_now)
        out: list[EpochBlock] = []
        while self.anchor is not None:
            k = self.next_index
            passed = [self._passed(t, k) for t in self._tracks.values()]
            if not any(passed):
                self._wait_since = None
                end = self.anchor + (k + 1) * EPOCH_S
                if stream_now is None or end + self.timeout_s > stream_now:
                    break
                log.warning("bed %s: no stream delivered epoch %d by LSL time %.3f; emitted "
                            "unscorable", self.bed, k, end + self.timeout_s)
                out.append(self._emit(k, self.anchor))
                self.next_index = k + 1
                continue
            late = {t.key for t, p in zip(self._tracks.values(), passed, strict=True) if not p}
            if late:
                if not late <= self._lagging:
                    # a stream is behind: wait for it, at most timeout_s
                    if self._wait_since is None:
                        self._wait_since = now
                    if now - self._wait_since < self.timeout_s:
                        break
                    log.warning(
                        "bed %s: epoch %d emitted without waiting for %s", self.bed, k, sorted(late)
                    )
                # streams known to lag are not waited for again until they catch up
                self._lagging = late
            elif self._lagging:
                log.info("bed %s: every stream delivering again at epoch %d", self.bed, k)
                self._lagging = set()
            self._wait_since = None
            out.append(self._emit(k, self.anchor))
            self.next_index = k + 1
        return out

    def _emit(self, k: int, anchor: float) -> EpochBlock:
        channels: list[EpochChannel] = []
        qualities: list[ChannelQuality] = []
        missing_streams: list[str] = []
        for track in self._tracks.values():
            layout = track.layout
            if layout is None:
                missing_streams.append(track.key)
                continue
            for old in [j for j in track.pending if j < k]:
                del track.pending[old]  # stale (cannot happen with in-order pushes)
            buf = track.pending.pop(k, None)
            if buf is None:
                data = np.full((track.per_epoch, layout.n_chans), np.nan)
                received = np.zeros((track.per_epoch, layout.n_chans), dtype=bool)
                missing_streams.append(track.key)
            else:
                data, received = buf
            data = data * track.factors  # (per_epoch, n_chans) in µV for ExG
            pairs = zip(layout.channels, track.modalities, strict=True)
            for c, (spec, modality) in enumerate(pairs):
                x = data[:, c]
                prange = spec.physical_range
                if prange is not None:
                    prange = (prange[0] * track.factors[c], prange[1] * track.factors[c])
                qualities.append(
                    channel_quality(
                        spec.label, modality, layout.sfreq, x, received[:, c],
                        physical_range=prange, config=self.quality,
                    )
                )
                good = received[:, c] & np.isfinite(x)
                filled, track.hold[c] = _hold_fill(x, good, float(track.hold[c]))
                unit = "uV" if modality in EXG_MODALITIES else spec.unit
                channels.append(
                    EpochChannel(spec.label, modality, layout.sfreq, unit, track.key, filled, good)
                )
        quality = epoch_quality(qualities, missing_streams=missing_streams, config=self.quality)
        start = anchor + k * EPOCH_S
        return EpochBlock(self.bed, k, start, start + EPOCH_S, tuple(channels), quality)


def _hold_fill(x: np.ndarray, good: np.ndarray, carry: float) -> tuple[np.ndarray, float]:
    """``x`` with every not-``good`` sample replaced by the last good one (``carry`` before the
    epoch's first; a NaN ``carry``, no good sample yet on the channel: the epoch's first good
    sample, 0.0 without one). Returns the filled ``x`` and the new carry."""
    n = x.shape[0]
    if n and good.all():
        return x.astype(np.float64, copy=True), float(x[-1])
    pos = np.where(good, np.arange(n), -1)  # (n,)
    last = np.maximum.accumulate(pos)  # (n,) index of the last good sample so far, -1 if none
    lead = carry
    if np.isnan(lead):
        lead = float(x[np.argmax(good)]) if good.any() else 0.0
    out = np.where(last >= 0, x[np.maximum(last, 0)], lead)
    new_carry = float(out[-1]) if n and last[-1] >= 0 else carry
    return out.astype(np.float64), new_carry

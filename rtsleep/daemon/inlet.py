"""LSL inlets: stream selection, resolution, chunked pulls, clock correction, dejitter.

Public API (stable):

- ``StreamSelector(name=None, type=None, source_id=None)``: which stream a bed reads.
  ``predicate()`` builds the XPath predicate for ``pylsl.resolve_bypred`` with every value
  quoted safely (quotes inside values are handled with ``concat()``); ``key`` names the stream in
  logs and epoch blocks.
- ``resolve(selector, timeout_s=1.0) -> list[pylsl.StreamInfo]``: a bounded resolution.
- ``ChannelSpec`` / ``StreamLayout``: channel metadata read from ``desc/channels/channel/{label,
  unit, type}`` (LSL/XDF conventions) plus the nominal rate; what the epocher needs.
- ``Dejitter(sfreq)``: maps noisy timestamps to an exact grid ``a + i / fs`` per continuous
  segment (linear fit against the nominal rate), detects gaps (Δt > 1.5 / fs) and keeps the grid
  across them, so a gap of ``m`` samples shows up as a step of ``(m + 1) / fs`` and uneven chunk
  timestamps still cut sample-exact epochs. Slow clock drift becomes an occasional one-sample
  slip (logged), never a false gap.
- ``Inlet(info, ..., max_buflen_s=1800)``: one opened ``pylsl.StreamInlet(recover=True)`` whose
  liblsl queue holds ``max_buflen_s`` s of data (the daemon passes ``daemon.inlet_buffer_s``; a
  pull that finds it full warns); ``pull()`` drains what is available (non-blocking) in chunks
  into a preallocated ``RingBuffer`` of samples and dejittered, clock-corrected timestamps;
  ``buffer.pop()`` hands them to the epocher. A stream
  that vanishes simply stops delivering; when its outlet comes back with the same
  ``source_id`` liblsl reconnects and the outage shows up as a timestamp gap.
- ``StreamHandle(selector, ...)``: resolves and opens in a background thread (the first
  ``time_correction()`` blocks ~0.64 s), so the scoring loop never waits on the network;
  ``pull()`` is a no-op until the inlet is open.

Timestamps are LSL clock seconds of the local machine: ``t_local = t_source +
time_correction()``; the correction is taken once at open (blocking, off the hot path when opened
by a ``StreamHandle``) and refreshed from liblsl's cached estimate every ``clock_refresh_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pylsl
from pylsl.util import LostError
from pylsl.util import TimeoutError as LslTimeoutError

from rtsleep.daemon.ringbuffer import RingBuffer
from rtsleep.data.errors import DataError

log = logging.getLogger(__name__)


def _xpath_literal(value: str) -> str:
    """``value`` as an XPath 1.0 string literal (no escaping exists in XPath 1.0)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    parts = value.split("'")
    pieces = ", \"'\", ".join(f"'{p}'" for p in parts)
    return f"concat({pieces})"


@dataclass(frozen=True)
class StreamSelector:
    """Which LSL stream to read: every given field must match exactly."""

    name: str | None = None
    type: str | None = None
    source_id: str | None = None

    def __post_init__(self) -> None:
        if not any((self.name, self.type, self.source_id)):
            raise ValueError("a stream selector needs at least one of name, type, source_id")
        for field_name in ("name", "type", "source_id"):
            value = getattr(self, field_name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"stream selector {field_name} must be a string, got {value!r}")
            if value is not None and any(ord(c) < 32 for c in value):
                raise ValueError(f"stream selector {field_name} has control characters: {value!r}")

    def predicate(self) -> str:
        """XPath predicate for ``pylsl.resolve_bypred``, e.g. ``name='EEG' and type='EEG'``."""
        terms = [
            f"{key}={_xpath_literal(value)}"
            for key, value in (
                ("name", self.name), ("type", self.type), ("source_id", self.source_id)
            )
            if value is not None
        ]
        return " and ".join(terms)

    @property
    def key(self) -> str:
        """Stable short name of the stream (source_id, else name, else type)."""
        return self.source_id or self.name or self.type or ""

    def matches(self, info: pylsl.StreamInfo) -> bool:
        """Whether a resolved stream satisfies this selector."""
        return (
            (self.name is None or info.name() == self.name)
            and (self.type is None or info.type() == self.type)
            and (self.source_id is None or info.source_id() == self.source_id)
        )


def resolve(selector: StreamSelector, timeout_s: float = 1.0) -> list[pylsl.StreamInfo]:
    """Streams matching ``selector``, waiting at most ``timeout_s`` s (returns at the first hit).

    With the loopback config liblsl typically answers after ~0.5 s (its query waves), so a
    timeout much below that misses streams that exist.
    """
    found = pylsl.resolve_bypred(selector.predicate(), 1, timeout_s)
    return [info for info in found if selector.matches(info)]


@dataclass(frozen=True)
class ChannelSpec:
    """Metadata of one channel of a stream (``unit`` and ``type`` as the stream declares them)."""

    label: str
    unit: str = ""
    type: str = ""
    #: (min, max) of the amplifier's physical range in ``unit``, when the stream declares it.
    physical_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class StreamLayout:
    """What one stream carries: nominal rate (Hz) and channels in sample order."""

    key: str
    name: str
    type: str
    source_id: str
    sfreq: float
    channels: tuple[ChannelSpec, ...]

    @property
    def n_chans(self) -> int:
        return len(self.channels)

    @classmethod
    def from_info(cls, info: pylsl.StreamInfo, key: str | None = None) -> StreamLayout:
        """Read the layout from a full stream info (one with ``desc``, e.g. ``inlet.info()``).

        Channels without a ``desc/channels`` entry are named ``ch<i>``; a non-positive nominal
        rate is a ``DataError`` (irregular streams cannot be epoched by sample index).
        """
        source = key or info.source_id() or info.name()
        sfreq = float(info.nominal_srate())
        if sfreq <= 0:
            raise DataError(source, "stream has an irregular rate; need a nominal sampling rate")
        n = int(info.channel_count())
        if n < 1:
            raise DataError(source, "stream has no channels")
        specs: list[ChannelSpec] = []
        ch = info.desc().child("channels").child("channel")
        while not ch.empty() and len(specs) < n:
            label = ch.child_value("label") or f"ch{len(specs)}"
            prange = None
            lo, hi = ch.child_value("physical_min"), ch.child_value("physical_max")
            if lo and hi:
                try:
                    prange = (float(lo), float(hi))
                except ValueError:
                    log.warning("%s: %s: bad physical range %r..%r", source, label, lo, hi)
            specs.append(
                ChannelSpec(label, ch.child_value("unit"), ch.child_value("type"), prange)
            )
            ch = ch.next_sibling("channel")
        specs.extend(ChannelSpec(f"ch{i}") for i in range(len(specs), n))
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise DataError(source, f"duplicate channel labels {labels}")
        return cls(
            key=source,
            name=info.name(),
            type=info.type(),
            source_id=info.source_id(),
            sfreq=sfreq,
            channels=tuple(specs),
        )


class Dejitter:
    """Exact timestamp grid ``a + i / fs`` for noisy timestamps, with gap detection.

    ``process(ts)`` returns the grid time of every sample, in order. The grid offset is the first
    sample's timestamp; the residual ``ts - grid`` is smoothed (exponential average over
    ``smoothing_samples``). A residual further than ``gap_factor / fs`` from the smoothed one
    starts a new segment on the same grid, ``round(residual * fs)`` samples later (a gap) or
    earlier (a backward jump). When the smoothed residual drifts past ``slip_threshold`` samples
    (clock drift against the nominal rate) the grid slips by one sample.
    """

    def __init__(
        self,
        sfreq: float,
        *,
        gap_factor: float = 1.5,
        smoothing_samples: float = 500.0,
        slip_threshold: float = 0.75,
    ) -> None:
        if sfreq <= 0:
            raise ValueError(f"sfreq must be > 0, got {sfreq}")
        self.sfreq = float(sfreq)
        self.gap_factor = gap_factor
        self.smoothing_samples = smoothing_samples
        self.slip_threshold = slip_threshold
        self._origin: float | None = None  # grid time of sample index 0
        self._next = 0  # grid index of the next expected sample
        self._residual = 0.0  # smoothed ts - grid, s
        self._steps = np.arange(1024) / self.sfreq  # (1024,) grid offsets, grown on demand
        #: Gaps and backward jumps seen so far, and one-sample drift slips.
        self.n_gaps = 0
        self.n_jumps_back = 0
        self.n_slips = 0

    @property
    def origin(self) -> float | None:
        """Grid time of grid index 0 (the first sample's timestamp), or None before any."""
        return self._origin

    def process(self, ts: np.ndarray) -> np.ndarray:
        """Grid times ``(n,)`` for timestamps ``ts (n,)`` (s)."""
        ts = np.asarray(ts, dtype=np.float64)
        n = ts.shape[0]
        out = np.empty(n, dtype=np.float64)
        if n == 0:
            return out
        if self._origin is None:
            self._origin = float(ts[0])
        period = 1.0 / self.sfreq
        tol = self.gap_factor * period
        # fast path: every timestamp within tolerance of the grid (the usual chunk)
        if self._steps.shape[0] < n:
            self._steps = np.arange(max(n, 2 * self._steps.shape[0])) * period
        grid = (self._origin + self._next * period) + self._steps[:n]  # (n,)
        res = ts - grid  # (n,)
        lo, hi = float(res.min()), float(res.max())
        if hi - self._residual <= tol and self._residual - lo <= tol:
            self._advance(n, float(res.mean()) - self._residual)
            return grid
        i = 0
        while i < n:
            idx = self._next + np.arange(n - i)  # (n - i,) grid indices if continuous
            grid = self._origin + idx * period
            res = ts[i:] - grid - self._residual
            bad = np.flatnonzero(np.abs(res) > tol)
            m = int(bad[0]) if bad.size else n - i
            if m == 0:
                # a gap (or a jump back) right here: re-enter the grid where this sample falls
                step = int(round(float(res[0]) * self.sfreq))
                if step > 0:
                    self.n_gaps += 1
                    log.debug("gap of %d samples before grid index %d", step, self._next)
                else:
                    self.n_jumps_back += 1
                    log.debug("timestamps back %d samples at grid index %d", -step, self._next)
                self._next += step
                continue
            out[i : i + m] = grid[:m]
            self._advance(m, float(np.mean(res[:m])))
            i += m
        return out

    def _advance(self, m: int, mean_res: float) -> None:
        """Advance past ``m`` on-grid samples with mean residual ``mean_res`` (s, unsmoothed)."""
        # smooth the residual: an exponential average, applied chunk-wise
        w = 1.0 - (1.0 - 1.0 / self.smoothing_samples) ** m
        self._residual += w * mean_res
        self._next += m
        slip = self._residual * self.sfreq
        if abs(slip) > self.slip_threshold:
            step = 1 if slip > 0 else -1
            self._next += step
            self._residual -= step / self.sfreq
            self.n_slips += 1
            log.debug("clock drift: grid slipped %+d sample at index %d", step, self._next)


#: Bytes per value of each liblsl channel format (``pylsl.cf_*``); strings are never scored.
_FORMAT_BYTES = {
    pylsl.cf_float32: 4, pylsl.cf_double64: 8, pylsl.cf_int32: 4, pylsl.cf_int16: 2,
    pylsl.cf_int8: 1, pylsl.cf_int64: 8,
}
#: Floor of a memory-bounded queue (s): a loop stalled longer is restarted by the watchdog.
MIN_QUEUE_S = 60


def queue_seconds(
    sfreq: float, n_chans: int, value_bytes: int, max_s: int, budget_bytes: float | None
) -> int:
    """Seconds of data liblsl should queue for one stream.

    ``max_s`` is the upper bound (s). With a ``budget_bytes`` (bytes per stream) the queue is
    also bounded by what fits in that memory at ``sfreq`` (Hz) x ``n_chans`` x ``value_bytes``,
    but never below ``min(MIN_QUEUE_S, max_s)``. Irregular streams (``sfreq`` 0) get ``max_s``.
    """
    if max_s < 1:
        raise ValueError(f"max_s must be >= 1 s, got {max_s}")
    if not budget_bytes or sfreq <= 0:
        return int(max_s)
    fits = int(budget_bytes // (sfreq * max(n_chans, 1) * value_bytes))
    return int(min(max_s, max(min(MIN_QUEUE_S, max_s), fits)))


class Inlet:
    """One open LSL stream, pulled in chunks into a ring buffer of (samples, grid timestamps).

    ``max_buflen_s`` sizes liblsl's own queue (whole seconds of data kept while the daemon is
    busy; liblsl preallocates it and drops the *oldest* samples beyond it, which then show up as
    a gap). The default of 1800 s holds a 30-min ``--speed max`` replay (tools, tests); the daemon
    passes ``daemon.inlet_buffer_s`` as the bound and ``daemon.inlet_buffer_mb`` as
    ``max_buffer_bytes``, which shortens the queue of a wide or fast stream to what fits in that
    memory (:func:`queue_seconds`). A pull that finds the queue full logs a warning (at
    most once per ``full_warn_s``). ``buffer_s`` sizes the ring buffer (pulls never take more
    than its free space, so nothing is overwritten).
    """

    def __init__(
        self,
        info: pylsl.StreamInfo,
        *,
        key: str | None = None,
        max_buflen_s: int = 1800,
        max_buffer_bytes: float | None = None,
        buffer_s: float = 10.0,
        open_timeout_s: float = 2.0,
        gap_factor: float = 1.5,
        clock_refresh_s: float = 5.0,
        full_warn_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_buflen_s = queue_seconds(
            info.nominal_srate(), info.channel_count(),
            _FORMAT_BYTES.get(info.channel_format(), 8), int(max_buflen_s), max_buffer_bytes,
        )
        self._inlet = pylsl.StreamInlet(
            info, max_buflen=self.max_buflen_s, max_chunklen=0, recover=True, processing_flags=0
        )
        name = key or info.source_id() or info.name()
        if self._inlet.np_dtype is None:
            raise DataError(name, "string streams cannot be scored")
        try:
            self._inlet.open_stream(open_timeout_s)
            full = self._inlet.info(open_timeout_s)
            self.layout = StreamLayout.from_info(full, key=name)
        except (LslTimeoutError, LostError) as err:
            self.close()
            raise DataError(name, f"could not open the LSL stream ({err})") from err
        except DataError:
            self.close()
            raise
        self.key = self.layout.key
        #: The outlet instance this inlet reads (a restarted outlet has a new uid).
        self.uid = str(info.uid())
        #: What liblsl's recovery requires to be unchanged before it reconnects.
        self.signature = _signature(info)
        self._clock = clock
        #: Monotonic time the stream was opened.
        self.opened_at = clock()
        try:
            self.clock_offset = float(self._inlet.time_correction(open_timeout_s))
        except LslTimeoutError:
            log.warning("%s: no clock correction yet; using 0", self.key)
            self.clock_offset = 0.0
        self._clock_refresh_s = clock_refresh_s
        self._clock_checked = clock()
        capacity = max(256, int(np.ceil(buffer_s * self.layout.sfreq)))
        self.buffer = RingBuffer(capacity, self.layout.n_chans)
        self._chunk = np.empty(
            (min(capacity, 4096), self.layout.n_chans), dtype=self._inlet.np_dtype
        )
        self.dejitter = Dejitter(self.layout.sfreq, gap_factor=gap_factor)
        #: liblsl's queue capacity in samples (it holds ``max_buflen_s * sfreq``).
        self.queue_capacity = int(self.max_buflen_s * self.layout.sfreq)
        self._full_warn_s = full_warn_s
        self._full_warned: float | None = None
        #: Pulls that found liblsl's queue full (older samples were most likely dropped).
        self.n_queue_full = 0
        #: Monotonic time of the last pull that returned samples (None before any).
        self.last_data: float | None = None
        self.n_samples = 0

    def _refresh_clock(self) -> None:
        now = self._clock()
        if now - self._clock_checked < self._clock_refresh_s:
            return
        self._clock_checked = now
        try:
            # liblsl updates its estimate in the background; a zero timeout returns the cached one
            self.clock_offset = float(self._inlet.time_correction(0.0))
        except (LslTimeoutError, LostError):
            pass

    def pull(self, max_samples: int | None = None) -> int:
        """Move what liblsl holds (at most ``max_samples``) into ``buffer``; never blocks."""
        self._refresh_clock()
        total = 0
        available = int(self._inlet.samples_available())
        if not available:
            return 0
        if available >= self.queue_capacity:
            self._queue_full()
        limit = self.buffer.capacity if max_samples is None else max_samples
        while total < limit:
            room = min(self._chunk.shape[0], self.buffer.capacity - len(self.buffer), limit - total)
            if room <= 0:
                break
            try:
                _, ts = self._inlet.pull_chunk(0.0, room, self._chunk)
            except LostError:
                log.warning("%s: stream lost", self.key)
                break
            n = len(ts)
            if n == 0:
                break
            grid = self.dejitter.process(np.asarray(ts, dtype=np.float64) + self.clock_offset)
            self.buffer.push(self._chunk[:n], grid)
            total += n
        if total:
            self.n_samples += total
            self.last_data = self._clock()
        return total

    def silent_s(self) -> float:
        """Seconds since the last pull that returned samples (since opening, before any)."""
        return self._clock() - (self.opened_at if self.last_data is None else self.last_data)

    def _queue_full(self) -> None:
        self.n_queue_full += 1
        now = self._clock()
        if self._full_warned is None or now - self._full_warned >= self._full_warn_s:
            self._full_warned = now
            log.warning(
                "%s: liblsl queue full (%d s of data): older samples were dropped; the loop fell "
                "behind (raise daemon.inlet_buffer_s for replays faster than real time)",
                self.key, self.max_buflen_s,
            )

    def close(self) -> None:
        """Close the stream (idempotent)."""
        try:
            self._inlet.close_stream()
        except Exception:  # noqa: BLE001 - closing must never raise
            log.debug("close_stream failed", exc_info=True)


class StreamHandle:
    """A selector that becomes an ``Inlet`` in the background; ``pull()`` is safe at any time.

    Resolution retries every ``retry_s`` until the stream appears; opening (with its blocking first
    clock correction) happens in the same daemon thread. Errors are logged, never raised into
    the scoring loop.

    Once open, the same thread looks again every ``relook_s`` while the inlet has been silent
    that long. liblsl reconnects by itself to an outlet that comes back with the same source id
    and layout; one that comes back with another layout (channel count, rate or format: an
    amplifier reconfigured mid-night) it never reconnects to. Such a stream is opened anew and
    replaces :attr:`inlet` (logged as an error naming both layouts); the old inlet is left to
    its user to close (:meth:`close` closes it too).
    """

    def __init__(
        self,
        selector: StreamSelector,
        *,
        retry_s: float = 0.5,
        resolve_timeout_s: float = 1.0,
        error_retry_s: float = 10.0,
        relook_s: float = 10.0,
        inlet_kwargs: dict[str, object] | None = None,
    ) -> None:
        self.selector = selector
        self._error_retry_s = error_retry_s
        self.key = selector.key
        self._retry_s = retry_s
        self._relook_s = relook_s
        self._resolve_timeout_s = resolve_timeout_s
        self._inlet_kwargs = dict(inlet_kwargs or {})
        self._inlet: Inlet | None = None
        self._retired: list[Inlet] = []
        self._opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._connect, name=f"lsl-open-{self.key}", daemon=True
        )
        self._thread.start()

    def _connect(self) -> None:
        while not self._stop.is_set():
            try:
                if self._inlet is None:
                    self._open_first()
                else:
                    self._relook(self._inlet)
            except DataError as err:
                # a stream we cannot use (or could not open): retry, but slowly
                log.error("%s (retrying in %g s)", err, self._error_retry_s)
                self._stop.wait(self._error_retry_s)
                continue
            except Exception:  # noqa: BLE001 - keep retrying; never crash the daemon
                log.exception("%s: failed to open the stream", self.key)
            self._stop.wait(self._retry_s if self._inlet is None else self._relook_s)

    def _open(self, info: pylsl.StreamInfo) -> Inlet | None:
        inlet = Inlet(info, key=self.key, **self._inlet_kwargs)  # type: ignore[arg-type]
        if self._stop.is_set():
            inlet.close()
            return None
        return inlet

    def _open_first(self) -> None:
        infos = resolve(self.selector, self._resolve_timeout_s)
        if not infos:
            return
        if len(infos) > 1:
            log.warning("%s: %d streams match; using the first", self.key, len(infos))
        inlet = self._open(infos[0])
        if inlet is None:
            return
        self._inlet = inlet
        self._opened.set()
        log.info("%s: opened (%s)", self.key, _describe(inlet.layout))

    def _relook(self, inlet: Inlet) -> None:
        """Replace ``inlet`` by the stream's new outlet when it came back with another layout."""
        if inlet.silent_s() < self._relook_s:
            return
        for info in resolve(self.selector, self._resolve_timeout_s):
            if str(info.uid()) == inlet.uid or _signature(info) == inlet.signature:
                continue  # the same outlet, or one liblsl's recovery reconnects to
            fresh = self._open(info)
            if fresh is None:
                return
            log.error("%s: the stream came back with another layout (%s; was %s); reading the "
                      "new one", self.key, _describe(fresh.layout), _describe(inlet.layout))
            self._retired.append(inlet)
            self._inlet = fresh
            return

    @property
    def inlet(self) -> Inlet | None:
        """The open inlet, or None while resolving."""
        return self._inlet

    @property
    def layout(self) -> StreamLayout | None:
        return self._inlet.layout if self._inlet is not None else None

    def wait_open(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` s until the inlet is open (for tools and tests)."""
        return self._opened.wait(timeout_s)

    def pull(self, max_samples: int | None = None) -> int:
        """Pull into the inlet's ring buffer; 0 while not open."""
        return self._inlet.pull(max_samples) if self._inlet is not None else 0

    def close(self) -> None:
        """Stop resolving and close the inlet (and any it replaced)."""
        self._stop.set()
        for inlet in [*self._retired, *([self._inlet] if self._inlet is not None else [])]:
            inlet.close()


def _signature(info: pylsl.StreamInfo) -> tuple[int, float, int]:
    """Channel count, nominal rate and sample format of a stream."""
    return int(info.channel_count()), float(info.nominal_srate()), int(info.channel_format())


def _describe(layout: StreamLayout) -> str:
    """``"3 channels (C3-A2, C4-A1, O1-A2) at 100 Hz"``."""
    return (f"{layout.n_chans} channels ({', '.join(c.label for c in layout.channels)}) "
            f"at {layout.sfreq:g} Hz")

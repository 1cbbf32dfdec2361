"""A bed's ingest: its LSL streams (``StreamHandle``) feeding its ``BedEpocher``.

Public API (stable): ``BedIngest(bed, selectors, *, anchor=None, next_index=0, timeout_s=5.0,
quality=None, modality_of=None, inlet_buffer_s=None, inlet_buffer_mb=None,
inlet_kwargs=None)``;
``poll(now=None, lsl_now=None) -> list[EpochBlock]`` pulls what every stream has (non-blocking,
bounded per call), cuts epochs and returns the complete ones, plus, once every stream has stopped,
the epochs whose end is older than ``timeout_s`` on the LSL clock (``lsl_now``, default
``pylsl.local_clock()``; the epocher's clock rule), so a bed whose amplifier is gone keeps
publishing unscorable epochs; ``epocher`` exposes ``anchor`` /
``next_index`` to persist; ``streams`` the handles; ``n_open()`` the streams whose inlet is open
(``streams_open``); ``n_delivering(window_s)`` the streams that
returned samples within the last ``window_s`` s (the heartbeat's ``streams_connected``);
``close()``. A stream that is not found,
vanishes or fails to open never raises here: it is retried in the background and its channels
are flagged missing in the epochs. ``inlet_buffer_s`` sizes liblsl's queue of every stream
(whole seconds of data, at most ``inlet_buffer_s`` and at most what fits in ``inlet_buffer_mb``
MB per stream, never below 60 s unless ``inlet_buffer_s`` is lower; the daemon passes
``daemon.inlet_buffer_s`` and ``daemon.inlet_buffer_mb``; ``None`` keeps ``Inlet``'s default,
sized for replays at max speed). ``relook_s``: how long a stream may stay silent before its
handle looks for it again, in case it came back with another layout (``StreamHandle``); the bed
then reads the new layout from the next epoch on (``BedEpocher.reattach``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pylsl

from rtsleep.daemon.epocher import BedEpocher, EpochBlock, ModalityResolver
from rtsleep.daemon.inlet import Inlet, StreamHandle, StreamSelector
from rtsleep.daemon.quality import QualityConfig
from rtsleep.data.errors import DataError

log = logging.getLogger(__name__)


class BedIngest:
    """One bed: streams resolved and pulled in the background-safe way, epochs cut on timestamps."""

    def __init__(
        self,
        bed: str,
        selectors: Sequence[StreamSelector],
        *,
        anchor: float | None = None,
        next_index: int = 0,
        timeout_s: float = 5.0,
        quality: QualityConfig | None = None,
        modality_of: ModalityResolver | None = None,
        inlet_buffer_s: int | None = None,
        inlet_buffer_mb: float | None = None,
        inlet_kwargs: dict[str, object] | None = None,
        max_samples_per_poll: int = 100_000,
        relook_s: float = 10.0,
    ) -> None:
        keys = [s.key for s in selectors]
        self.bed = bed
        self.epocher = BedEpocher(
            bed, keys, anchor=anchor, next_index=next_index, timeout_s=timeout_s,
            quality=quality, modality_of=modality_of,
        )
        # the dejitter's gap rule is the quality rule: Δt > gap_factor / fs
        kwargs: dict[str, object] = {"gap_factor": self.epocher.quality.gap_factor}
        if inlet_buffer_s is not None:
            if isinstance(inlet_buffer_s, bool) or not isinstance(inlet_buffer_s, int):
                raise TypeError(f"inlet_buffer_s must be an int (s), got {inlet_buffer_s!r}")
            if inlet_buffer_s < 1:
                raise ValueError(f"inlet_buffer_s must be >= 1 s, got {inlet_buffer_s}")
            kwargs["max_buflen_s"] = inlet_buffer_s
        if inlet_buffer_mb is not None:
            if isinstance(inlet_buffer_mb, bool) or not isinstance(inlet_buffer_mb, int | float):
                raise TypeError(f"inlet_buffer_mb must be a number (MB), got {inlet_buffer_mb!r}")
            if inlet_buffer_mb < 0:
                raise ValueError(f"inlet_buffer_mb must be >= 0 MB, got {inlet_buffer_mb}")
            kwargs["max_buffer_bytes"] = inlet_buffer_mb * 1e6 if inlet_buffer_mb > 0 else None
        kwargs.update(inlet_kwargs or {})
        self.streams = [StreamHandle(s, relook_s=relook_s, inlet_kwargs=kwargs)
                        for s in selectors]
        #: key -> the inlet attached to the epocher (a stream that came back with another
        #: layout gets a new one, see ``StreamHandle``), and the inlets found unusable.
        self._attached: dict[str, Inlet] = {}
        self._broken: dict[str, Inlet] = {}
        self._max = max_samples_per_poll

    def wait_open(self, timeout_s: float) -> bool:
        """Block until every stream is open or ``timeout_s`` has passed (tools and tests only)."""
        deadline = time.monotonic() + timeout_s
        return all(h.wait_open(max(0.0, deadline - time.monotonic())) for h in self.streams)

    def poll(self, now: float | None = None, lsl_now: float | None = None) -> list[EpochBlock]:
        """Pull every stream, push into the epocher, return the epochs that are complete.

        ``now``: monotonic s (lagging-stream timeout); ``lsl_now``: LSL clock s (default
        ``pylsl.local_clock()``, the time base of the inlets' corrected timestamps).
        """
        for handle in self.streams:
            inlet = handle.inlet
            if inlet is None or self._broken.get(handle.key) is inlet:
                continue
            attached = self._attached.get(handle.key)
            if attached is not inlet:
                try:
                    if attached is None:
                        self.epocher.attach(handle.key, inlet.layout)
                    else:  # the stream came back with another layout
                        attached.close()
                        self.epocher.reattach(handle.key, inlet.layout)
                except DataError as err:
                    log.error("bed %s: %s; stream ignored", self.bed, err)
                    self._broken[handle.key] = inlet
                    continue
                self._attached[handle.key] = inlet
            total = 0
            while total < self._max:
                n = inlet.pull(self._max - total)
                if n == 0:
                    break
                total += n
                samples, ts = inlet.buffer.pop()
                self.epocher.push(handle.key, samples, ts)
        lsl_now = pylsl.local_clock() if lsl_now is None else lsl_now
        return self.epocher.pop_ready(now, lsl_now)

    def n_open(self) -> int:
        """Streams whose inlet is open now (found and opened; it may still be silent)."""
        return sum(handle.inlet is not None for handle in self.streams)

    def n_delivering(self, window_s: float, now: float | None = None) -> int:
        """Streams whose inlet is open and returned samples within the last ``window_s`` s
        (monotonic ``now``, default ``time.monotonic()``); an opened but silent or lost stream
        does not count."""
        now = time.monotonic() if now is None else now
        n = 0
        for handle in self.streams:
            inlet = handle.inlet
            last = inlet.last_data if inlet is not None else None
            if last is not None and now - last <= window_s:
                n += 1
        return n

    def close(self) -> None:
        """Close every stream."""
        for handle in self.streams:
            handle.close()

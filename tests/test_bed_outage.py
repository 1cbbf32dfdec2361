"""A bed whose streams all stop keeps emitting epochs (unscorable, "no data") on the LSL clock.

Real LSL on loopback for delivery; the passage of LSL time after the outage is given to
``BedIngest.poll(lsl_now=...)`` as ``local_clock() + elapsed`` so the tests need not wait 30 s.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pylsl

from rtsleep.daemon.epocher import BedEpocher, EpochBlock
from rtsleep.daemon.ingest import BedIngest
from rtsleep.daemon.inlet import ChannelSpec, StreamLayout, StreamSelector
from rtsleep.data.recording import EPOCH_S

FS = 100.0
PER_EPOCH = int(EPOCH_S * FS)
TIMEOUT_S = 1.0


def _outlet(source_id: str) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo("outage-eeg", "EEG", 1, FS, pylsl.cf_double64, source_id)
    ch = info.desc().append_child("channels").append_child("channel")
    ch.append_child_value("label", "C3-A2")
    ch.append_child_value("unit", "uV")
    ch.append_child_value("type", "EEG")
    return pylsl.StreamOutlet(info, 0, 360)


def _push(outlet: pylsl.StreamOutlet, first: int, n: int, t0: float) -> None:
    """Samples ``first .. first + n - 1`` (value = sample index) at exact grid timestamps."""
    idx = np.arange(first, first + n)
    x = np.stack([np.sin(idx * 0.37) * 20.0 + (idx % 7)], axis=1)  # (n, 1) µV, not flat
    for s in range(0, n, 500):
        outlet.push_chunk(x[s : s + 500], list(t0 + idx[s : s + 500] / FS))


def _poll_until(ingest: BedIngest, n: int, timeout_s: float = 10.0) -> list[EpochBlock]:
    blocks: list[EpochBlock] = []
    deadline = time.monotonic() + timeout_s
    while len(blocks) < n and time.monotonic() < deadline:
        blocks += ingest.poll()
        time.sleep(0.01)
    return blocks


def _open(uid: str) -> tuple[pylsl.StreamOutlet, BedIngest]:
    outlet = _outlet(f"outage-{uid}")
    ingest = BedIngest("bed1", [StreamSelector(source_id=f"outage-{uid}")], timeout_s=TIMEOUT_S)
    assert ingest.wait_open(10.0)
    deadline = time.monotonic() + 5.0
    while not outlet.have_consumers() and time.monotonic() < deadline:
        time.sleep(0.01)
    return outlet, ingest


def test_stopped_bed_emits_no_data_epochs_on_the_lsl_clock_and_resumes_without_duplicates() -> None:
    uid = f"{os.getpid()}-{time.monotonic_ns()}"
    outlet, ingest = _open(uid)
    try:
        t0 = pylsl.local_clock() - 60.0  # two epochs stamped in real time, ending now
        _push(outlet, 0, 2 * PER_EPOCH, t0)
        blocks = _poll_until(ingest, 2)
        assert [b.index for b in blocks] == [0, 1]
        assert not any(b.unscorable for b in blocks)
        # the amplifier is gone: nothing before epoch 2's end + timeout on the LSL clock
        now = pylsl.local_clock()
        assert ingest.poll(lsl_now=now + 5.0) == []
        assert ingest.poll(lsl_now=t0 + 3 * EPOCH_S + TIMEOUT_S - 0.2) == []
        gone = ingest.poll(lsl_now=t0 + 4 * EPOCH_S + TIMEOUT_S + 0.5)  # epochs 2 and 3
        assert [b.index for b in gone] == [2, 3]
        for b in gone:
            assert b.unscorable
            assert "no data from stream(s)" in b.quality.reason
            assert not b.channel("C3-A2").received.any()
            assert b.start_lsl == ingest.epocher.anchor + b.index * EPOCH_S
        # data return, including a stretch of epoch 3 (already published as empty): dropped
        _push(outlet, 3 * PER_EPOCH + 1000, 3 * PER_EPOCH + 10, t0)
        back = _poll_until(ingest, 2)
    finally:
        ingest.close()
        del outlet
    assert [b.index for b in back] == [4, 5]
    assert ingest.epocher.n_late == PER_EPOCH - 1000
    assert not any(b.unscorable for b in back)
    np.testing.assert_allclose(
        back[0].channel("C3-A2").data[:3],
        np.sin(np.arange(4 * PER_EPOCH, 4 * PER_EPOCH + 3) * 0.37) * 20.0
        + np.arange(4 * PER_EPOCH, 4 * PER_EPOCH + 3) % 7,
    )


def test_stream_stamped_ahead_of_the_clock_is_never_declared_empty_early() -> None:
    uid = f"{os.getpid()}-{time.monotonic_ns()}"
    outlet, ingest = _open(uid)
    try:
        t0 = pylsl.local_clock() + 100.0  # a replay faster than real time runs ahead
        _push(outlet, 0, 2 * PER_EPOCH, t0)
        blocks = _poll_until(ingest, 2)
        assert [b.index for b in blocks] == [0, 1]
        # the stream stopped, but epoch 2 ends 190 s ahead of the LSL clock
        now = pylsl.local_clock()
        for dt in (0.0, 60.0, 150.0, 190.0 + TIMEOUT_S - 0.5):
            assert ingest.poll(lsl_now=now + dt) == []
        late = ingest.poll(lsl_now=t0 + 3 * EPOCH_S + TIMEOUT_S + 0.5)
    finally:
        ingest.close()
        del outlet
    assert [b.index for b in late] == [2]
    assert late[0].unscorable


def test_status_counts_only_streams_that_delivered_recently() -> None:
    uid = f"{os.getpid()}-{time.monotonic_ns()}"
    outlet = _outlet(f"outage-{uid}")
    ingest = BedIngest("bed1", [StreamSelector(source_id=f"outage-{uid}"),
                                StreamSelector(source_id=f"outage-never-{uid}")],
                       timeout_s=TIMEOUT_S)
    try:
        assert ingest.streams[0].wait_open(10.0)
        assert ingest.n_delivering(10.0) == 0  # opened but silent is not connected
        assert ingest.n_open() == 1  # ... but it is open
        deadline = time.monotonic() + 5.0
        while not outlet.have_consumers() and time.monotonic() < deadline:
            time.sleep(0.01)
        _push(outlet, 0, 500, pylsl.local_clock())
        deadline = time.monotonic() + 10.0
        while ingest.n_delivering(10.0) == 0 and time.monotonic() < deadline:
            ingest.poll()
            time.sleep(0.01)
        assert ingest.n_delivering(10.0) == 1
        # no more data: once the window has passed, the open inlet no longer counts
        assert ingest.n_delivering(10.0, now=time.monotonic() + 11.0) == 0
    finally:
        ingest.close()
        del outlet


def _one_stream_epocher(**kwargs: object) -> BedEpocher:
    ep = BedEpocher("bed1", ["s"], timeout_s=TIMEOUT_S, **kwargs)  # type: ignore[arg-type]
    ep.attach("s", StreamLayout("s", "s", "EEG", "s", FS, (ChannelSpec("C3-A2", "uV", "EEG"),)))
    return ep


def _samples(first: int, n: int) -> np.ndarray:
    return (np.sin(np.arange(first, first + n) * 0.37) * 20.0)[:, None]  # (n, 1)


def test_no_anchor_means_no_empty_epochs() -> None:
    ep = _one_stream_epocher()
    assert ep.pop_ready(0.0, lsl_now=1e6) == []
    assert ep.next_index == 0


def test_stream_stamped_in_the_past_is_not_overtaken_by_the_clock() -> None:
    """A constant offset into the past (synthetic or offset clock): time runs from arrival."""
    ep = _one_stream_epocher()
    t0 = 500.0
    lsl = 90_000.0  # far ahead of the stream's timestamps
    ep.push("s", _samples(0, PER_EPOCH), t0 + np.arange(PER_EPOCH) / FS)
    assert [b.index for b in ep.pop_ready(0.0, lsl_now=lsl)] == [0]
    assert ep.pop_ready(0.0, lsl_now=lsl + EPOCH_S) == []  # epoch 1 ends at +30 s + timeout
    empty = ep.pop_ready(0.0, lsl_now=lsl + EPOCH_S + TIMEOUT_S + 0.1)
    assert [b.index for b in empty] == [1]
    assert empty[0].unscorable


def test_restart_mid_outage_continues_the_index_and_drops_data_of_emitted_epochs() -> None:
    ep = _one_stream_epocher(anchor=1000.0, next_index=5)
    lsl = 5000.0
    assert ep.pop_ready(0.0, lsl_now=lsl) == []  # the outage clock starts at the restart
    assert [b.index for b in ep.pop_ready(0.0, lsl_now=lsl + EPOCH_S + TIMEOUT_S + 0.1)] == [5]
    # data come back in epoch 8, with a stretch of epoch 5 (already published): indices continue
    i5 = np.arange(5 * PER_EPOCH, 5 * PER_EPOCH + 10)
    ep.push("s", _samples(int(i5[0]), 10), 1000.0 + i5 / FS)
    i8 = np.arange(8 * PER_EPOCH, 9 * PER_EPOCH + 1)
    ep.push("s", _samples(int(i8[0]), i8.shape[0]), 1000.0 + i8 / FS)
    blocks = ep.pop_ready(0.0, lsl_now=lsl + EPOCH_S + TIMEOUT_S + 0.2)
    assert [b.index for b in blocks] == [6, 7, 8]
    assert [b.unscorable for b in blocks] == [True, True, False]
    assert ep.n_late == 10

"""``daemon.inlet_buffer_s`` and ``daemon.inlet_buffer_mb`` size liblsl's queue of every inlet the
daemon opens: the values go from the config through ``Daemon`` and ``BedIngest`` to
``pylsl.StreamInlet``, the queue then holds that many seconds (the oldest samples are dropped
beyond), and a pull that finds the queue full warns. LSL runs in-process on loopback (conftest
confinement)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import pylsl
import pytest
from daemon_helpers import tiny_model

from rtsleep.daemon.config import load_config
from rtsleep.daemon.ingest import BedIngest
from rtsleep.daemon.inlet import Inlet, StreamSelector, queue_seconds
from rtsleep.daemon.lifecycle import Daemon
from rtsleep.daemon.replay import inlet_buffer_for

FS = 100.0


def _outlet(source_id: str) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo("g4-buf", "EEG", 1, FS, pylsl.cf_float32, source_id)
    ch = info.desc().append_child("channels").append_child("channel")
    ch.append_child_value("label", "C3-A2")
    ch.append_child_value("unit", "uV")
    ch.append_child_value("type", "EEG")
    return pylsl.StreamOutlet(info, chunk_size=0, max_buffered=60)


def _wait_until_queued(inlet: Inlet, n: int, timeout_s: float = 20.0) -> None:
    """Wait until liblsl holds ``n`` samples, then a moment more for the rest of the push."""
    deadline = time.monotonic() + timeout_s
    while inlet._inlet.samples_available() < n:  # noqa: SLF001 - liblsl's own counter
        if time.monotonic() > deadline:
            raise TimeoutError(f"liblsl queued {inlet._inlet.samples_available()} of {n}")
        time.sleep(0.02)
    time.sleep(0.5)


def test_bed_ingest_rejects_a_bad_inlet_buffer() -> None:
    sel = [StreamSelector(source_id="g4-never")]
    with pytest.raises(ValueError, match="inlet_buffer_s must be >= 1"):
        BedIngest("bed1", sel, inlet_buffer_s=0)
    with pytest.raises(TypeError, match="inlet_buffer_s must be an int"):
        BedIngest("bed1", sel, inlet_buffer_s=2.5)  # type: ignore[arg-type]


def test_queue_seconds_bounds_each_stream_by_time_and_memory() -> None:
    # 4 float32 channels at 256 Hz in 2.5 MB: 610 s of queue
    assert queue_seconds(256.0, 4, 4, 3600, 2.5e6) == 610
    # a replay outlet of 3 float64 channels at 50 Hz holds a whole 30-min file (needs 1860 s)
    assert queue_seconds(50.0, 3, 8, 3600, 2.5e6) == 2083
    # a narrow stream is bounded by time
    assert queue_seconds(1.0, 1, 8, 3600, 2.5e6) == 3600
    # a wide, fast stream never drops below 60 s ...
    assert queue_seconds(1000.0, 64, 4, 3600, 2.5e6) == 60
    # ... unless the time bound itself is lower
    assert queue_seconds(1000.0, 64, 4, 2, 2.5e6) == 2
    # no memory bound, or an irregular-rate stream: the time bound
    assert queue_seconds(256.0, 4, 4, 3600, None) == 3600
    assert queue_seconds(0.0, 4, 4, 3600, 2.5e6) == 3600
    with pytest.raises(ValueError, match="max_s must be >= 1"):
        queue_seconds(256.0, 4, 4, 0, None)


def test_bed_ingest_passes_the_memory_bound_to_its_inlets() -> None:
    """1 float32 channel at 100 Hz in 0.04 MB -> a 100-s queue (under the 3600-s time bound)."""
    source_id = f"g4-mb-{os.getpid()}-{time.monotonic_ns()}"
    outlet = _outlet(source_id)
    ingest = BedIngest("bed1", [StreamSelector(source_id=source_id)], inlet_buffer_s=3600,
                       inlet_buffer_mb=0.04)
    try:
        assert ingest.wait_open(20.0), "the inlet did not open"
        inlet = ingest.streams[0].inlet
        assert inlet is not None
        assert inlet.max_buflen_s == 100 and inlet.queue_capacity == 10_000
    finally:
        ingest.close()
        del outlet
    with pytest.raises(ValueError, match="inlet_buffer_mb must be >= 0"):
        BedIngest("bed1", [StreamSelector(source_id="g4-never")], inlet_buffer_mb=-1.0)


def test_configured_inlet_buffer_bounds_the_queue_of_the_daemons_inlets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Config ``inlet_buffer_s = 2`` -> the daemon's inlet keeps the last 2 s of a 10-s burst."""
    source_id = f"g4-buf-{os.getpid()}-{time.monotonic_ns()}"
    outlet = _outlet(source_id)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = tiny_model(tmp_path / "m.safetensors")
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
inlet_buffer_s = 2
[model]
path = "{model}"
device = "cpu"
[zmq]
endpoints = ["tcp://127.0.0.1:{port}"]
[[beds]]
id = "bed1"
streams = [{{ source_id = "{source_id}" }}]
""")
    daemon = Daemon(load_config(cfg_path, env={}))
    try:
        daemon.start()
        ingest = daemon.ingests["bed1"]
        assert ingest.wait_open(20.0), "the daemon's inlet did not open"
        inlet = ingest.streams[0].inlet
        assert inlet is not None
        assert inlet.max_buflen_s == 2 and inlet.queue_capacity == 200
        n = int(10 * FS)
        x = np.arange(n, dtype=np.float32)[:, None]  # (n, 1): each sample holds its index
        t0 = pylsl.local_clock()
        outlet.push_chunk(x, t0 + (n - 1) / FS)
        _wait_until_queued(inlet, 200)
        with caplog.at_level(logging.WARNING, logger="rtsleep.daemon.inlet"):
            got = inlet.pull()
        samples, _ = inlet.buffer.pop()
    finally:
        daemon.close()
        del outlet
    assert got == 200  # only the last 2 s survived the burst
    # the survivors are the newest samples (liblsl drops the oldest)
    np.testing.assert_array_equal(samples[:, 0], np.arange(800, 1000, dtype=np.float32))
    assert inlet.n_queue_full == 1
    assert any("liblsl queue full (2 s" in r.getMessage() for r in caplog.records)


def test_a_replay_faster_than_live_needs_what_arrives_during_a_stall_at_most_the_file() -> None:
    assert inlet_buffer_for(1800.0, None) == 1860  # max speed: the whole file at once
    assert inlet_buffer_for(1800.0, 60.0) == 660  # 10 s of stall at 60x, plus 60 s
    assert inlet_buffer_for(1800.0, 1000.0) == 1860  # never more than the file
    assert inlet_buffer_for(1800.0, 1.0) == 70

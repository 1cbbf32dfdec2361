"""Replay -> LSL on loopback -> inlets -> epocher, with the player in a separate process.

Every test is bounded by timeouts; LSL is confined to this machine by tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pylsl
import pytest
from daemon_helpers import interrupt_until_exit

from rtsleep.daemon.epocher import EpochBlock
from rtsleep.daemon.ingest import BedIngest
from rtsleep.daemon.inlet import StreamSelector
from rtsleep.daemon.replay import (
    RAMP_LABEL,
    Player,
    PlayerConfig,
    load_channels,
    parse_speed,
    plan_outlets,
)
from rtsleep.data.recording import Channel, Modality


def _uid(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{time.monotonic_ns()}"


def _channels(duration_s: float) -> list[Channel]:
    rng = np.random.default_rng(7)
    n100, n10 = int(duration_s * 100), int(duration_s * 10)
    return [
        Channel("C3-A2", Modality.EEG, 100.0, "uV", rng.normal(0, 20, n100).round(2)),
        Channel("C4-A1", Modality.EEG, 100.0, "uV", rng.normal(0, 20, n100).round(2)),
        Channel("Flow", Modality.RESP, 10.0, "", rng.normal(0, 1, n10).round(3)),
    ]


def _collect(
    ingest: BedIngest, n_epochs: int, timeout_s: float, on_poll: Callable[[], None] | None = None
) -> list[EpochBlock]:
    out: list[EpochBlock] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n_epochs and time.monotonic() < deadline:
        out.extend(ingest.poll())
        if on_poll is not None:
            on_poll()
        time.sleep(0.005)
    return out


def _ramp_ok(blocks: list[EpochBlock], label: str, per_epoch: int) -> None:
    """Ramp value (source sample index) == epoch index * per_epoch + position, for every sample."""
    for b in blocks:
        c = [c for c in b.channels if c.label == label][0]
        expected = np.arange(b.index * per_epoch, (b.index + 1) * per_epoch, dtype=float)
        np.testing.assert_array_equal(c.data[c.received], expected[c.received])


def _play_and_cut(config: PlayerConfig, n_epochs: int, timeout_s: float) -> list[EpochBlock]:
    plans = plan_outlets(config.source, config.channels or [], ramp=config.ramp)
    ingest = BedIngest("bed1", [StreamSelector(source_id=p.source_id) for p in plans])
    player = Player(config)
    try:
        player.start(timeout_s=30)
        assert ingest.wait_open(25), "inlets did not open"
        return _collect(ingest, n_epochs, timeout_s)
    finally:
        player.stop()
        ingest.close()


def _assert_same_epochs(a: list[EpochBlock], b: list[EpochBlock]) -> None:
    assert [x.index for x in a] == [x.index for x in b]
    for x, y in zip(a, b, strict=True):
        assert x.end_lsl - x.start_lsl == y.end_lsl - y.start_lsl == 30.0
        assert [c.label for c in x.channels] == [c.label for c in y.channels]
        for cx, cy in zip(x.channels, y.channels, strict=True):
            np.testing.assert_array_equal(cx.data, cy.data)
            np.testing.assert_array_equal(cx.received, cy.received)
        assert x.quality == y.quality


def test_max_speed_and_slow_replay_cut_identical_sample_exact_epochs() -> None:
    chans = _channels(95.0)  # 3 whole epochs + 5 s
    t0 = pylsl.local_clock()
    common = PlayerConfig(channels=chans, ramp=True, wait_consumers_s=25.0, t0=t0)
    fast = _play_and_cut(replace(common, source=_uid("fast"), speed=None), 3, 20)
    slow = _play_and_cut(replace(common, source=_uid("slow"), speed=40.0), 3, 20)
    assert [b.index for b in fast] == [0, 1, 2]
    for blocks in (fast, slow):
        for b in blocks:
            assert all(c.received.all() for c in b.channels)
            assert not b.unscorable
            # the inlet adds liblsl's clock correction (tens of µs on one machine)
            assert abs(b.start_lsl - (t0 + 30.0 * b.index)) < 1e-3
        _ramp_ok(blocks, RAMP_LABEL, 3000)
        np.testing.assert_array_equal(blocks[1].channel("C4-A1").data, chans[1].data[3000:6000])
        np.testing.assert_array_equal(blocks[2].channel("Flow").data, chans[2].data[600:900])
    _assert_same_epochs(fast, slow)


def test_uneven_chunk_timestamps_over_lsl_still_cut_exactly() -> None:
    chans = _channels(65.0)[:1]
    config = PlayerConfig(
        channels=chans, source=_uid("jitter"), speed=None, ramp=True, wait_consumers_s=25.0,
        max_chunk_s=0.07, jitter_s=0.3 / 100.0, seed=5,
    )
    blocks = _play_and_cut(config, 2, 20)
    assert [b.index for b in blocks] == [0, 1]
    for b in blocks:
        assert all(c.received.all() for c in b.channels)
        assert b.quality.channel("C3-A2").n_gaps == 0
    _ramp_ok(blocks, RAMP_LABEL, 3000)


def _crash_and_restart(
    ingest: BedIngest, first: PlayerConfig, second: Callable[[], PlayerConfig], n_after: int,
    timeout_s: float,
) -> list[EpochBlock]:
    """Play ``first`` until epoch 0 is cut, kill it without goodbye (an amplifier crash), drain
    what was in flight, then play ``second()`` (built after the crash) and collect ``n_after``
    more epochs. Both players and ``ingest`` are stopped whatever happens."""
    player = Player(first)
    again: Player | None = None
    try:
        player.start(timeout_s=30)
        assert ingest.wait_open(25)
        got = _collect(ingest, 1, 20)  # epoch 0 complete: the player is ~30 s into the file
        assert [b.index for b in got] == [0]
        player.kill()  # mid-epoch 1, without goodbye
        got += _collect(ingest, 99, 0.5)
        again = Player(second())
        again.start(timeout_s=30)
        return got + _collect(ingest, n_after, timeout_s)
    finally:
        player.kill()
        if again is not None:
            again.stop()
        ingest.close()


def test_killed_player_restarted_with_same_source_id_shows_a_flagged_gap() -> None:
    fs, speed = 100.0, 15.0
    chans = [_channels(200.0)[0]]
    source = _uid("crash")
    t0 = pylsl.local_clock()
    base = PlayerConfig(
        channels=chans, source=source, speed=speed, ramp=True, t0=t0, wait_consumers_s=25.0
    )
    (plan,) = plan_outlets(source, chans, ramp=True)
    ingest = BedIngest("bed1", [StreamSelector(source_id=plan.source_id)], timeout_s=2.0)
    seen: dict[str, float] = {}

    def resumed() -> PlayerConfig:
        inlet = ingest.streams[0].inlet
        assert inlet is not None
        seen["last"] = inlet.n_samples  # samples received before the crash (ramp starts at 0)
        seen["resume_s"] = inlet.n_samples / fs + 12.34  # back 12.34 s of signal later
        assert seen["resume_s"] < 60.0, "restart point must fall inside epoch 1"
        return replace(base, start_s=seen["resume_s"])

    got = _crash_and_restart(ingest, base, resumed, 3, 25)
    inlet = ingest.streams[0].inlet
    assert inlet is not None
    last_seen, resume_s = int(seen["last"]), seen["resume_s"]
    assert [b.index for b in got] == list(range(len(got))) and len(got) >= 4
    _ramp_ok(got, RAMP_LABEL, 3000)
    gap_epoch = got[1]
    q = gap_epoch.quality.channel("C3-A2")
    assert q.n_gaps == 1
    resume_i = int(round(resume_s * fs))
    assert q.n_missing == resume_i - last_seen
    assert q.reasons and q.reasons[0].startswith("gap ")
    c = gap_epoch.channel("C3-A2")
    assert not c.received[last_seen - 3000 : resume_i - 3000].any()
    assert c.received[resume_i - 3000 :].all()
    assert np.isfinite(c.data).all()
    for b in got[2:]:
        assert all(ch.received.all() for ch in b.channels), "scoring data resumes cleanly"
    assert inlet.dejitter.n_gaps == 1


def test_stream_that_comes_back_with_another_layout_is_read_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The amplifier is restarted with a second EEG channel under the same source id. liblsl
    never reconnects an inlet to a different layout, so without a fresh look the bed would stay
    silent all night; instead the new outlet is opened, the change is logged, and the epochs
    after it carry both channels, with the index going on without a gap or a duplicate."""
    import logging

    chans = _channels(200.0)[:2]
    source = _uid("relayout")
    t0 = pylsl.local_clock()
    base = PlayerConfig(channels=chans[:1], source=source, speed=15.0, ramp=True, t0=t0,
                        wait_consumers_s=25.0)
    (plan,) = plan_outlets(source, chans[:1], ramp=True)
    ingest = BedIngest("bed1", [StreamSelector(source_id=plan.source_id)], timeout_s=2.0,
                       relook_s=1.0)
    with caplog.at_level(logging.INFO, logger="rtsleep.daemon"):
        got = _crash_and_restart(
            ingest, base, lambda: replace(base, channels=chans, start_s=90.0), 5, 40)
    assert [b.index for b in got] == list(range(len(got))) and len(got) >= 5
    assert any("came back with another layout (3 channels (C3-A2, C4-A1, ramp)" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR), caplog.text
    assert [c.label for c in got[0].channels] == ["C3-A2", "ramp"]
    last = got[-1]
    assert [c.label for c in last.channels] == ["C3-A2", "C4-A1", "ramp"]
    assert all(c.received.all() for c in last.channels) and not last.unscorable
    _ramp_ok([last], RAMP_LABEL, 3000)


def test_replay_command_plays_dreams_excerpt3_sample_exact_in_60_epochs(
    shared_data: Path,
) -> None:
    path = shared_data / "dreams-spindles" / "excerpt3.edf"
    chans = load_channels(path)
    plans = plan_outlets(str(path), chans)
    assert [p.source_id for p in plans] == [
        f"rtsleep-replay:excerpt3.edf:{m}" for m in ("EEG", "EMG", "ECG", "RESP", "EOG", "SPO2")
    ]
    ingest = BedIngest("bed1", [StreamSelector(source_id=p.source_id) for p in plans])
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtsleep.cli", "replay", str(path), "--speed", "max",
         "--wait-consumers", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert ingest.wait_open(25), "replay outlets not found"
        blocks = _collect(ingest, 60, 40)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        ingest.close()
    assert proc.returncode == 0, err
    assert "rtsleep-replay:excerpt3.edf:EEG: 3 channels at 50 Hz (O1-A1, C3-A1, FP1-A1)" in out
    assert [b.index for b in blocks] == list(range(60))
    ref = {c.label: c.data for c in chans}
    for b in blocks:
        assert len(b.channels) == len(ref)
        for c in b.channels:
            assert c.received.all()
            expected = ref[c.label][b.index * 1500 : (b.index + 1) * 1500]
            np.testing.assert_array_equal(c.data, expected)
    # LSL/XDF channel metadata made it through
    layout = {h.key: h.layout for h in ingest.streams}["rtsleep-replay:excerpt3.edf:EEG"]
    assert layout is not None
    assert [(s.label, s.unit, s.type) for s in layout.channels] == [
        ("O1-A1", "uV", "EEG"), ("C3-A1", "uV", "EEG"), ("FP1-A1", "uV", "EEG")
    ]
    assert layout.sfreq == 50.0 and layout.name == "excerpt3-EEG" and layout.type == "EEG"


def test_speed_parsing() -> None:
    import typer

    assert parse_speed("max") is None
    assert parse_speed("60x") == 60.0
    assert parse_speed("0.5") == 0.5
    for bad in ("0", "-2", "fast", "nan", "inf"):
        with pytest.raises(typer.BadParameter):
            parse_speed(bad)
    with pytest.raises(typer.BadParameter, match="finite number > 0, got 'inf'"):
        parse_speed("inf")


def test_modalities_with_two_rates_get_one_outlet_per_rate() -> None:
    chans = _channels(31.0) + [Channel("C3-fast", Modality.EEG, 200.0, "uV", np.zeros(6200))]
    plans = plan_outlets("/data/night.edf", chans)
    assert sorted(p.source_id for p in plans) == [
        "rtsleep-replay:night.edf:EEG:100Hz",
        "rtsleep-replay:night.edf:EEG:200Hz",
        "rtsleep-replay:night.edf:RESP",
    ]


def test_replay_of_a_missing_file_fails_with_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.edf"
    proc = subprocess.run(
        [sys.executable, "-m", "rtsleep.cli", "replay", str(missing)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: {missing}: no such file"


@pytest.mark.parametrize("start", ["300", "5000", "inf"])
def test_replay_starting_past_the_end_is_an_error_not_an_empty_success(
    shared_data: Path, start: str
) -> None:
    from typer.testing import CliRunner

    from rtsleep.cli import app

    psg = shared_data / "sleep-edf-sc-subset" / "psg-excerpt" / "short_psg.edf"  # 300 s
    res = CliRunner().invoke(app, ["replay", str(psg), "--speed", "max", "--start", start])
    assert res.exit_code == 1, res.output
    assert f"error: {psg}: --start {float(start):g} s is not within the recording (300 s)" \
        in res.output


def test_an_impatient_ctrl_c_stops_a_replay_cleanly(shared_data: Path) -> None:
    """SIGINT, then SIGINT every 10 ms until the process is gone: one line, exit 0, and no
    KeyboardInterrupt noise from the outlets being torn down."""

    psg = shared_data / "sleep-edf-sc-subset" / "psg-excerpt" / "short_psg.edf"
    proc = subprocess.Popen([sys.executable, "-m", "rtsleep.cli", "replay", str(psg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("rtsleep-replay:")  # outlets planned
        time.sleep(1.0)  # playing at 1x
        interrupt_until_exit(proc)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "replay: interrupted" in out
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_store_parquet_plays_its_stored_signals_epoch_after_epoch(tmp_path: Path) -> None:
    from rtsleep.data.recording import Recording
    from rtsleep.data.store import StoredRecording, write_recording

    rng = np.random.default_rng(3)
    rec = Recording(
        id="syn1", dataset="edf", subject="s1", source=tmp_path / "syn1.edf",
        channels=[Channel("C3-A2", Modality.EEG, 200.0, "uV", rng.normal(0, 30, 200 * 95))],
    )
    path, n_epochs = write_recording(rec, tmp_path / "store")
    chans = load_channels(path)
    stored = StoredRecording(path)
    (sc,) = [c for c in stored.meta.channels if c.label == "C3-A2"]
    (c,) = [c for c in chans if c.label == "C3-A2"]
    assert (c.sfreq, c.modality, c.unit) == (sc.sfreq, Modality.EEG, sc.unit)
    signal = stored.read(beats=False).signals["C3-A2"]  # (n_epochs, n_times)
    np.testing.assert_array_equal(c.data, signal.reshape(-1).astype(np.float64))
    assert c.n_samples == n_epochs * sc.n_times
    (plan,) = [p for p in plan_outlets(str(path), chans) if p.type == "EEG"]
    assert plan.source_id == "rtsleep-replay:syn1.parquet:EEG"


def test_loop_replay_wraps_the_data_and_keeps_timestamps_increasing() -> None:
    chans = _channels(35.0)[:1]  # 3500 samples at 100 Hz
    config = PlayerConfig(
        channels=chans, source=_uid("loop"), speed=None, loop=True, duration_s=61.0,
        ramp=True, wait_consumers_s=25.0,
    )
    blocks = _play_and_cut(config, 2, 20)
    assert [b.index for b in blocks] == [0, 1]
    _ramp_ok(blocks, RAMP_LABEL, 3000)  # sample indices keep counting across the wrap
    wrapped = np.concatenate([chans[0].data[3000:], chans[0].data[:2500]])
    np.testing.assert_array_equal(blocks[1].channel("C3-A2").data, wrapped)
    assert blocks[1].channel("C3-A2").received.all()

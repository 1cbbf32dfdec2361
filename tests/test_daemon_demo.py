"""Demo helpers: summary line format, agreement with the expert, dataset guess, no-model error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rtsleep import demo

SUMMARY_RE = re.compile(
    r"^demo: (\d+) epochs scored, agreement (\d+\.\d|n/a)% with the expert hypnogram, "
    r"p99 latency (\d+\.\d|n/a) ms$"
)


def test_summary_line_has_the_promised_format() -> None:
    line = demo.summary_line(60, 83.333, 41.26)
    assert SUMMARY_RE.match(line)
    assert line == ("demo: 60 epochs scored, agreement 83.3% with the expert hypnogram, "
                    "p99 latency 41.3 ms")


def test_agreement_counts_only_epochs_scored_by_both() -> None:
    msgs = [
        {"epoch": 0, "stage": "W"},
        {"epoch": 1, "stage": "N2"},
        {"epoch": 2, "stage": None},  # unscorable: not counted
        {"epoch": 3, "stage": "R"},
        {"epoch": 4, "stage": "N3"},  # expert unscored: not counted
    ]
    expert = np.array([0, 3, 2, 4, -1])
    assert demo.agreement(msgs, expert) == pytest.approx(100.0 * 2 / 3)
    assert demo.agreement(msgs, None) is None


def test_dataset_guess_for_expert_hypnograms() -> None:
    assert demo.guess_dataset(Path("x/excerpt3.edf")) == "dreams"
    assert demo.guess_dataset(Path("SC4001E0-PSG.edf")) == "sleep-edf"
    assert demo.guess_dataset(Path("night.edf")) == "edf"


def test_missing_model_fails_with_a_clear_message(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--model", str(tmp_path / "none.safetensors")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("demo: error: ") and "no trained model installed" in err[-1]


def test_inlet_buffer_covers_a_loop_stall_at_the_replay_speed_at_most_the_night() -> None:
    assert demo.inlet_buffer_s(60, "max") == 1860  # the whole night arrives at once
    assert demo.inlet_buffer_s(60, "60") == 660  # 10 wall seconds at 60x, plus a margin
    assert demo.inlet_buffer_s(60, "1000") == 1860  # never more than the night
    assert demo.inlet_buffer_s(60, "nan") == 1860


def test_a_bad_speed_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert demo.main(["--speed", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "demo: error: --speed: speed must be a number or 'max', got 'fast'"


def test_an_unreadable_recording_is_a_one_line_error(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "excerpt3.edf"
    damaged.write_bytes((shared_data / "dreams-spindles" / "excerpt3.edf").read_bytes()[:100000])
    assert demo.main(["--file", str(damaged)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"demo: error: {damaged}: truncated EDF")


def test_sigterm_stops_the_daemon_and_the_replay_and_removes_the_temporary_folder(
    tmp_path: Path,
) -> None:
    """A CI timeout or ``kill`` ends the demo through its clean-up, like Ctrl-C: nothing of it
    is left running or on disk."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, TMPDIR=str(tmp_path))
    children: list[str] = []
    proc = subprocess.Popen([sys.executable, "-m", "rtsleep.demo", "--timeout", "120"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the daemon is up and the replay started
        assert first.startswith("demo: "), first
        folder, = tmp_path.glob("rtsleep-demo-*")
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children, "the daemon should be running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children:  # so that a failing run leaves nothing behind either
            if proc.returncode != 128 + signal.SIGTERM:
                subprocess.run(["kill", "-9", pid], capture_output=True)
    time.sleep(0.5)
    assert not folder.exists()
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in _state(pid), pid


def _state(pid: str) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("State:")).lower()


class _Queue:
    """A SUB socket stand-in that hands out prepared ``(topic, payload)`` frames."""

    def __init__(self, frames: list[tuple[bytes, bytes]]) -> None:
        self.frames = frames

    def poll(self, timeout_ms: int) -> bool:
        return bool(self.frames)

    def recv_multipart(self) -> list[bytes]:
        return list(self.frames.pop(0))


def test_the_final_frame_waits_for_the_heartbeat_that_counts_the_last_epoch() -> None:
    from rtsleep.daemon.messages import STATUS_TOPIC, decode, encode, status_message
    from rtsleep.daemon.watch import WatchState, render
    from rtsleep.demo import _final_heartbeat

    def status(last: int) -> tuple[bytes, bytes]:
        info = {"last_epoch": last, "streams_connected": 6, "streams_open": 6,
                "streams_total": 6, "epochs_scored": last + 1, "epochs_unscorable": 0,
                "ahi": None, "severity": None}
        return STATUS_TOPIC.encode(), encode(status_message(
            state="running", uptime_s=1.0, model_id="m", beds={"demo": info}, now_utc=0.0))

    state = WatchState(["demo"])
    state.update(STATUS_TOPIC, decode(status(57)[1]), 0.0)  # lagging two epochs behind
    queue = _Queue([status(58), status(59), status(59)])
    _final_heartbeat(queue, state, last_epoch=59, limit_s=5.0)
    assert "scored 60" in render(state, 0.0) and len(queue.frames) == 1  # stopped at the 59

"""``rtsleep watch``: the pure rendering, the message bookkeeping, and real ZeroMQ sockets on
loopback (reception, reconnection to a restarted publisher, the command line)."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from rtsleep.cli import app
from rtsleep.daemon.messages import (
    STATUS_TOPIC,
    alert_message,
    stage_message,
    stage_topic,
    status_message,
)
from rtsleep.daemon.publisher import Publisher, PublisherError
from rtsleep.daemon.watch import UNSCORABLE, WatchOptions, WatchState, render, run_watch, topics
from rtsleep.data.recording import STAGE_NAMES

RUN = "r1"


def _stage(bed: str, epoch: int, stage: str | None, seq: int, run: str = RUN,
           reason: str | None = None) -> dict[str, Any]:
    probs = None if stage is None else [0.9 if n == stage else 0.025 for n in STAGE_NAMES]
    msg = stage_message(bed=bed, epoch=epoch, start_lsl=30.0 * epoch, end_lsl=30.0 * epoch + 30,
                        start_utc=1.7e9 + 30 * epoch, end_utc=1.7e9 + 30 * epoch + 30,
                        probs=probs, apnea_prob=0.125, hypopnea_prob=0.25, quality={},
                        model_id="m" * 64, reason=reason if stage is None else None,
                        latency_ms=7.0)
    msg.update(seq=seq, run=run)
    return msg


def _status(seq: int, beds: dict[str, dict[str, Any]], run: str = RUN) -> dict[str, Any]:
    msg = status_message(state="running", uptime_s=10.0, model_id="abc123" * 10, beds=beds,
                         now_utc=1.7e9)
    msg.update(seq=seq, run=run)
    return msg


def _bed_status(ahi: float | None = 12.5, severity: str | None = "mild") -> dict[str, Any]:
    return {"last_epoch": 3, "streams_connected": 1, "streams_open": 2,
            "streams_total": 2, "epochs_scored": 4,
            "epochs_unscorable": 1, "ahi": ahi, "severity": severity}


def _hypno_rows(text: str) -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition("|")
        if sep and head.strip() in (*STAGE_NAMES, UNSCORABLE):
            rows[head.strip()] = tail
    return rows


# ------------------------------------------------------------------------- pure rendering
def test_render_shows_current_stage_probabilities_and_respiratory_probs() -> None:
    st = WatchState(started=0.0)
    st.update(stage_topic("bed1"), _stage("bed1", 7, "N3", seq=1), now=1.0)
    text = render(st, now=1.0, ascii_only=True)
    assert "== bed bed1 " in text
    assert "epoch 7" in text and "stage N3" in text
    assert " >N3 0.90 " in text  # the current stage is marked, with its probability bar
    assert "  W  0.03 " in text
    assert "apnea 0.12" in text and "hypopnea 0.25" in text
    assert "latency 7 ms" in text


def test_hypnogram_puts_each_epoch_on_its_stage_row_and_column() -> None:
    st = WatchState(history=20, started=0.0)
    seq = 0
    for epoch, stage in enumerate(["W", "N1", "N2", "N3", "R", "N2"]):
        seq += 1
        st.update(stage_topic("b"), _stage("b", epoch, stage, seq), now=1.0)
    rows = _hypno_rows(render(st, 1.0, ascii_only=True))
    assert rows["W"] == "#"
    assert rows["N1"] == " #"
    assert rows["N2"] == "  #  #"
    assert rows["N3"] == "   #"
    assert rows["R"] == "    #"
    assert UNSCORABLE not in rows  # no unscorable row when every epoch was scored


def test_unscorable_epoch_shows_reason_and_a_marker() -> None:
    st = WatchState(started=0.0)
    st.update(stage_topic("b"), _stage("b", 0, "W", 1), now=1.0)
    st.update(stage_topic("b"), _stage("b", 1, None, 2, reason="EEG: flat line"), now=1.0)
    text = render(st, 1.0, ascii_only=True)
    assert "UNSCORABLE: EEG: flat line" in text
    assert _hypno_rows(text)[UNSCORABLE] == " ?"


def test_hypnogram_scrolls_to_the_latest_epochs() -> None:
    st = WatchState(history=10, started=0.0)
    for epoch in range(25):
        st.update(stage_topic("b"), _stage("b", epoch, "N2", epoch + 1), now=1.0)
    assert sorted(st.beds["b"].hypnogram) == list(range(15, 25))
    text = render(st, 1.0, ascii_only=True)
    assert _hypno_rows(text)["N2"] == "#" * 10
    assert "epochs 15..24" in text


def test_epoch_index_back_at_zero_drops_the_old_night() -> None:
    st = WatchState(started=0.0)
    for epoch in range(5):
        st.update(stage_topic("b"), _stage("b", epoch, "N2", epoch + 1), now=1.0)
    st.update(stage_topic("b"), _stage("b", 0, "W", 0, run="r2"), now=2.0)
    assert st.beds["b"].hypnogram == {0: "W"}


def test_repeats_from_the_last_value_cache_are_dropped() -> None:
    st = WatchState(started=0.0)
    msg = _stage("b", 3, "R", seq=5)
    assert st.update(stage_topic("b"), msg, now=1.0) is True
    assert st.update(stage_topic("b"), msg, now=1.1) is False
    assert st.n_repeats == 1 and st.beds["b"].n_stage == 1
    # the same seq from a restarted publisher (another run) is a new message
    assert st.update(stage_topic("b"), _stage("b", 4, "R", seq=5, run="r2"), now=1.2) is True


def test_status_gives_ahi_severity_and_stream_counts() -> None:
    st = WatchState(started=0.0)
    st.update(STATUS_TOPIC, _status(1, {"bed1": _bed_status()}), now=3.0)
    text = render(st, 4.0)
    assert "streams 1/2" in text
    assert "scored 4  unscorable 1  AHI 12.5/h (mild)" in text
    assert "daemon running" in text
    assert "waiting for the first epoch" in text


def test_stalled_marker_appears_when_heartbeats_stop() -> None:
    st = WatchState(stall_s=5.0, started=0.0)
    assert "waiting for the daemon" in render(st, now=1.0)
    assert "STALLED: no heartbeat since the start" in render(st, now=6.0)
    st.update(STATUS_TOPIC, _status(1, {"b": _bed_status()}), now=10.0)
    assert "STALLED" not in render(st, now=14.0)
    assert "STALLED: no heartbeat for 6 s" in render(st, now=16.0)


def test_alerts_are_listed_newest_last_and_bounded() -> None:
    st = WatchState(started=0.0)
    for i in range(6):
        msg = alert_message(bed="b", epoch=10 + i, event="apnea", state="confirmed",
                            onset_lsl=300.0, duration_s=30.0 * (i + 1), source="model",
                            probability=0.75)
        msg.update(seq=i, run=RUN)
        st.update("alert/b/", msg, now=1.0)
    lines = [ln for ln in render(st, 1.0).splitlines() if ln.startswith("  ! ")]
    assert len(lines) == 4
    assert lines[0].startswith("  ! epoch 12: apnea confirmed 90 s p=0.75 (model)")
    assert lines[-1].startswith("  ! epoch 15:")


def test_bed_filter_ignores_other_beds_and_subscribes_with_delimiters() -> None:
    st = WatchState(beds=["bed1"], started=0.0)
    assert st.update(stage_topic("bed10"), _stage("bed10", 0, "W", 1), now=1.0) is False
    st.update(STATUS_TOPIC, _status(2, {"bed1": _bed_status(), "bed10": _bed_status()}), 1.0)
    assert list(st.beds) == ["bed1"]
    assert topics(["bed1"]) == ["status/", "stage/bed1/", "alert/bed1/"]
    assert topics([]) == ["stage/", "alert/", "status/"]


def test_a_new_state_is_not_stalled_before_stall_s() -> None:
    st = WatchState(stall_s=5.0)
    assert not st.stalled(time.monotonic())
    assert "waiting for the daemon" in render(st, time.monotonic())


def test_foreign_messages_are_counted_not_shown() -> None:
    st = WatchState(started=0.0)
    assert st.update("stage/b/", {"schema": "other/1", "bed": "b", "epoch": 1}, 1.0) is False
    assert st.n_bad == 1 and not st.beds


def test_bad_options_are_value_errors() -> None:
    with pytest.raises(ValueError, match="history"):
        WatchState(history=0)
    with pytest.raises(ValueError, match="--count"):
        run_watch(WatchOptions(max_messages=0), out=io.StringIO())
    # a negative refresh would have made the poll wait for ever, ignoring --duration
    for refresh in (-1.0, 0.0, float("inf")):
        with pytest.raises(ValueError, match="--refresh must be > 0 and <= 60 s"):
            run_watch(WatchOptions(duration_s=0.1, refresh_s=refresh), out=io.StringIO())


@pytest.mark.parametrize(("endpoint", "problem"), [
    ("tcp://127.0.0.1:99999", "port 99999 outside 1-65535"),
    ("tcp://no-such-host.invalid:5556", "cannot resolve host 'no-such-host.invalid'"),
    ("tcp://*:5556", "'\\*' is for binding"),
    ("127.0.0.1:5556", "expected tcp://HOST:PORT"),
])
def test_an_endpoint_that_cannot_be_reached_is_refused_before_waiting(
        endpoint: str, problem: str) -> None:
    # ZeroMQ connects in the background: without the check watch waited as "disconnected"
    with pytest.raises(ValueError, match=f"^{re.escape(endpoint)}: {problem}"):
        run_watch(WatchOptions(endpoints=[endpoint], duration_s=5.0), out=io.StringIO())


# ------------------------------------------------------------------------- real sockets
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Watcher:
    """``run_watch`` in a thread, its final frame in ``out``."""

    def __init__(self, options: WatchOptions) -> None:
        self.out = io.StringIO()
        self.state = WatchState(options.beds, history=options.history, stall_s=options.stall_s)
        self.thread = threading.Thread(target=run_watch, args=(options, self.out, self.state),
                                       daemon=True)
        self.thread.start()

    def done(self) -> bool:
        return not self.thread.is_alive()


def _wait_subscribed(pub: Publisher, n: int, watcher: _Watcher, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while pub.n_subscriptions < n and time.monotonic() < deadline and not watcher.done():
        pub.poll(0.02)
    if pub.n_subscriptions < n:
        raise RuntimeError(f"watch did not subscribe ({pub.n_subscriptions}/{n})")


def test_watch_receives_stages_and_heartbeat_over_a_real_socket() -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    with Publisher([endpoint]) as pub:
        w = _Watcher(WatchOptions(endpoints=[endpoint], max_messages=6, duration_s=20.0,
                                  live=False, ascii_only=True))
        _wait_subscribed(pub, 3, w)
        for epoch, stage in enumerate(["W", "N1", "N2", "N2", "N3"]):
            pub.publish(stage_topic("bed1"), {k: v for k, v in _stage("bed1", epoch, stage, 0)
                                              .items() if k not in ("seq", "run")})
        pub.publish(STATUS_TOPIC, {k: v for k, v in _status(0, {"bed1": _bed_status()}).items()
                                   if k not in ("seq", "run")})
        w.thread.join(20.0)
    assert w.done()
    assert w.state.n_messages == 6
    assert w.state.beds["bed1"].hypnogram == {0: "W", 1: "N1", 2: "N2", 3: "N2", 4: "N3"}
    text = w.out.getvalue()
    assert "\x1b[" not in text  # not a terminal: one plain frame
    assert "connected" in text and "stage N3" in text and "AHI 12.5/h" in text


def test_watch_reconnects_to_a_restarted_daemon_by_itself() -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    w = _Watcher(WatchOptions(endpoints=[endpoint], max_messages=3, duration_s=30.0,
                              live=False, ascii_only=True))
    with Publisher([endpoint]) as first:
        _wait_subscribed(first, 3, w)
        first.publish(stage_topic("b"), _strip(_stage("b", 0, "N2", 0)))
        first.publish(stage_topic("b"), _strip(_stage("b", 1, "N2", 0)))
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and w.state.n_messages < 2:
            time.sleep(0.02)
        assert w.state.n_messages == 2
    # the first daemon is gone; a new one binds the same endpoint and goes on with epoch 2
    with _bind_when_free(endpoint) as second:
        _wait_subscribed(second, 3, w)
        second.publish(stage_topic("b"), _strip(_stage("b", 2, "R", 0)))
        w.thread.join(20.0)
    assert w.done()
    assert w.state.beds["b"].hypnogram == {0: "N2", 1: "N2", 2: "R"}
    assert w.state.n_messages == 3


def _bind_when_free(endpoint: str, limit_s: float = 10.0) -> Publisher:
    """A publisher on ``endpoint`` once the closed one has released it (ZeroMQ closes async)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return Publisher([endpoint])
        except PublisherError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _strip(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k not in ("seq", "run")}


def test_watch_command_shows_stalled_without_a_daemon_and_exits_1() -> None:
    """The view says so, and the exit status lets a script tell the daemon is down."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    res = CliRunner().invoke(app, ["watch", "--endpoint", endpoint, "--duration", "0.4",
                                   "--stall", "0.1", "--plain"])
    assert res.exit_code == 1, res.output
    assert "disconnected" in res.output
    assert "STALLED: no heartbeat since the start" in res.output
    assert f"rtsleep watch: {endpoint}: no message from the daemon in 0 s" in res.output


def test_watch_command_rejects_half_a_curve_key_pair(tmp_path: Any) -> None:
    res = CliRunner().invoke(app, ["watch", "--duration", "0.2", "--curve-server-key",
                                   str(tmp_path / "server.key")])
    assert res.exit_code == 1
    assert "CURVE needs both" in res.output

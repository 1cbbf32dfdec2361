"""End to end, real processes on loopback: ``rtsleep replay`` -> ``rtsleep serve`` -> a SUB socket.

DREAMS excerpt3 (30 min, 60 epochs) replayed into the daemon: every epoch arrives once, in order,
equal to ``rtsleep score``; a SIGKILLed daemon restarts where it stopped (no gap, no duplicate,
state restored); a stream killed mid-epoch and restarted flags the affected epochs and scoring
resumes; SIGTERM exits 0 after persisting; config errors exit non-zero with one clear line.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from daemon_helpers import (
    N_EPOCHS,
    Daemon,
    Sub,
    child_env,
    confined_lsl,
    excerpt3,
    free_port,
    interrupt_until_exit,
    rtsleep,
    tiny_model,
    write_config,
)

from rtsleep.daemon.replay import Player, PlayerConfig
from rtsleep.daemon.state import load_state


@pytest.fixture(scope="module", autouse=True)
def lsl_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """LSL on a port block and session of this module (see ``daemon_helpers.confined_lsl``)."""
    yield from confined_lsl(tmp_path_factory, "e2e")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


def score_offline(path: Path, model: Path, out: Path) -> list[dict[str, Any]]:
    res = subprocess.run(rtsleep("score", str(path), "--out", str(out), "--model", str(model)),
                         env=child_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_replay_max_speed_gives_60_epochs_equal_to_score(
    shared_data: Path, model_path: Path, tmp_path: Path, ctx: zmq.Context[Any]
) -> None:
    edf = excerpt3(shared_data)
    port = free_port()
    cfg = write_config(tmp_path, model_path, edf.name, port)
    sub = Sub(ctx, port)
    daemon = Daemon(cfg, tmp_path / "serve.log")
    try:
        sub.pump(lambda: sub.status, 60, daemon)  # serving
        replay = subprocess.Popen(rtsleep("replay", str(edf), "--speed", "max",
                                          "--wait-consumers", "60"),
                                  env=child_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            sub.pump(lambda: len(sub.stages) >= N_EPOCHS, 90, daemon)
        finally:
            replay.kill()
            replay.wait(10)
        # a dashboard joining now gets the last stage at once (last-value cache)
        late = Sub(ctx, port)
        late.pump(lambda: bool(late.stages), 10, daemon)
        assert late.stages[0]["epoch"] == N_EPOCHS - 1
        assert late.stages[0]["seq"] == sub.stages[-1]["seq"]
        code = daemon.stop(signal.SIGTERM)
    finally:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)
    assert code == 0, daemon.text()
    assert [m["epoch"] for m in sub.stages] == list(range(N_EPOCHS))
    live = sub.stages
    bad = [(m["epoch"], m["reason"]) for m in live if m["status"] != "scored"]
    assert not bad, f"{bad}\n{daemon.text()[-3000:]}"
    assert all(m["latency_ms"] is not None and m["latency_ms"] >= 0 for m in live)
    offline = score_offline(edf, model_path, tmp_path / "score.jsonl")
    assert len(offline) == N_EPOCHS
    for a, b in zip(live, offline, strict=True):
        for key in ("epoch", "status", "stage", "probs", "apnea_prob", "hypopnea_prob",
                    "quality", "model_id"):
            assert a[key] == b[key], (a["epoch"], key)
    saved = load_state(tmp_path / "state", "bed1", live[0]["model_id"], max_age_s=3600)
    assert saved is not None and saved.next_epoch == N_EPOCHS
    assert "stopped" in daemon.text()
    assert "queue full" not in daemon.text()  # the replay's inlet buffer held every sample


@pytest.mark.slow
def test_sigkill_and_restart_continues_indices_with_state_restored(
    shared_data: Path, model_path: Path, tmp_path: Path, ctx: zmq.Context[Any]
) -> None:
    edf = excerpt3(shared_data)
    port = free_port()
    cfg = write_config(tmp_path, model_path, edf.name, port)
    sub = Sub(ctx, port)
    daemon = Daemon(cfg, tmp_path / "serve1.log")
    player = Player(PlayerConfig(path=edf, speed=100.0, wait_consumers_s=20))
    daemon2: Daemon | None = None
    try:
        sub.pump(lambda: sub.status, 60, daemon)
        player.start(timeout_s=60)
        sub.pump(lambda: len(sub.stages) >= 10, 60, daemon)
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        n_before = len(sub.stages)
        daemon2 = Daemon(cfg, tmp_path / "serve2.log")
        sub.pump(lambda: bool(sub.stages) and sub.stages[-1]["epoch"] >= N_EPOCHS - 1, 90,
                 daemon2)
        assert daemon2.stop(signal.SIGTERM) == 0
        sub.pump(lambda: any(s["state"] == "stopping" for s in sub.status), 10)
    finally:
        player.kill()
        for d in (daemon, daemon2):
            if d is not None and d.proc.poll() is None:
                d.stop(signal.SIGKILL)
    indices = [m["epoch"] for m in sub.stages]
    assert indices == list(range(N_EPOCHS)), indices
    runs = [m["run"] for m in sub.stages]
    assert len(set(runs[:n_before])) == 1 and runs[n_before] != runs[0]  # two daemon runs
    assert "restored state (next epoch" in daemon2.text()
    after = sub.stages[n_before:]
    # epochs played while no daemon ran are reported unscorable, later ones are scored again
    assert after[-1]["status"] == "scored"
    assert any(m["status"] == "scored" for m in after)
    (final,) = [s["beds"]["bed1"] for s in sub.status if s["state"] == "stopping"]
    assert final["last_epoch"] == N_EPOCHS - 1
    # the counters went on from the saved state: together they cover the whole night
    assert final["epochs_scored"] + final["epochs_unscorable"] == N_EPOCHS
    assert final["epochs_scored"] == sum(m["status"] == "scored" for m in sub.stages)


@pytest.mark.slow
def test_stream_killed_mid_epoch_flags_epochs_and_scoring_resumes(
    shared_data: Path, model_path: Path, tmp_path: Path, ctx: zmq.Context[Any]
) -> None:
    import pylsl

    edf = excerpt3(shared_data)
    port = free_port()
    cfg = write_config(tmp_path, model_path, edf.name, port)
    sub = Sub(ctx, port)
    daemon = Daemon(cfg, tmp_path / "serve.log")
    players: list[Player] = []
    try:
        sub.pump(lambda: sub.status, 60, daemon)
        t0 = pylsl.local_clock()
        # the first player stops pushing 15 s into epoch 10 and is then SIGKILLed
        players.append(Player(PlayerConfig(path=edf, speed=60.0, t0=t0, duration_s=315.0,
                                           wait_consumers_s=20)))
        players[0].start(timeout_s=60)
        sub.pump(lambda: bool(sub.stages) and sub.stages[-1]["epoch"] >= 9, 60, daemon)
        # rtsleep check: the config is valid, the model loads and every stream is there
        chk = subprocess.run(rtsleep("check", "--config", str(cfg)), env=child_env(),
                             capture_output=True, text=True, timeout=120)
        assert chk.returncode == 0 and chk.stdout.startswith("ok: "), chk.stderr
        players[0].kill()
        # same source ids and timeline, resuming at 450 s (epoch 15): a 135-s outage; the
        # daemon's inlets reconnect by themselves (recover=True)
        players.append(Player(PlayerConfig(path=edf, speed=60.0, t0=t0, start_s=450.0,
                                           wait_consumers_s=30)))
        players[1].start(timeout_s=60)

        def resumed() -> bool:
            return any(m["epoch"] >= 16 and m["status"] == "scored" for m in sub.stages)

        sub.pump(resumed, 90, daemon)
        assert daemon.proc.poll() is None  # nothing crashed
        code = daemon.stop(signal.SIGTERM)
    finally:
        for pl in players:
            pl.kill()
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)
    assert code == 0
    by_index = {m["epoch"]: m for m in sub.stages}
    assert [m["epoch"] for m in sub.stages] == list(range(len(sub.stages)))  # no gap, no repeat
    assert all(by_index[k]["status"] == "scored" for k in range(10))
    gap_flags = [f for q in by_index[10]["quality"].values() for f in q["flags"]]
    assert by_index[10]["status"] == "unscorable" or any(f.startswith("gap") for f in gap_flags)
    for k in range(11, 15):  # 330-450 s: no data at all
        assert by_index[k]["status"] == "unscorable", k
        assert by_index[k]["reason"] and by_index[k]["stage"] is None
    assert sub.stages[-1]["status"] == "scored"  # resumed after the stream came back


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[daemon\nstate_dir = 1\n", "malformed TOML"),
        ("[[beds]]\nid = \"b\"\nstreams = [{ type = \"EEG\" }]\n[zmq]\nendpoints = [\"x\"]\n",
         "zmq.endpoints[0]"),
    ],
)
def test_config_errors_exit_nonzero_with_one_line(tmp_path: Path, text: str, words: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    for cmd in ("serve", "check"):
        res = subprocess.run(rtsleep(cmd, "--config", str(cfg)), env=child_env(),
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0] and str(cfg) in lines[0], res.stderr


def test_curve_misconfiguration_fails_startup_with_one_line(
    model_path: Path, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, model_path, "x.edf", free_port())
    text = cfg.read_text().replace(
        "[zmq]", f'[zmq]\ncurve_secret_key = "{tmp_path / "server.key_secret"}"\n'
                 f'curve_allow_dir = "{tmp_path}"')
    cfg.write_text(text)
    res = subprocess.run(rtsleep("serve", "--config", str(cfg)), env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last == f"rtsleep serve: {tmp_path / 'server.key_secret'}: CURVE secret key file " \
                   "not found"


def test_unknown_model_fails_startup_and_check(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tmp_path / "no-such-model.safetensors", "x.edf", free_port())
    res = subprocess.run(rtsleep("serve", "--config", str(cfg)), env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("rtsleep serve: model: ")
    assert "no-such-model.safetensors: model file not found" in res.stderr
    res = subprocess.run(rtsleep("check", "--config", str(cfg), "--stream-timeout", "0.2"),
                         env=child_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "problem: model:" in res.stderr
    assert "LSL stream" in res.stderr and "not found" in res.stderr


def test_signals_that_arrive_during_the_teardown_after_shutdown_do_not_kill_the_daemon(
    model_path: Path, tmp_path: Path
) -> None:
    """SIGTERM, then SIGINT every 10 ms until the process is gone (an impatient operator): the
    daemon shuts down cleanly and exits 0, also when a signal lands after ``stopped`` while the
    interpreter tears down."""
    cfg = write_config(tmp_path, model_path, "x.edf", free_port())  # its streams never appear
    daemon = Daemon(cfg, tmp_path / "serve.log")
    daemon.wait_serving()
    daemon.proc.send_signal(signal.SIGTERM)
    interrupt_until_exit(daemon.proc, 60)
    assert daemon.stop() == 0, daemon.text()[-2000:]
    assert "stopped" in daemon.text()


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(
    model_path: Path, tmp_path: Path
) -> None:
    """Another port (or an ipc:// endpoint, which libzmq lets a second process take over) must
    not let two daemons restore and overwrite the same beds' state files."""

    cfg = write_config(tmp_path, model_path, "x.edf", free_port())
    daemon = Daemon(cfg, tmp_path / "serve.log")
    try:
        daemon.wait_serving()
        other = tmp_path / "other.toml"
        text = cfg.read_text()
        port = text.split("tcp://127.0.0.1:")[1].split('"')[0]
        other.write_text(text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"))
        res = subprocess.run(rtsleep("serve", "--config", str(other)), env=child_env(),
                             capture_output=True, text=True, timeout=60)
        from rtsleep.daemon.lifecycle import serving_pid

        assert serving_pid(tmp_path / "state") == str(daemon.proc.pid)
    finally:
        assert daemon.stop() == 0, daemon.text()[-2000:]
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].endswith(
        f"another rtsleep serve is using this state directory (pid {daemon.proc.pid})")
    assert serving_pid(tmp_path / "state") is None  # released when the daemon stopped


def test_check_reports_a_zmq_port_that_is_already_taken(model_path: Path, tmp_path: Path
                                                        ) -> None:
    """``serve`` would fail on it; ``check`` must say so before, not report ok."""
    import socket

    from rtsleep.daemon.commands import check_config
    from rtsleep.daemon.config import load_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = load_config(write_config(tmp_path, model_path, "x.edf", port), env={})
        problems = check_config(cfg, stream_timeout_s=0.1)
    assert any(p.startswith(f"zmq: tcp://127.0.0.1:{port}: cannot bind: ") for p in problems), \
        problems
    free = load_config(write_config(tmp_path, model_path, "x.edf", free_port()), env={})
    assert not any(p.startswith("zmq:") for p in check_config(free, stream_timeout_s=0.1))

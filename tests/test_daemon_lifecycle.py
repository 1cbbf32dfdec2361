"""The serve loop in-process: epochs injected into the backlog go through scoring, every alert
pathway, publishing, persistence and the heartbeat; a bed without streams stops nothing; SIGTERM
only sets a flag; journal log lines carry syslog priorities."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
import zmq
from daemon_helpers import excerpt3

from rtsleep.daemon.config import load_config
from rtsleep.daemon.epocher import BedEpocher, EpochBlock
from rtsleep.daemon.inlet import StreamLayout
from rtsleep.daemon.lifecycle import Daemon
from rtsleep.daemon.messages import decode
from rtsleep.daemon.replay import load_channels, plan_outlets, stream_info
from rtsleep.daemon.state import load_state, new_recording_path, request_new_recording
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models import SleepNet, SleepNetConfig, save_model

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "rtsleep" / "schemas"
                     / "messages.schema.json").read_text())
N = 12


def excerpt3_blocks(shared_data: Path) -> list[EpochBlock]:
    path = excerpt3(shared_data)
    plans = plan_outlets(path.name, load_channels(path))
    layouts = [StreamLayout.from_info(stream_info(p), p.source_id) for p in plans]
    ep = BedEpocher("bed1", [lay.key for lay in layouts])
    for p, lay in zip(plans, layouts, strict=True):
        ep.attach(lay.key, lay)
        n = int(N * 30 * p.sfreq)
        ep.push(lay.key, p.data[:n], 500.0 + np.arange(n) / p.sfreq)
    return ep.pop_ready()


def write_config(tmp_path: Path, model: Path, extra_toml: str = "") -> tuple[Path, int]:
    """A daemon config with beds bed1 and bed2 (streams never found) and a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
heartbeat_s = 0.1
[model]
path = "{model}"
device = "cpu"
[zmq]
endpoints = ["tcp://127.0.0.1:{port}"]
{extra_toml}
[[beds]]
id = "bed1"
streams = [{{ source_id = "rtsleep-test-nothing-{port}" }}]

[[beds]]
id = "bed2"
streams = [{{ source_id = "rtsleep-test-absent-{port}" }}]
""")
    return cfg_path, port


def serve_blocks(tmp_path: Path, model: Path, blocks: list[EpochBlock], extra_toml: str = "",
                 ) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """Run the daemon in-process on ``blocks`` of bed1 (injected into its backlog), ``N + 2``
    loop rounds, then SIGTERM; returns the epochs published by the rounds and every message a
    subscriber got (shutdown included)."""
    cfg_path, port = write_config(tmp_path, model, extra_toml)
    daemon = Daemon(load_config(cfg_path, env={}))
    ctx: zmq.Context[Any] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    got: list[tuple[str, dict[str, Any]]] = []
    try:
        daemon.start()
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
        deadline = time.monotonic() + 10
        while daemon.publisher is not None and not daemon.publisher.poll(0.05):
            assert time.monotonic() < deadline, "no subscription"
        daemon.backlog["bed1"] = deque((b, time.perf_counter()) for b in blocks)
        n = sum(daemon.step() for _ in range(N + 2))
        daemon.heartbeat()
        daemon.request_stop(signal.SIGTERM)
        assert daemon.stop_requested
        assert daemon.run() == 0  # finishes at once: the flag is set
        while sub.poll(500):
            topic, payload = sub.recv_multipart()
            got.append((topic.decode(), decode(payload)))
    finally:
        sub.close(0)
        ctx.term()
    return n, got


def test_loop_scores_publishes_alerts_persists_and_beats(shared_data: Path,
                                                         tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tmp_path / "m.safetensors"
    save_model(SleepNet(SleepNetConfig.default()).eval(), model, PreprocessSpec.default(),
               card={"training": {"trained_heads": ["stage", "apnea", "hypopnea"]}})
    blocks = excerpt3_blocks(shared_data)
    n, got = serve_blocks(tmp_path, model, blocks, """
[alerts]
apnea_prob = 0.01
ecg = true
""")
    assert n == N
    for _, msg in got:
        jsonschema.validate(msg, SCHEMA)
    stages = [m for t, m in got if t == "stage/bed1/"]
    assert [m["epoch"] for m in stages] == list(range(N))
    assert all(m["status"] == "scored" for m in stages)
    assert all(m["apnea_prob"] is not None for m in stages)  # the card says it was trained
    sources = {m["source"] for t, m in got if t == "alert/bed1/"}
    assert {"model", "aasm", "ecg"} <= sources  # every alert pathway ran
    status = [m for t, m in got if t == "status/"]
    assert status[-1]["state"] == "stopping"
    assert status[-1]["beds"]["bed1"]["last_epoch"] == N - 1
    assert status[-1]["beds"]["bed1"]["epochs_scored"] == N
    # a bed whose streams never appear stops nothing
    assert status[-1]["beds"]["bed2"] == {
        "last_epoch": None, "streams_connected": 0, "streams_open": 0, "streams_total": 1,
        "epochs_scored": 0,
        "epochs_unscorable": 0, "ahi": None, "severity": None}
    saved = load_state(tmp_path / "state", "bed1", stages[0]["model_id"], 3600)
    assert saved is not None and saved.next_epoch == N
    assert saved.anchor_lsl == pytest.approx(500.0)
    assert "alerts" in saved.extra


def test_journal_format_prefixes_syslog_priority() -> None:
    import logging

    from rtsleep.daemon.lifecycle import JournalFormatter

    fmt = JournalFormatter("%(message)s")
    rec = logging.LogRecord("rtsleep.x", logging.WARNING, __file__, 1, "bed %s\nlost", ("b1",),
                            None)
    assert fmt.format(rec) == "<4>rtsleep.x: bed b1 | lost"


def test_shutdown_publishes_the_epochs_waiting_in_an_output_delay(shared_data: Path,
                                                                  tmp_path: Path) -> None:
    from offline.spectral_train import spectral_model_config

    torch.manual_seed(0)
    model = tmp_path / "delayed.safetensors"
    save_model(SleepNet(spectral_model_config(lookahead_epochs=2)).eval(), model,
               PreprocessSpec.default())
    n, got = serve_blocks(tmp_path, model, excerpt3_blocks(shared_data))
    assert n == N - 2  # the loop released all but the last two epochs
    stages = [m for t, m in got if t == "stage/bed1/"]
    assert [m["epoch"] for m in stages] == list(range(N))  # shutdown flushed the last two
    assert all(m["status"] == "scored" for m in stages)
    for _, msg in got:
        jsonschema.validate(msg, SCHEMA)
    saved = load_state(tmp_path / "state", "bed1", stages[0]["model_id"], 3600)
    assert saved is not None and saved.next_epoch == N
    assert saved.extra["delay_line"]["pending"] == []


def test_new_recording_request_resets_the_bed_in_the_loop_and_at_startup(
    shared_data: Path, tmp_path: Path
) -> None:
    """``rtsleep new-recording``: the running loop releases what waits in the output delay, then
    the bed's model context and alert trackers start afresh; a request found at startup keeps
    the saved state from being restored."""
    from offline.spectral_train import spectral_model_config

    torch.manual_seed(0)
    model = tmp_path / "delayed.safetensors"
    save_model(SleepNet(spectral_model_config(lookahead_epochs=1)).eval(), model,
               PreprocessSpec.default())
    cfg_path, _ = write_config(tmp_path, model)
    state_dir = tmp_path / "state"
    blocks = excerpt3_blocks(shared_data)[:4]

    def started() -> Daemon:
        d = Daemon(load_config(cfg_path, env={}))
        d.start()
        return d

    d = started()
    try:
        assert d.scorer is not None
        d.backlog["bed1"] = deque((b, time.perf_counter()) for b in blocks)
        assert sum(d.step() for _ in range(4)) == 3  # epoch 3 waits in the delay line
        old_alerts = d.alerts["bed1"]
        assert d.check_new_recordings() == []  # nothing requested: nothing happens
        assert int(d.scorer.beds["bed1"].state["n_epochs"]) == 4
        request_new_recording(state_dir, "bed1")
        assert d.check_new_recordings() == ["bed1"]
        assert not new_recording_path(state_dir, "bed1").exists()  # taken once
        bed = d.scorer.beds["bed1"]
        assert int(bed.state["n_epochs"]) == 0 and not bed.pending and not bed.line
        assert d.alerts["bed1"] is not old_alerts
        assert d.scorer.next_epoch("bed1") == 4  # indices continue
        saved = load_state(state_dir, "bed1", d.model_id, 3600)
        assert saved is not None and int(saved.recurrent["n_epochs"]) == 0
        assert saved.next_epoch == 4 and saved.extra["delay_line"]["pending"] == []
        d.backlog["bed1"] = deque((b, time.perf_counter()) for b in excerpt3_blocks(
            shared_data)[4:6])
        d.step()
        assert int(d.scorer.beds["bed1"].state["n_epochs"]) == 1
    finally:
        d.shutdown()
    d = started()  # no request: the night continues from the saved state
    try:
        assert d.scorer is not None and d.scorer.next_epoch("bed1") == 5
    finally:
        d.close()
    request_new_recording(state_dir, "bed1")
    d = started()  # a request waiting at startup: the bed starts fresh
    try:
        assert d.scorer is not None and d.scorer.next_epoch("bed1") == 0
        assert int(d.scorer.beds["bed1"].state["n_epochs"]) == 0
        assert d.scorer.next_epoch("bed2") == 0
        assert not new_recording_path(state_dir, "bed1").exists()
    finally:
        d.close()

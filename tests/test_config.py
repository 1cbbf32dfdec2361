"""Daemon config: TOML -> dataclasses, validation errors name file and key, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtsleep.daemon.config import ConfigError, check_endpoint, load_config
from rtsleep.data.recording import Modality

GOOD = """
[daemon]
state_dir = "/tmp/rtsleep-state"
heartbeat_s = 2

[model]
device = "cpu"

[zmq]
endpoints = ["tcp://127.0.0.1:5599", "ipc:///tmp/rtsleep.sock"]

[[beds]]
id = "bed1"
streams = [{ type = "EEG", source_id = "amp1" }, { name = "amp1-ecg" }]
channels = { "C3-A2" = "eeg", "X1" = "EMG" }

[[beds]]
id = "bed-2"
streams = [{ name = "b2" }]
eeg_derivation = "bipolar"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rtsleep.toml"
    path.write_text(text)
    return path


def test_good_config_loads_into_dataclasses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    assert cfg.daemon.state_dir == Path("/tmp/rtsleep-state")
    assert cfg.daemon.heartbeat_s == 2.0 and isinstance(cfg.daemon.heartbeat_s, float)
    assert cfg.model.device == "cpu"
    assert cfg.model.path == ""
    assert cfg.zmq.endpoints == ["tcp://127.0.0.1:5599", "ipc:///tmp/rtsleep.sock"]
    assert [b.id for b in cfg.beds] == ["bed1", "bed-2"]
    assert cfg.beds[0].streams[0].type == "EEG" and cfg.beds[0].streams[0].source_id == "amp1"
    assert cfg.beds[0].streams[1].name == "amp1-ecg"
    assert cfg.beds[0].channels == {"C3-A2": Modality.EEG, "X1": Modality.EMG}
    # read from the EEG label unless the bed names its derivation
    assert [b.eeg_derivation for b in cfg.beds] == ["auto", "bipolar"]
    assert not cfg.zmq.curve_enabled
    assert cfg.model.threads == 1
    assert (cfg.alerts.aasm, cfg.alerts.hypopnea_rule, cfg.alerts.ecg) == (True, "1A", False)
    assert cfg.daemon.inlet_buffer_s == 3600  # time bound of each stream's queue
    assert cfg.daemon.inlet_buffer_mb == 2.5  # memory bound of each stream's queue


@pytest.mark.parametrize(
    ("patch", "key", "words"),
    [
        (("[model]\ndevice = \"cpu\"", "[model]\ndevice = \"cpu\"\ncolour = 1"), "model.colour",
         "unknown key"),
        (("heartbeat_s = 2", "heartbeat_s = \"2\""), "daemon.heartbeat_s", "expected a number"),
        (("device = \"cpu\"", "device = \"tpu\""), "model.device", "expected auto"),
        (("tcp://127.0.0.1:5599", "tcp://127.0.0.1:99999"), "zmq.endpoints[0]", "port"),
        (("tcp://127.0.0.1:5599", "http://x:80"), "zmq.endpoints[0]", "expected tcp://"),
        (("id = \"bed-2\"", "id = \"bed/2\""), "beds[1].id", "expected 1-64"),
        (("id = \"bed-2\"", "id = \"bed1\""), "beds[1].id", "duplicate"),
        (("\"X1\" = \"EMG\"", "\"X1\" = \"EMGX\""), "beds[0].channels.X1", "unknown modality"),
        (("{ name = \"b2\" }", "{ nme = \"b2\" }"), "beds[1].streams[0].nme", "unknown key"),
        (("[daemon]", "[demon]"), "demon", "unknown section"),
        (("eeg_derivation = \"bipolar\"", "eeg_derivation = \"mastoid\""),
         "beds[1].eeg_derivation", "expected one of ['auto', 'referential', 'bipolar']"),
        (("device = \"cpu\"", "device = \"cpu\"\nthreads = -1"), "model.threads",
         "must be in 0..1024"),
        (("device = \"cpu\"", "device = \"cpu\"\nthreads = 100000"), "model.threads",
         "must be in 0..1024"),
        (("[zmq]", "[zmq]\nsndhwm = 2147483648"), "zmq.sndhwm", "must be in 1..1000000"),
        (("heartbeat_s = 2", "heartbeat_s = inf"), "daemon.heartbeat_s", "<= 3600 s, got inf"),
        (("heartbeat_s = 2", "heartbeat_s = 2\npoll_s = inf"), "daemon.poll_s",
         "must be > 0 and <= 1 s, got inf"),
        (("heartbeat_s = 2", "heartbeat_s = 2\nepoch_timeout_s = nan"), "daemon.epoch_timeout_s",
         "got nan"),
        (("{ name = \"b2\" }", "{ name = \"b2\\u0001EMG\" }"), "beds[1].streams[0].name",
         "control characters"),
        (("[zmq]", "[alerts]\nhypopnea_rule = \"2C\"\n[zmq]"), "alerts.hypopnea_rule",
         "expected '1A' or '1B'"),
        (("[zmq]", "[alerts]\necg = 1\n[zmq]"), "alerts.ecg", "expected true or false"),
        (("heartbeat_s = 2", "inlet_buffer_s = 0"), "daemon.inlet_buffer_s", "must be in 1..86400"),
        (("heartbeat_s = 2", "inlet_buffer_s = 100000"), "daemon.inlet_buffer_s",
         "must be in 1..86400"),
        (("heartbeat_s = 2", "inlet_buffer_s = 1.5"), "daemon.inlet_buffer_s",
         "expected an integer"),
        (("heartbeat_s = 2", "inlet_buffer_mb = -1"), "daemon.inlet_buffer_mb",
         "must be in 0..10000 MB"),
        (("heartbeat_s = 2", "context_reset_s = -30"), "daemon.context_reset_s",
         "must be >= 0 s"),
    ],
)
def test_bad_values_raise_one_line_error_naming_file_and_key(
    tmp_path: Path, patch: tuple[str, str], key: str, words: str
) -> None:
    path = write(tmp_path, GOOD.replace(*patch, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert words in msg
    assert "\n" not in msg


def test_malformed_toml_is_reported_with_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon\nstate_dir = 1")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(path, env={})


def test_missing_file_and_missing_beds_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="beds: at least one"):
        load_config(write(tmp_path, "[model]\ndevice = \"cpu\"\n"), env={})


def test_curve_needs_both_key_and_allow_dir(tmp_path: Path) -> None:
    text = GOOD.replace("[zmq]", "[zmq]\ncurve_secret_key = \"/etc/k\"")
    with pytest.raises(ConfigError, match="zmq.curve_allow_dir"):
        load_config(write(tmp_path, text), env={})


def test_environment_overrides_section_keys(tmp_path: Path) -> None:
    env = {
        "RTSLEEP_MODEL_DEVICE": "auto",
        "RTSLEEP_DAEMON_STATE_DIR": "/tmp/other",
        "RTSLEEP_DAEMON_HEARTBEAT_S": "0.5",
        "RTSLEEP_ZMQ_ENDPOINTS": "tcp://127.0.0.1:7000, ipc:///tmp/x",
        "RTSLEEP_ALERTS_GATE_WAKE": "false",
        "RTSLEEP_DAEMON_INLET_BUFFER_S": "1800",
        "UNRELATED": "1",
    }
    cfg = load_config(write(tmp_path, GOOD), env=env)
    assert cfg.model.device == "auto"
    assert cfg.daemon.state_dir == Path("/tmp/other")
    assert cfg.daemon.heartbeat_s == 0.5
    assert cfg.zmq.endpoints == ["tcp://127.0.0.1:7000", "ipc:///tmp/x"]
    assert cfg.alerts.gate_wake is False
    assert cfg.daemon.inlet_buffer_s == 1800


def test_environment_override_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RTSLEEP_DAEMON_HEARTBEAT_S: daemon.heartbeat_s"):
        load_config(write(tmp_path, GOOD), env={"RTSLEEP_DAEMON_HEARTBEAT_S": "soon"})
    with pytest.raises(ConfigError, match="model.device"):
        load_config(write(tmp_path, GOOD), env={"RTSLEEP_MODEL_DEVICE": "gpu"})
    with pytest.raises(ConfigError, match="daemon.inlet_buffer_s: must be in 1..86400"):
        load_config(write(tmp_path, GOOD), env={"RTSLEEP_DAEMON_INLET_BUFFER_S": "0"})


def test_a_bad_environment_value_is_blamed_on_its_variable_not_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD), env={"RTSLEEP_DAEMON_HEARTBEAT_S": "-1"})
    assert str(err.value).startswith("RTSLEEP_DAEMON_HEARTBEAT_S: daemon.heartbeat_s: must be")


def test_a_mistyped_environment_override_is_an_error_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^RTSLEEP_DAEMON_HEARTBEATS: unknown setting; "
                                          r"\[daemon\] has \[.*'heartbeat_s'"):
        load_config(write(tmp_path, GOOD), env={"RTSLEEP_DAEMON_HEARTBEATS": "3"})
    # variables of other parts of rtsleep (no config section) are not the daemon's business
    assert load_config(write(tmp_path, GOOD), env={"RTSLEEP_DATA": "/d"}).beds


def test_check_endpoint_accepts_wildcard_and_rejects_garbage() -> None:
    assert check_endpoint("tcp://*:5556") is None
    assert check_endpoint("inproc://rtsleep") is None
    assert check_endpoint("tcp://127.0.0.1") is not None
    assert check_endpoint("tcp://127.0.0.1:0") is not None


def test_new_recording_command_checks_the_bed_and_writes_the_request(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rtsleep.cli import app

    state = tmp_path / "state"
    state.mkdir()
    cfg = write(tmp_path, GOOD.replace("/tmp/rtsleep-state", str(state)))
    runner = CliRunner()
    res = runner.invoke(app, ["new-recording", "--config", str(cfg), "bed-3"])
    assert res.exit_code == 1
    assert "no bed 'bed-3' (beds: bed1, bed-2)" in res.output and not list(state.iterdir())
    res = runner.invoke(app, ["new-recording", "--config", str(cfg), "bed1", "bed-2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in state.iterdir()) == ["bed-2.new-recording",
                                                        "bed1.new-recording"]
    cfg = write(tmp_path, GOOD.replace("/tmp/rtsleep-state", str(tmp_path / "no" / "dir")))
    res = runner.invoke(app, ["new-recording", "--config", str(cfg), "bed1"])
    assert res.exit_code == 1 and "cannot write the request for bed bed1" in res.output


def test_check_names_the_running_daemon_even_when_it_finds_problems(tmp_path: Path) -> None:
    """With ``serve`` up, a stream that is not found must still come with the note that this
    state directory's daemon is running (its endpoints were not test-bound): an operator reading
    "not found" needs to know the daemon is there."""
    import fcntl
    import os

    from typer.testing import CliRunner

    from rtsleep.cli import app
    from rtsleep.daemon.lifecycle import LOCK_FILE

    state = tmp_path / "state"
    state.mkdir()
    cfg = write(tmp_path, GOOD.replace("/tmp/rtsleep-state", str(state)))
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running serve holds it
        os.write(fd, b"4242\n")
        res = CliRunner().invoke(app, ["check", "--config", str(cfg), "--stream-timeout", "0.1"])
    finally:
        os.close(fd)
    assert res.exit_code == 1, res.output
    assert "LSL stream" in res.output and "not found" in res.output
    assert "rtsleep serve is running with this state directory (pid 4242)" in res.output

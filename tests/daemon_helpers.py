"""Helpers for the daemon tests that run real processes on loopback (``rtsleep serve``,
``rtsleep replay``, SUB sockets): a private LSL port block, the daemon config, the daemon
subprocess and a SUB socket collector. Fixtures stay in the test modules, which wrap these.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
import zmq

from rtsleep.daemon.epocher import BedEpocher, EpochBlock
from rtsleep.daemon.inlet import StreamLayout
from rtsleep.daemon.lslconfig import write_loopback_config
from rtsleep.daemon.messages import decode
from rtsleep.daemon.quality import QualityConfig
from rtsleep.daemon.replay import load_channels, plan_outlets, stream_info
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.recording import Channel
from rtsleep.models import SleepNet, SleepNetConfig, save_model

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "rtsleep" / "schemas" / "messages.schema.json").read_text())
#: One validator, the schema checked once (``jsonschema.validate`` re-checks it per call: ~50 ms
#: on a busy machine, slower than the daemon publishes heartbeats in some tests).
_cls = jsonschema.validators.validator_for(SCHEMA)
_cls.check_schema(SCHEMA)
VALIDATOR = _cls(SCHEMA)
MODALITIES = ("EEG", "EOG", "EMG", "ECG", "RESP", "SPO2")
N_EPOCHS = 60

def excerpt3(shared_data: Path) -> Path:
    """DREAMS excerpt3.edf (30 min, 60 epochs); a failure when the shared data lacks it."""
    path = shared_data / "dreams-spindles" / "excerpt3.edf"
    if not path.is_file():
        pytest.fail(f"{path} missing from the shared data")
    return path


def excerpt3_blocks(shared_data: Path, drop_type: str | None = None,
                    drop_epoch: int | None = None, anchor: float = 0.0) -> list[EpochBlock]:
    """The 60 raw ``EpochBlock``s of excerpt3 as the daemon's epocher cuts them, without LSL.

    Every replay outlet's samples are stamped ``anchor + i / fs``; with ``drop_epoch`` the streams
    of LSL type ``drop_type`` (e.g. "ECG", "RESP") lose that epoch's samples (a gap).
    """
    path = excerpt3(shared_data)
    plans = plan_outlets(path.name, load_channels(path))
    layouts = [StreamLayout.from_info(stream_info(p), p.source_id) for p in plans]
    ep = BedEpocher("b", [lay.key for lay in layouts])
    for p, lay in zip(plans, layouts, strict=True):
        ep.attach(lay.key, lay)
        idx = np.arange(p.n_samples)
        if drop_epoch is not None and p.type == drop_type:
            per = int(30 * p.sfreq)
            idx = idx[(idx < drop_epoch * per) | (idx >= (drop_epoch + 1) * per)]
        ep.push(lay.key, p.data[idx], anchor + idx / p.sfreq)
    return ep.pop_ready()


def channel_blocks(bed: str, channels: list[Channel], anchor: float = 1000.0,
                   quality: QualityConfig | None = None) -> list[EpochBlock]:
    """The raw ``EpochBlock``s of ``channels`` (whole epochs) as the daemon's epocher cuts them
    for ``bed``, without LSL: each replay outlet's samples stamped ``anchor + i / fs``;
    ``quality`` as the epocher's (default: the daemon's)."""
    plans = plan_outlets("synthetic", channels)
    layouts = [StreamLayout.from_info(stream_info(p), p.source_id) for p in plans]
    ep = BedEpocher(bed, [lay.key for lay in layouts], quality=quality)
    for p, lay in zip(plans, layouts, strict=True):
        ep.attach(lay.key, lay)
        ep.push(lay.key, p.data, anchor + np.arange(p.n_samples) / p.sfreq)
    return ep.pop_ready()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def confined_lsl(tmp_path_factory: pytest.TempPathFactory, tag: str) -> Iterator[None]:
    """The conftest LSL confinement, on a port block and session of our own (a generator for a
    module-scoped fixture).

    Other LSL users of this machine (a 256-outlet benchmark, parallel test runs) can fill the
    default port block (multicast 16571, outlets 16572-16603), and then streams of these tests
    resolve slowly or not at all. Children (serve, replay, players) inherit ``LSLAPICFG``.
    """
    base = 20000 + (os.getpid() % 500) * 40
    cfg = write_loopback_config(tmp_path_factory.mktemp("lsl") / "lsl.cfg",
                                f"rtsleep-{tag}-{os.getpid()}", base_port=base)
    old = os.environ.get("LSLAPICFG")
    os.environ["LSLAPICFG"] = str(cfg)
    yield
    if old is None:
        os.environ.pop("LSLAPICFG", None)
    else:
        os.environ["LSLAPICFG"] = old


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # 2 shared cores; also the same threading in serve and score
    env.pop("NOTIFY_SOCKET", None)
    return env


def rtsleep(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtsleep.cli", *args]


def tiny_model(path: Path) -> Path:
    """A randomly initialised default ``SleepNet`` (seed 0) saved at ``path``."""
    torch.manual_seed(0)
    save_model(SleepNet(SleepNetConfig.default()).eval(), path, PreprocessSpec.default())
    return path


def write_config(tmp: Path, model: Path, file_name: str, port: int,
                 zmq_extra: dict[str, Any] | None = None, extra_endpoints: tuple[str, ...] = (),
                 **daemon: Any) -> Path:
    """One bed reading the replay outlets of ``file_name``, publishing on loopback ``port`` (and
    ``extra_endpoints``); ``daemon`` / ``zmq_extra`` set keys of ``[daemon]`` / ``[zmq]``. The
    inlet queues keep the daemon's defaults, which must hold a max-speed replay of excerpt3."""
    streams = ", ".join(
        f'{{ source_id = "rtsleep-replay:{file_name}:{m}" }}' for m in MODALITIES
    )
    keys: dict[str, Any] = {"state_dir": str(tmp / "state"), "heartbeat_s": 0.5,
                            "epoch_timeout_s": 3.0, "poll_s": 0.01}
    keys.update(daemon)
    daemon_keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    zmq_keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (zmq_extra or {}).items())
    text = f"""
[daemon]
{daemon_keys}
[model]
path = "{model}"
device = "cpu"

[zmq]
endpoints = {json.dumps([f"tcp://127.0.0.1:{port}", *extra_endpoints])}
{zmq_keys}
[[beds]]
id = "bed1"
streams = [{streams}]
"""
    path = tmp / "rtsleep.toml"
    path.write_text(text)
    return path


def interrupt_until_exit(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """SIGINT ``proc`` every 10 ms until it is gone (an impatient operator's Ctrl-C), so that
    some signals land while it shuts down and tears down."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            os.kill(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.01)


class Daemon:
    """``rtsleep serve`` in a subprocess (stderr to a file for the assertions)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(rtsleep("serve", "--config", str(config)),
                                     env=child_env(), stdout=self._fh, stderr=self._fh)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._fh.close()
        return code

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        """Until the log says the daemon serves (signal handlers installed, state locked)."""
        deadline = time.monotonic() + timeout_s
        while "serving " not in self.text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.1)


class Sub:
    """A SUB socket collecting stage and status messages, dropping LVC repeats by (run, seq)."""

    def __init__(self, ctx: zmq.Context[Any], port: int) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        for topic in ("stage/bed1/", "status/"):
            self.sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.seen: set[tuple[str, int]] = set()
        self.stages: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []

    def pump(self, until: Callable[[], bool], timeout_s: float,
             alive: Daemon | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > deadline:
                tail = alive.text()[-3000:] if alive is not None else ""
                raise TimeoutError(f"gave up after {timeout_s} s; {len(self.stages)} stages, "
                                   f"last {self.stages[-1]['epoch'] if self.stages else None}"
                                   f"\n{tail}")
            if alive is not None and alive.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {alive.proc.returncode}:\n{alive.text()}")
            if self.sock.poll(100):
                topic, payload = self.sock.recv_multipart()
                msg = decode(payload)
                VALIDATOR.validate(msg)
                key = (msg["run"], msg["seq"])
                if key in self.seen:
                    continue
                self.seen.add(key)
                (self.stages if topic.startswith(b"stage/") else self.status).append(msg)

"""A slow subscriber does not delay the others, at the daemon level (issue 6): ``rtsleep serve``
as a subprocess with a tiny send high-water mark, one SUB that never reads (tiny receive queue and
kernel buffer), one normal SUB that must still get every epoch of a ``--speed max`` replay of
DREAMS excerpt3, once and in order, while the stalled one loses messages instead of holding the
daemon back. Real processes on loopback; the publisher-level test is in ``test_publisher.py``.
"""

from __future__ import annotations

import os
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
    rtsleep,
    tiny_model,
    write_config,
)

from rtsleep.daemon.messages import decode


@pytest.fixture(scope="module", autouse=True)
def lsl_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """LSL on a port block and session of this module (see ``daemon_helpers.confined_lsl``)."""
    yield from confined_lsl(tmp_path_factory, "slowsub")


def test_stalled_subscriber_drops_while_a_normal_one_gets_every_epoch_in_order(
    shared_data: Path, tmp_path: Path
) -> None:
    edf = excerpt3(shared_data)
    model = tiny_model(tmp_path / "tiny.safetensors")
    port = free_port()
    # sndhwm 2: the daemon queues at most 2 messages for a subscriber that does not keep up
    ipc = f"ipc:///tmp/rtsleep-slowsub-{os.getpid()}-{port}.sock"
    cfg = write_config(tmp_path, model, edf.name, port, zmq_extra={"sndhwm": 2},
                       extra_endpoints=(ipc,), heartbeat_s=0.01)
    ctx: zmq.Context[Any] = zmq.Context()
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 1024)  # the kernel's minimum: its window closes at once
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(ipc)
    sub = Sub(ctx, port)
    daemon = Daemon(cfg, tmp_path / "serve.log")
    replay: subprocess.Popen[bytes] | None = None
    try:
        sub.pump(lambda: sub.status, 60, daemon)  # serving, both subscribers connected
        replay = subprocess.Popen(rtsleep("replay", str(edf), "--speed", "max",
                                          "--wait-consumers", "60"),
                                  env=child_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        sub.pump(lambda: len(sub.stages) >= N_EPOCHS, 90, daemon)
        # only now read the stalled subscriber, until it is back in the present (a message
        # newer than the last stage): what it lacks before that was dropped, not waited for
        last_seq = sub.stages[-1]["seq"]
        stalled.setsockopt(zmq.RCVTIMEO, 10_000)
        stalled_before = 0  # messages of any topic it got up to last_seq
        stalled_stages = 0  # stage messages among them
        while True:
            topic, payload = stalled.recv_multipart()
            msg = decode(payload)
            if msg["run"] != sub.stages[-1]["run"] or msg["seq"] > last_seq:
                break
            stalled_before += 1
            stalled_stages += topic.startswith(b"stage/")
        code = daemon.stop(signal.SIGTERM)
    finally:
        if replay is not None:
            replay.kill()
            replay.wait(10)
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)
        ctx.destroy(linger=0)
        Path(ipc.removeprefix("ipc://")).unlink(missing_ok=True)
    assert code == 0, daemon.text()[-3000:]
    assert [m["epoch"] for m in sub.stages] == list(range(N_EPOCHS))
    assert all(m["status"] == "scored" for m in sub.stages)
    # the stalled subscriber was connected during the run (it holds early messages), and it
    # overflowed: epochs were dropped for it, and only for it
    assert stalled_before >= 1
    assert stalled_stages < N_EPOCHS

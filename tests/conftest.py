"""Shared test fixtures.

LSL is confined to this machine before any other pylsl call (see ../shared/notes/stack.md): no
discovery traffic leaves loopback, and the session id isolates concurrent test runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rtsleep.daemon.lslconfig import write_loopback_config  # noqa: E402 - imports no pylsl

# Many outlets at once (players, benchmarks) exhaust liblsl's default 32 discovery ports.
_cfg_path = write_loopback_config(
    Path(os.environ.get("TMPDIR", "/tmp")) / f"rtsleep-lsl-{os.getpid()}.cfg",
    f"rtsleep-test-{os.getpid()}", port_range=1024,
)
# Child processes (players, daemons) inherit the same confinement through LSLAPICFG.
os.environ["LSLAPICFG"] = str(_cfg_path)

from rtsleep.settings import data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; missing is a failure, not a skip (the tests are about real
    recordings, and CI has them)."""
    path = data_dir()
    if not path.is_dir():
        pytest.fail(f"shared data folder not found: {path} (set RTSLEEP_DATA)")
    return path

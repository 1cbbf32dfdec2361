"""Shared test fixtures.

LSL is confined to this machine before any other pylsl call (see ../shared/notes/stack.md): no
discovery traffic leaves loopback, and the session id isolates concurrent test runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LSL_TEST_CONFIG = """\
[ports]
IPv6 = disable
; Many outlets at once (players, benchmarks) exhaust liblsl's default 32 discovery ports.
PortRange = 1024
[multicast]
ResolveScope = machine
[lab]
KnownPeers = {127.0.0.1}
SessionID = rtsleep-test-PID
[log]
level = -2
""".replace("PID", str(os.getpid()))

_cfg_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rtsleep-lsl-{os.getpid()}.cfg"
_cfg_path.write_text(LSL_TEST_CONFIG)
# Child processes (players, daemons) inherit the same confinement through LSLAPICFG.
os.environ["LSLAPICFG"] = str(_cfg_path)

from rtsleep.settings import data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder. Missing under CI is a failure; elsewhere the test is skipped."""
    path = data_dir()
    if not path.is_dir():
        msg = f"shared data folder not found: {path} (set RTSLEEP_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path

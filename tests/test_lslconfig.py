"""The loopback-only liblsl configuration: liblsl accepts every line of it (a rejected line makes
liblsl fall back to its defaults silently, which would let discovery leave the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtsleep.daemon.lslconfig import loopback_config, write_loopback_config

_PROBE = (
    "import pylsl; pylsl.StreamOutlet(pylsl.StreamInfo('probe', 'EEG', 1, 100.0, "
    "pylsl.cf_float32, 'probe'))"
)


def test_config_confines_discovery_to_loopback_with_the_given_ports() -> None:
    text = loopback_config("s1", port_range=64, base_port=30000)
    lines = set(text.splitlines())
    for line in ("IPv6 = disable", "PortRange = 64", "MulticastPort = 30000", "BasePort = 30001",
                 "ResolveScope = machine", "KnownPeers = {127.0.0.1}", "SessionID = s1"):
        assert line in lines, line
    assert "#" not in text  # liblsl rejects '#' comments and then drops the whole file
    assert "BasePort" not in loopback_config("s1")  # liblsl's default block unless asked


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"session_id": ""}, "session id"),
    ({"session_id": "two words"}, "session id"),
    ({"session_id": "s", "port_range": 0}, "port range"),
    ({"session_id": "s", "base_port": 80}, "base port"),
])
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        loopback_config(**kwargs)  # type: ignore[arg-type]


def test_liblsl_parses_every_line_of_the_written_file(tmp_path: Path) -> None:
    cfg = write_loopback_config(tmp_path / "lsl.cfg", f"probe-{os.getpid()}", port_range=64,
                                base_port=31000)
    # log level 0 so that a rejected line would be reported on stderr
    cfg.write_text(cfg.read_text().replace("level = -2", "level = 0"))
    env = dict(os.environ, LSLAPICFG=str(cfg))
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "rolling back" not in out.stderr.lower(), out.stderr
    assert "key-value" not in out.stderr.lower(), out.stderr

"""The systemd unit, its GPU drop-in and the example config pass systemd's own checks.

``systemd-analyze verify`` only warns (exit 0) on unknown keys, bad values and inline comments, so
the tests also require an empty stderr. ExecStart must name an existing file, so the checks run on
a temporary copy whose ExecStart points at this Python interpreter. Without ``systemd-analyze`` the
tests skip, except under ``CI=true`` (it is installed there), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rtsleep.daemon.config import load_config

SYSTEMD_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD_DIR / "rtsleep.service"
GPU_DROPIN = SYSTEMD_DIR / "gpu.conf"
EXAMPLE_CONFIG = SYSTEMD_DIR / "rtsleep.toml.example"
INSTALLED_EXEC = "/usr/bin/rtsleep serve --config /etc/rtsleep/rtsleep.toml"
MAX_EXPOSURE = 2.0


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        msg = "systemd-analyze not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _unit_copy(tmp_path: Path, gpu: bool) -> Path:
    """rtsleep.service (and optionally its drop-in) in tmp_path with an existing ExecStart."""
    text = UNIT.read_text()
    exec_lines = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    if exec_lines != [f"ExecStart={INSTALLED_EXEC}"]:
        raise AssertionError(f"unexpected ExecStart lines: {exec_lines}")
    unit = tmp_path / "rtsleep.service"
    unit.write_text(text.replace(f"ExecStart={INSTALLED_EXEC}",
                                 f"ExecStart={sys.executable} -c pass"))
    if gpu:
        dropin = tmp_path / "rtsleep.service.d"
        dropin.mkdir()
        shutil.copy(GPU_DROPIN, dropin / "gpu.conf")
    return unit


def _exposure(stdout: str) -> float:
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", stdout)
    if m is None:
        raise AssertionError(f"no exposure level in output:\n{stdout[-2000:]}")
    return float(m.group(1))


def test_unit_runs_the_documented_command() -> None:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC}\n" in text
    for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes",
                 "StateDirectory=rtsleep", "ConfigurationDirectory=rtsleep",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
                 "MemoryDenyWriteExecute=no"):
        assert f"\n{line}\n" in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)


def test_unit_keeps_proc_cpuinfo_visible_for_torch() -> None:
    """ProcSubset=pid hides /proc/cpuinfo, and torch then drops to its slow DEFAULT kernels."""
    for path in (UNIT, GPU_DROPIN):
        settings = [ln.split("=", 1)[1].strip() for ln in path.read_text().splitlines()
                    if ln.startswith("ProcSubset=")]
        assert all(v == "all" for v in settings), (path.name, settings)


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu-dropin"])
def test_unit_verifies_without_warnings(tmp_path: Path, gpu: bool) -> None:
    exe = _systemd_analyze()
    unit = _unit_copy(tmp_path, gpu)
    res = _run([exe, "verify", str(unit)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def test_verify_reports_an_unknown_key_on_stderr(tmp_path: Path) -> None:
    """The empty-stderr check above is meaningful: a bad key in the drop-in shows up there."""
    exe = _systemd_analyze()
    unit = _unit_copy(tmp_path, gpu=True)
    dropin = tmp_path / "rtsleep.service.d" / "gpu.conf"
    dropin.write_text(dropin.read_text() + "NoSuchSetting=yes\n")
    res = _run([exe, "verify", str(unit)], tmp_path)
    assert "NoSuchSetting" in res.stderr


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu-dropin"])
def test_unit_exposure_is_at_most_two(tmp_path: Path, gpu: bool) -> None:
    exe = _systemd_analyze()
    unit = _unit_copy(tmp_path, gpu)
    threshold = int(round(MAX_EXPOSURE * 10))
    res = _run([exe, "security", "--offline=yes", f"--threshold={threshold}", str(unit)],
               tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert _exposure(res.stdout) <= MAX_EXPOSURE


def test_gpu_dropin_opens_the_nvidia_devices(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    unit = _unit_copy(tmp_path, gpu=True)
    res = _run([exe, "security", "--offline=yes", str(unit)], tmp_path)
    assert re.search(r"✗ PrivateDevices=", res.stdout), res.stdout[-2000:]
    device_line = next(ln for ln in res.stdout.splitlines() if "DeviceAllow=" in ln)
    assert "nvidiactl:rw" in device_line and "char-nvidia-uvm:rw" in device_line


def test_example_config_loads_with_the_daemon_loader() -> None:
    cfg = load_config(EXAMPLE_CONFIG, env={})
    assert cfg.daemon.state_dir == Path("/var/lib/rtsleep")
    assert cfg.daemon.log_format == "journal"
    assert [b.id for b in cfg.beds] == ["bed1", "bed2"]
    assert cfg.zmq.curve_enabled is False
    assert cfg.model.threads == 1
    assert cfg.daemon.inlet_buffer_s == 3600
    assert cfg.daemon.inlet_buffer_mb == 2.5


def test_example_config_shows_every_key_of_every_section_with_its_default() -> None:
    import dataclasses
    import tomllib

    from rtsleep.daemon.config import Config

    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    defaults = Config()
    # the example's comments say where it differs on purpose: journald, listening on all hosts
    not_default = {("daemon", "log_format"), ("zmq", "endpoints")}
    for f in dataclasses.fields(Config):
        section = getattr(defaults, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        shown = data.get(f.name, {})
        assert set(shown) == {k.name for k in dataclasses.fields(section)}, f.name
        for key, value in shown.items():
            default = getattr(section, key)
            if (f.name, key) not in not_default:
                assert value == (str(default) if isinstance(default, Path) else default), key

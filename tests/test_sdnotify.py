"""sd_notify: datagrams reach a fake $NOTIFY_SOCKET; absent socket is a no-op."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtsleep.daemon import sdnotify


@pytest.fixture
def fake_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_sends_ready_watchdog_stopping_in_order(fake_socket: socket.socket) -> None:
    for state in ("READY=1\nSTATUS=scoring 2 beds", "WATCHDOG=1", "STOPPING=1"):
        assert sdnotify.notify(state) is True
    got = [fake_socket.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=scoring 2 beds", "WATCHDOG=1", "STOPPING=1"]


def test_notify_supports_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rtsleep-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert sdnotify.notify("READY=1")
        assert sock.recv(64) == b"READY=1"
    finally:
        sock.close()


def test_notify_without_socket_is_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_notify_to_missing_socket_returns_false(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert sdnotify.notify("WATCHDOG=1") is False


def test_watchdog_interval_is_half_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval_s() is None

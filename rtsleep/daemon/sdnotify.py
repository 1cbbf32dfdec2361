"""systemd ``sd_notify`` over ``$NOTIFY_SOCKET`` in plain stdlib (``systemd-python`` has no wheels).

``notify("READY=1")``, ``notify("WATCHDOG=1")``, ``notify("STOPPING=1")``; a no-op returning
``False`` when the daemon is not run by systemd with ``Type=notify``.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send one ``KEY=VALUE[\\nKEY=VALUE...]`` datagram; ``True`` when it was sent."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr[0] == "@":  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period from ``$WATCHDOG_USEC`` in s (ping that often), or ``None``."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6

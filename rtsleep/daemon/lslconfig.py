"""liblsl configuration that confines Lab Streaming Layer to this machine.

By default liblsl's discovery broadcasts and multicasts out of every interface. Tests, tools and
the demo run outlets and inlets on one host, so they point ``LSLAPICFG`` at a file made here:
discovery by unicast to 127.0.0.1 only, machine-scoped multicast, IPv6 off, and a session id that
isolates concurrent runs (see ``../shared/notes/stack.md``). Importing this module imports no
pylsl, so it can be used before the first pylsl call, as liblsl requires.

liblsl's INI parser rejects ``#`` comments (it then silently falls back to its defaults), so
nothing here writes comments.
"""

from __future__ import annotations

from pathlib import Path

#: liblsl's default number of ports in a block (one per outlet, found by unicast probing).
DEFAULT_PORT_RANGE = 32


def loopback_config(
    session_id: str, *, port_range: int = DEFAULT_PORT_RANGE, base_port: int | None = None
) -> str:
    """The INI text of a loopback-only liblsl configuration.

    ``session_id``: liblsl ``SessionID`` (streams of other sessions are invisible).
    ``port_range``: ports in the block; more outlets than that on one host are not all found.
    ``base_port``: a private port block (``MulticastPort = base_port``, outlets from
    ``base_port + 1``), so that other LSL programs on the machine, or a full default block,
    cannot interfere; ``None`` keeps liblsl's default block (16571/16572).
    """
    if not session_id or any(c.isspace() for c in session_id):
        raise ValueError(f"LSL session id must be a non-empty word, got {session_id!r}")
    if port_range < 1:
        raise ValueError(f"LSL port range must be >= 1, got {port_range}")
    ports = f"[ports]\nIPv6 = disable\nPortRange = {port_range}\n"
    if base_port is not None:
        if not 1024 <= base_port <= 65535 - port_range - 1:
            raise ValueError(f"LSL base port out of range: {base_port}")
        ports += f"MulticastPort = {base_port}\nBasePort = {base_port + 1}\n"
    return (
        ports
        + "[multicast]\nResolveScope = machine\n"
        + f"[lab]\nKnownPeers = {{127.0.0.1}}\nSessionID = {session_id}\n"
        + "[log]\nlevel = -2\n"
    )


def write_loopback_config(
    path: Path,
    session_id: str,
    *,
    port_range: int = DEFAULT_PORT_RANGE,
    base_port: int | None = None,
) -> Path:
    """Write :func:`loopback_config` to ``path`` (for ``LSLAPICFG``) and return ``path``."""
    path.write_text(loopback_config(session_id, port_range=port_range, base_port=base_port))
    return path

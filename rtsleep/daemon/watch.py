"""``rtsleep watch``: a terminal live view of the daemon's ZeroMQ output, one panel per bed.

Public API:

- ``WatchState``: what the view knows, fed one message at a time with
  ``update(topic, message, now)``; repeats are dropped by ``(run, seq)`` (the publisher's
  last-value cache resends the last message of every topic to each new subscription).
- ``render(state, now, width=..., ascii_only=False) -> str``: the pure rendering (state -> text),
  used by the live view and by the tests without a terminal. Per bed: the current stage with its
  probabilities, a scrolling hypnogram (rows W, R, N1, N2, N3; ``?`` marks unscorable epochs,
  blank missing ones), the latest alerts, and the AHI, severity and stream counts from the
  ``status/`` heartbeat. A ``STALLED`` marker shows when no heartbeat arrived for ``stall_s``.
- ``WatchOptions`` + ``run_watch(options, out) -> WatchState``: subscribe and display until
  ``max_messages`` messages or ``duration_s`` seconds (either may be ``None``: forever), or
  Ctrl-C. On a terminal the screen is redrawn at most every ``refresh_s``; otherwise (a pipe, or
  ``live=False``) one frame is printed at the end, so a demo can embed it.
- ``register(app)``: ``rtsleep watch [--endpoint ...] [--bed ...] [--count N] [--duration S]``.

Reconnection is ZeroMQ's: a SUB socket reconnects by itself (``RECONNECT_IVL`` .. ``_MAX``), and
its subscriptions are replayed on every new connection, so a restarted daemon is picked up with
no action here; the socket monitor feeds the ``connected``/``disconnected`` line. Times are
``time.monotonic()`` seconds.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from rtsleep.daemon.config import check_endpoint
from rtsleep.daemon.messages import STATUS_TOPIC, alert_topic, decode, stage_topic
from rtsleep.data.recording import STAGE_NAMES

log = logging.getLogger(__name__)

#: Hypnogram rows, top to bottom (the clinical layout: REM just below wake).
HYPNO_ROWS: tuple[str, ...] = ("W", "R", "N1", "N2", "N3")
#: Marker of an unscorable epoch in the hypnogram.
UNSCORABLE = "?"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


@dataclass
class BedView:
    """What the view shows for one bed."""

    bed: str
    #: The latest stage message (``None`` before the first).
    last: dict[str, Any] | None = None
    #: Epoch index -> stage name, or ``UNSCORABLE``; the most recent ``history`` epochs.
    hypnogram: dict[int, str] = field(default_factory=dict)
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=4))
    #: This bed's entry of the latest heartbeat (``None`` before the first).
    status: dict[str, Any] | None = None
    n_stage: int = 0
    n_alert: int = 0


class WatchState:
    """Everything the view knows; fed by :meth:`update` (pure bookkeeping, no I/O).

    ``beds``: only these beds are kept (empty: every bed seen). ``history``: hypnogram length in
    epochs. ``stall_s``: heartbeat silence after which the daemon is shown as stalled.
    ``started``: when watching began (``time.monotonic()``; default now), the reference for
    "stalled" before the first heartbeat.
    """

    def __init__(self, beds: Sequence[str] = (), history: int = 120, stall_s: float = 15.0,
                 started: float | None = None, seen_max: int = 4096) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1 epoch, got {history}")
        if not stall_s > 0:
            raise ValueError(f"stall_s must be > 0, got {stall_s}")
        self.only = tuple(beds)
        self.history = history
        self.stall_s = stall_s
        self.started = time.monotonic() if started is None else started
        self.beds: dict[str, BedView] = {b: BedView(b) for b in self.only}
        self.daemon: dict[str, Any] | None = None
        self.last_heartbeat: float | None = None
        self.connected = False
        self.endpoint = ""
        self.n_messages = 0
        self.n_repeats = 0
        self.n_bad = 0
        self._seen: set[tuple[str, int]] = set()
        self._seen_order: deque[tuple[str, int]] = deque()
        self._seen_max = seen_max

    def _bed(self, bed: str) -> BedView | None:
        if self.only and bed not in self.only:
            return None
        view = self.beds.get(bed)
        if view is None:
            view = self.beds[bed] = BedView(bed)
        return view

    def _is_repeat(self, msg: Mapping[str, Any]) -> bool:
        run, seq = msg.get("run"), msg.get("seq")
        if not isinstance(run, str) or not isinstance(seq, int):
            return False
        key = (run, seq)
        if key in self._seen:
            return True
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > self._seen_max:
            self._seen.discard(self._seen_order.popleft())
        return False

    def update(self, topic: str, msg: Mapping[str, Any], now: float) -> bool:
        """Apply one message received at ``now``; returns False for a repeat or a foreign one."""
        if self._is_repeat(msg):
            self.n_repeats += 1
            return False
        schema = str(msg.get("schema", ""))
        if topic == STATUS_TOPIC and schema.startswith("rtsleep.status/"):
            self._status(msg, now)
        elif topic.startswith("stage/") and schema.startswith("rtsleep.stage/"):
            if not self._stage(msg):
                return False
        elif topic.startswith("alert/") and schema.startswith("rtsleep.alert/"):
            view = self._bed(str(msg.get("bed", "")))
            if view is None:
                return False
            view.alerts.append(dict(msg))
            view.n_alert += 1
        else:
            self.n_bad += 1
            return False
        self.n_messages += 1
        return True

    def _status(self, msg: Mapping[str, Any], now: float) -> None:
        self.daemon = dict(msg)
        self.last_heartbeat = now
        beds = msg.get("beds")
        if isinstance(beds, Mapping):
            for bed, info in beds.items():
                view = self._bed(str(bed))
                if view is not None and isinstance(info, Mapping):
                    view.status = dict(info)

    def _stage(self, msg: Mapping[str, Any]) -> bool:
        view = self._bed(str(msg.get("bed", "")))
        epoch = msg.get("epoch")
        if view is None or not isinstance(epoch, int):
            return False
        view.last = dict(msg)
        view.n_stage += 1
        stage = msg.get("stage")
        view.hypnogram[epoch] = stage if isinstance(stage, str) else UNSCORABLE
        oldest = epoch - self.history + 1
        for k in [k for k in view.hypnogram if k < oldest or k > epoch]:
            del view.hypnogram[k]  # scrolled out, or left over from before a restart at 0
        return True

    def stalled(self, now: float) -> bool:
        """No heartbeat for ``stall_s`` (counting from ``started`` before the first one)."""
        ref = self.last_heartbeat if self.last_heartbeat is not None else self.started
        return now - ref > self.stall_s


# ---------------------------------------------------------------------------------- rendering
def _fmt_prob(p: Any) -> str:
    return f"{p:4.2f}" if isinstance(p, int | float) else " -- "


def _bar(p: Any, width: int, full: str) -> str:
    if not isinstance(p, int | float):
        return ""
    n = int(round(max(0.0, min(1.0, float(p))) * width))
    return full * n


def _hypnogram_lines(view: BedView, history: int, width: int, block: str) -> list[str]:
    label_w = 3
    cols = max(1, min(history, width - label_w - 1))
    if view.last is None or not view.hypnogram:
        return [f"{row:<{label_w}}|" for row in HYPNO_ROWS]
    end = int(view.last["epoch"])
    start = max(0, end - cols + 1)
    grid = {row: [" "] * cols for row in HYPNO_ROWS}
    unscorable = [" "] * cols
    for k, stage in view.hypnogram.items():
        i = k - start
        if not 0 <= i < cols:
            continue
        if stage in grid:
            grid[stage][i] = block
        else:
            unscorable[i] = UNSCORABLE
    lines = [f"{row:<{label_w}}|" + "".join(grid[row]).rstrip() for row in HYPNO_ROWS]
    if UNSCORABLE in unscorable:
        lines.append(f"{UNSCORABLE:<{label_w}}|" + "".join(unscorable).rstrip())
    lines.append(f"{'':<{label_w}}+ epochs {start}..{end}")
    return lines


def _short_utc(iso: Any) -> str:
    """``"2026-11-21T03:27:00.000000Z"`` -> ``"2026-11-21 03:27:00Z"``; else ``"--"``."""
    if not isinstance(iso, str) or len(iso) < 19:
        return "--"
    return iso[:10] + " " + iso[11:19] + "Z"


def _alert_line(a: Mapping[str, Any]) -> str:
    prob = a.get("probability")
    p = f" p={prob:.2f}" if isinstance(prob, int | float) else ""
    dur = a.get("duration_s")
    d = f" {dur:.0f} s" if isinstance(dur, int | float) else ""
    return f"  ! epoch {a.get('epoch')}: {a.get('event')} {a.get('state')}{d}{p} " \
           f"({a.get('source')})"


def _bed_lines(view: BedView, state: WatchState, width: int, ascii_only: bool) -> list[str]:
    block = "#" if ascii_only else "\u2588"
    lines: list[str] = []
    st = view.status or {}
    ahi = st.get("ahi")
    ahi_txt = f"{ahi:.1f}/h" if isinstance(ahi, int | float) else "--"
    sev = st.get("severity") or "--"
    streams = (f"{st.get('streams_connected')}/{st.get('streams_total')}"
               if "streams_total" in st else "?/?")
    head = f"== bed {view.bed} " + "=" * max(0, width - 8 - len(view.bed))
    lines.append(head[:width])
    lines.append(f"streams {streams}  scored {st.get('epochs_scored', '--')}  unscorable "
                 f"{st.get('epochs_unscorable', '--')}  AHI {ahi_txt} ({sev})")
    last = view.last
    if last is None:
        lines.append("waiting for the first epoch")
    else:
        when = _short_utc(last.get("end_utc"))
        lat = last.get("latency_ms")
        lat_txt = f"  latency {lat:.0f} ms" if isinstance(lat, int | float) else ""
        if last.get("status") == "scored":
            lines.append(f"epoch {last.get('epoch')}  {when}  stage {last.get('stage')}{lat_txt}")
        else:
            lines.append(f"epoch {last.get('epoch')}  {when}  UNSCORABLE: "
                         f"{last.get('reason') or 'no reason given'}{lat_txt}")
        probs = last.get("probs")
        bar_w = max(5, min(30, width - 12))
        if isinstance(probs, Mapping):
            for name in STAGE_NAMES:
                p = probs.get(name)
                mark = ">" if name == last.get("stage") else " "
                lines.append(f" {mark}{name:<3}{_fmt_prob(p)} {_bar(p, bar_w, block)}".rstrip())
        resp = (f"  apnea {_fmt_prob(last.get('apnea_prob'))}  hypopnea "
                f"{_fmt_prob(last.get('hypopnea_prob'))}")
        lines.append(resp)
    lines.extend(_hypnogram_lines(view, state.history, width, block))
    if view.alerts:
        lines.extend(_alert_line(a)[:width] for a in view.alerts)
    else:
        lines.append("  no alerts")
    return lines


def render(state: WatchState, now: float, width: int = 80, ascii_only: bool = False) -> str:
    """The whole view as text (no terminal codes); ``now`` in ``time.monotonic()`` seconds."""
    width = max(40, width)
    link = "connected" if state.connected else "disconnected"
    d = state.daemon or {}
    header = f"rtsleep watch  {state.endpoint}  {link}"
    if d:
        model = str(d.get("model_id") or "")[:12]
        header += f"  daemon {d.get('state', '?')}  model {model or '?'}"
    lines = [header]
    if state.stalled(now):
        if state.last_heartbeat is None:
            lines.append(f"STALLED: no heartbeat since the start ({now - state.started:.0f} s)")
        else:
            lines.append(f"STALLED: no heartbeat for {now - state.last_heartbeat:.0f} s")
    elif state.last_heartbeat is not None:
        lines.append(f"heartbeat {now - state.last_heartbeat:.1f} s ago  "
                     f"({state.n_messages} messages, {state.n_repeats} repeats dropped)")
    else:
        lines.append("waiting for the daemon")
    for bed in sorted(state.beds):
        lines.append("")
        lines.extend(_bed_lines(state.beds[bed], state, width, ascii_only))
    if not state.beds:
        lines.append("")
        lines.append("no beds yet")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- the loop
@dataclass
class WatchOptions:
    """What to watch and for how long (``None``: no limit); durations in seconds."""

    endpoints: list[str] = field(default_factory=lambda: [DEFAULT_ENDPOINT])
    beds: list[str] = field(default_factory=list)
    max_messages: int | None = None
    duration_s: float | None = None
    refresh_s: float = 0.5
    stall_s: float = 15.0
    history: int = 120
    width: int | None = None
    ascii_only: bool = False
    #: Redraw in place (ANSI); ``None``: when the output is a terminal.
    live: bool | None = None
    #: CURVE: the server's public certificate and this client's secret certificate.
    curve_server_key: str = ""
    curve_client_key: str = ""


def connect_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be connected to, or ``None``.

    ZeroMQ connects in the background, so a port out of range or a host name that does not
    resolve would otherwise only show as "disconnected" for ever.
    """
    problem = check_endpoint(endpoint)
    if problem:
        return problem
    m = re.match(r"^tcp://(.+):(\d+)$", endpoint)
    if m is None:
        return None
    host = m.group(1).strip("[]")
    if host == "*":
        return "'*' is for binding; give the daemon's host name or address"
    try:
        socket.getaddrinfo(host, int(m.group(2)), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        return f"cannot resolve host {host!r}: {err}"
    return None


def topics(beds: Sequence[str]) -> list[str]:
    """Subscription prefixes: every bed, or exactly the given ones (topics end in ``/``)."""
    if not beds:
        return ["stage/", "alert/", STATUS_TOPIC]
    out = [STATUS_TOPIC]
    for b in beds:
        out += [stage_topic(b), alert_topic(b)]
    return out


def _apply_curve(sock: Any, server_key: str, client_key: str) -> None:
    import zmq.auth

    if bool(server_key) != bool(client_key):
        raise ValueError("CURVE needs both --curve-server-key and --curve-client-key")
    server_public, _ = zmq.auth.load_certificate(Path(server_key))
    public, secret = zmq.auth.load_certificate(Path(client_key))
    if secret is None:
        raise ValueError(f"{client_key}: holds no secret key (a public certificate?)")
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def _terminal_width(out: TextIO, default: int = 80) -> int:
    import shutil

    if hasattr(out, "isatty") and out.isatty():
        return shutil.get_terminal_size((default, 24)).columns
    return default


def run_watch(options: WatchOptions, out: TextIO | None = None,
              state: WatchState | None = None) -> WatchState:
    """Subscribe to ``options.endpoints`` and show the view on ``out`` (default stdout).

    ``state``: a state to fill (so that another thread can look at it while this runs); by
    default a new one from the options. Returns the state when a limit is reached or on
    KeyboardInterrupt. Raises ``ValueError`` for bad options or CURVE key files.
    """
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    stream: TextIO = out if out is not None else sys.stdout
    if options.max_messages is not None and options.max_messages < 1:
        raise ValueError(f"--count must be >= 1, got {options.max_messages}")
    if options.duration_s is not None and not options.duration_s > 0:
        raise ValueError(f"--duration must be > 0, got {options.duration_s}")
    if not 0 < options.refresh_s <= 60:
        raise ValueError(f"--refresh must be > 0 and <= 60 s, got {options.refresh_s}")
    if not options.endpoints:
        raise ValueError("at least one endpoint is needed")
    for ep in options.endpoints:
        problem = connect_problem(ep)
        if problem:
            raise ValueError(f"{ep}: {problem}")
    live = options.live if options.live is not None else bool(
        hasattr(stream, "isatty") and stream.isatty())
    width = options.width or _terminal_width(stream)
    t0 = time.monotonic()
    if state is None:
        state = WatchState(options.beds, history=options.history, stall_s=options.stall_s)
    state.started = t0
    state.endpoint = ", ".join(options.endpoints)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 200)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    monitor = None
    try:
        if options.curve_server_key or options.curve_client_key:
            _apply_curve(sock, options.curve_server_key, options.curve_client_key)
        for t in topics(options.beds):
            sock.setsockopt(zmq.SUBSCRIBE, t.encode("utf-8"))
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        for ep in options.endpoints:
            try:
                sock.connect(ep)
            except zmq.ZMQError as err:
                raise ValueError(f"{ep}: cannot connect: {err}") from None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        n_connected = 0
        next_draw = t0
        n_received = 0
        while True:
            now = time.monotonic()
            if options.duration_s is not None and now - t0 >= options.duration_s:
                break
            if options.max_messages is not None and n_received >= options.max_messages:
                break
            if live and now >= next_draw:
                stream.write("\x1b[H\x1b[2J" + render(state, now, width, options.ascii_only))
                stream.flush()
                next_draw = now + options.refresh_s
            timeout = options.refresh_s
            if options.duration_s is not None:
                timeout = min(timeout, max(0.0, options.duration_s - (now - t0)))
            events = dict(poller.poll(int(timeout * 1000)))
            if monitor in events:
                while monitor.poll(0):
                    ev = recv_monitor_message(monitor)
                    if ev["event"] == zmq.EVENT_CONNECTED:
                        n_connected += 1
                    elif ev["event"] == zmq.EVENT_DISCONNECTED:
                        n_connected = max(0, n_connected - 1)
                state.connected = n_connected > 0
            if sock in events:
                while sock.poll(0):
                    frames = sock.recv_multipart()
                    now = time.monotonic()
                    if len(frames) != 2:
                        state.n_bad += 1
                        continue
                    try:
                        msg = decode(frames[1])
                        topic = frames[0].decode("utf-8")
                    except (UnicodeDecodeError, ValueError) as err:
                        log.warning("%s: undecodable message: %s", state.endpoint, err)
                        state.n_bad += 1
                        continue
                    if state.update(topic, msg, now):
                        n_received += 1
                    if options.max_messages is not None and n_received >= options.max_messages:
                        break
    except KeyboardInterrupt:
        pass
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(0)
        sock.close(0)
    now = time.monotonic()
    frame = render(state, now, width, options.ascii_only)
    stream.write(("\x1b[H\x1b[2J" if live else "") + frame)
    stream.flush()
    return state


def register(app: typer.Typer) -> None:
    """Add ``watch``."""

    @app.command()
    def watch(
        endpoint: Annotated[list[str] | None, typer.Option(
            "--endpoint", "-e", help=f"Daemon endpoint (repeatable; default {DEFAULT_ENDPOINT}).",
        )] = None,
        bed: Annotated[list[str] | None, typer.Option(
            "--bed", "-b", help="Only this bed (repeatable; default all).")] = None,
        count: Annotated[int | None, typer.Option(
            "--count", "-n", help="Stop after this many new messages.")] = None,
        duration: Annotated[float | None, typer.Option(
            "--duration", "-d", help="Stop after this many seconds.")] = None,
        stall: Annotated[float, typer.Option(
            help="Seconds without a heartbeat before the daemon is shown as stalled.")] = 15.0,
        history: Annotated[int, typer.Option(help="Hypnogram length in epochs.")] = 120,
        refresh: Annotated[float, typer.Option(help="Redraw period in seconds.")] = 0.5,
        plain: Annotated[bool, typer.Option(
            help="No live redraw: print one frame at the end (default when not a terminal).",
        )] = False,
        ascii_only: Annotated[bool, typer.Option("--ascii", help="ASCII only.")] = False,
        curve_server_key: Annotated[str, typer.Option(
            help="CURVE: the daemon's public certificate file.")] = "",
        curve_client_key: Annotated[str, typer.Option(
            help="CURVE: this client's secret certificate file.")] = "",
    ) -> None:
        """Live view of the daemon: stage, probabilities, hypnogram, alerts and AHI per bed."""
        opts = WatchOptions(
            endpoints=list(endpoint) if endpoint else [DEFAULT_ENDPOINT],
            beds=list(bed or []), max_messages=count, duration_s=duration, refresh_s=refresh,
            stall_s=stall, history=history, ascii_only=ascii_only,
            live=False if plain else None, curve_server_key=curve_server_key,
            curve_client_key=curve_client_key,
        )
        try:
            state = run_watch(opts)
        except (ValueError, OSError) as err:
            typer.echo(f"rtsleep watch: {err}", err=True)
            raise typer.Exit(1) from None
        if (count is not None or duration is not None) and not state.n_messages:
            # a script watching for a while must be able to tell that the daemon is down
            typer.echo(f"rtsleep watch: {state.endpoint}: no message from the daemon in "
                       f"{time.monotonic() - state.started:.0f} s", err=True)
            raise typer.Exit(1)

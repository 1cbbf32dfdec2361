"""``make demo`` / ``python -m rtsleep.demo [--file PATH]``: a whole night through the real daemon.

1. The recording: ``--file``, else DREAMS ``excerpt3.edf`` from :func:`rtsleep.settings.data_dir`;
   on a machine without that folder, Sleep-EDF ``SC4001E0`` is downloaded (with its hypnogram)
   by running ``rtsleep-train fetch sleep-edf --records SC4001`` as a subprocess into
   ``~/.cache/rtsleep`` (``rtsleep`` never imports ``offline``).
2. The model: the bundled ``rtsleep/assets/default.safetensors`` (or ``--model``); without one the
   demo stops with a clear message instead of showing made-up output.
3. ``rtsleep serve`` runs in a subprocess with a temporary config (state in a temporary folder,
   ZeroMQ on a free loopback port, LSL confined to this machine), ``rtsleep replay`` plays the
   recording at ``--speed`` (default ``auto``: 60x, faster for nights over 2 h) into it, and the
   demo subscribes like any client, drawing the ``rtsleep watch`` view (current stage,
   probabilities, scrolling hypnogram, alerts).
4. When every epoch has arrived, the daemon gets SIGTERM and the demo prints a summary whose last
   line is ``demo: <N> epochs scored, agreement <A>% with the expert hypnogram, p99 latency <L> ms``
   (agreement over the epochs both the expert and the daemon scored).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtsleep.daemon.lslconfig import write_loopback_config
from rtsleep.data.errors import DataError
from rtsleep.data.recording import EPOCH_S, STAGE_NAMES
from rtsleep.settings import data_dir

log = logging.getLogger("rtsleep.demo")

DEFAULT_REL = Path("dreams-spindles") / "excerpt3.edf"
FALLBACK_RECORD = "SC4001"
#: The demo's own LSL port block: this machine only, its own session and ports (so other LSL
#: programs on the machine, or a full default port block, cannot interfere).
LSL_BASE_PORT = 24000 + (os.getpid() % 400) * 40


class DemoError(RuntimeError):
    """The demo cannot run; the message says why in one line."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def guess_dataset(path: Path) -> str:
    """Reader for the expert hypnogram: ``dreams`` for DREAMS excerpts, ``sleep-edf`` for
    ``SC4xxx``/``ST7xxx`` PSG files, else the generic ``edf``."""
    name = path.name.lower()
    if re.match(r"excerpt\d+\.(edf|txt)$", name):
        return "dreams"
    if re.match(r"(sc|st)\d{4}.\d-psg\.edf$", name):
        return "sleep-edf"
    return "edf"


def fetch_fallback(cache: Path) -> Path:
    """Download Sleep-EDF SC4001 (PSG + hypnogram) with ``rtsleep-train fetch``; its PSG path."""
    found = sorted(cache.rglob(f"{FALLBACK_RECORD}*-PSG.edf"))
    if not found:
        log.info("no shared data folder: fetching Sleep-EDF %s into %s", FALLBACK_RECORD, cache)
        cmd = [sys.executable, "-m", "offline.cli", "fetch", "sleep-edf", "--dest", str(cache),
               "--records", FALLBACK_RECORD, "--no-progress"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            msg = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise DemoError(f"fetching Sleep-EDF {FALLBACK_RECORD} failed: {msg}")
        found = sorted(cache.rglob(f"{FALLBACK_RECORD}*-PSG.edf"))
    if not found:
        raise DemoError(f"{cache}: the Sleep-EDF download has no {FALLBACK_RECORD}*-PSG.edf")
    return found[0]


def choose_recording(file: Path | None) -> Path:
    """``file``, else the shared DREAMS excerpt3, else a downloaded Sleep-EDF night."""
    if file is not None:
        if not file.is_file():
            raise DemoError(f"{file}: no such file")
        return file
    path = data_dir() / DEFAULT_REL
    if path.is_file():
        return path
    return fetch_fallback(Path.home() / ".cache" / "rtsleep")


def expert_stages(path: Path, dataset: str) -> np.ndarray | None:
    """The expert hypnogram per 30-s epoch (``Stage`` values, -1 unscored), if one is found.

    ``dataset`` is tried first, then the other readers that pair a signal file with a hypnogram.
    """
    from rtsleep.data.errors import DataError
    from rtsleep.data.readers import read_recording

    for ds in dict.fromkeys((dataset, "sleep-edf", "dreams")):
        try:
            stages = read_recording(ds, path).stages
        except (DataError, OSError, ValueError) as err:
            log.debug("%s reader: %s", ds, err)
            continue
        if stages is not None:
            return np.asarray(stages)
    log.warning("%s: no expert hypnogram found; agreement is n/a", path)
    return None


def agreement(messages: list[dict[str, Any]], expert: np.ndarray | None) -> float | None:
    """Percent of epochs where the daemon's stage equals the expert's (both scored)."""
    if expert is None:
        return None
    hits = total = 0
    for m in messages:
        k = m["epoch"]
        if m["stage"] is None or k >= len(expert) or expert[k] < 0:
            continue
        total += 1
        hits += int(STAGE_NAMES.index(m["stage"]) == int(expert[k]))
    return 100.0 * hits / total if total else None


def _receive(sub: Any, state: Any) -> tuple[str, dict[str, Any]]:
    """One message from the SUB socket ``sub``, shown in the watch ``state``: (topic, message)."""
    from rtsleep.daemon.messages import decode

    topic_b, payload = sub.recv_multipart()
    msg = decode(payload)
    topic = topic_b.decode()
    state.update(topic, msg, time.monotonic())
    return topic, msg


def _final_heartbeat(sub: Any, state: Any, last_epoch: int, limit_s: float) -> None:
    """Wait (at most ``limit_s``) for a heartbeat that counts the last epoch, so the final
    frame's "scored" agrees with the summary (the heartbeat before it can lag the stages)."""
    from rtsleep.daemon.messages import STATUS_TOPIC

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not sub.poll(100):
            continue
        topic, msg = _receive(sub, state)
        beds = msg.get("beds") if topic == STATUS_TOPIC else None
        if isinstance(beds, dict) and any(
                isinstance(b, dict) and isinstance(b.get("last_epoch"), int)
                and b["last_epoch"] >= last_epoch for b in beds.values()):
            return


def summary_line(n_scored: int, agree: float | None, p99_ms: float | None) -> str:
    """The demo's last line."""
    a = "n/a" if agree is None else f"{agree:.1f}"
    lat = "n/a" if p99_ms is None else f"{p99_ms:.1f}"
    return f"demo: {n_scored} epochs scored, agreement {a}% with the expert hypnogram, " \
           f"p99 latency {lat} ms"


def inlet_buffer_s(n_epochs: int, speed: str) -> int:
    """``daemon.inlet_buffer_s`` for a replay of ``n_epochs`` at ``speed`` (a factor or "max"):
    :func:`rtsleep.daemon.replay.inlet_buffer_for` (10 wall seconds of loop stall at the replay
    speed plus 60 s, at most the whole night; the whole night at max speed). The config default
    (60 s) is for live beds."""
    from rtsleep.daemon.replay import inlet_buffer_for

    try:
        factor: float | None = float(speed)
    except ValueError:  # "max"
        factor = None
    if factor is not None and not 0.0 < factor < 1e6:  # nan, inf: rtsleep replay rejects it
        factor = None
    return inlet_buffer_for(n_epochs * EPOCH_S, factor)


def _say(out: Any, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def run_demo(file: Path | None, model: Path | None, speed: str, timeout_s: float,
             live: bool | None = None, dataset: str | None = None) -> int:
    """Run the demo (see the module docstring); returns the exit code."""
    import zmq

    from rtsleep.daemon.replay import load_channels, plan_outlets
    from rtsleep.daemon.scorer import default_model_path
    from rtsleep.daemon.watch import WatchState, render

    model_path = model if model is not None else default_model_path()
    if not model_path.is_file():
        raise DemoError(f"{model_path}: no trained model installed yet (the bundled default model"
                        " ships with a later build); run with --model PATH")
    path = choose_recording(file)
    dataset = dataset or guess_dataset(path)
    plans = plan_outlets(str(path), load_channels(path))
    n_epochs = min(int(p.n_samples // round(EPOCH_S * p.sfreq)) for p in plans)
    if speed == "auto":
        # 60x (one epoch every 0.5 s) or faster for long nights, so it ends in about 2 min
        speed = f"{max(60.0, n_epochs * EPOCH_S / 120.0):g}"
    expert = expert_stages(path, dataset)
    out = sys.stdout
    live = out.isatty() if live is None else live
    with tempfile.TemporaryDirectory(prefix="rtsleep-demo-") as tmp_s:
        tmp = Path(tmp_s)
        lsl_cfg = tmp / "lsl.cfg"
        write_loopback_config(lsl_cfg, f"rtsleep-demo-{os.getpid()}", base_port=LSL_BASE_PORT)
        env = dict(os.environ, LSLAPICFG=str(lsl_cfg))
        port = _free_port()
        streams = ", ".join(f'{{ source_id = "{p.source_id}" }}' for p in plans)
        cfg = tmp / "rtsleep.toml"
        cfg.write_text(
            f'[daemon]\nstate_dir = "{tmp / "state"}"\nheartbeat_s = 1.0\n'
            f'epoch_timeout_s = 5.0\npoll_s = 0.01\n'
            f'inlet_buffer_s = {inlet_buffer_s(n_epochs, speed)}\ninlet_buffer_mb = 0\n\n'
            f'[model]\npath = "{model_path}"\n\n'
            f'[zmq]\nendpoints = ["tcp://127.0.0.1:{port}"]\n\n'
            f'[[beds]]\nid = "demo"\nstreams = [{streams}]\n'
        )
        serve_log = (tmp / "serve.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "rtsleep.cli", "serve", "--config", str(cfg)],
            env=env, stdout=serve_log, stderr=serve_log)
        replay: subprocess.Popen[bytes] | None = None
        ctx: zmq.Context[Any] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for topic in ("stage/", "alert/", "status/"):
            sub.setsockopt_string(zmq.SUBSCRIBE, topic)
        sub.connect(f"tcp://127.0.0.1:{port}")
        state = WatchState(["demo"], history=120)
        stages: dict[int, dict[str, Any]] = {}
        t0 = time.monotonic()
        next_draw = t0
        try:
            _say(out, f"demo: {path.name} ({n_epochs} epochs), model {model_path.name}, "
                      f"replay speed {speed}")
            while len(stages) < n_epochs:
                now = time.monotonic()
                if now - t0 > timeout_s:
                    raise DemoError(f"only {len(stages)} of {n_epochs} epochs after "
                                    f"{timeout_s:.0f} s")
                if daemon.poll() is not None:
                    raise DemoError(f"the daemon exited ({daemon.returncode}): "
                                    f"{_last_line(tmp / 'serve.log')}")
                if replay is not None and replay.poll():
                    raise DemoError(f"the replay exited ({replay.returncode}): "
                                    f"{_last_line(tmp / 'replay.log')}")
                if live and now >= next_draw:
                    out.write("\x1b[H\x1b[2J" + render(state, now))
                    out.flush()
                    next_draw = now + 0.25
                if not sub.poll(100):
                    continue
                topic, msg = _receive(sub, state)
                state.connected = True
                if topic == "status/" and replay is None:
                    with (tmp / "replay.log").open("wb") as replay_log:
                        replay = subprocess.Popen(
                            [sys.executable, "-m", "rtsleep.cli", "replay", str(path),
                             "--speed", speed, "--wait-consumers", "60"],
                            env=env, stdout=replay_log, stderr=replay_log)
                elif topic.startswith("stage/"):
                    stages[int(msg["epoch"])] = msg
            _final_heartbeat(sub, state, n_epochs - 1, limit_s=3.0)
        finally:
            if replay is not None:
                replay.kill()
                replay.wait(10)
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(5)
            serve_log.close()
            sub.close(0)
            ctx.term()
        out.write(("\x1b[H\x1b[2J" if live else "") + render(state, time.monotonic()))
    messages = [stages[k] for k in sorted(stages)]
    scored = [m for m in messages if m["status"] == "scored"]
    lat = [m["latency_ms"] for m in messages if m["latency_ms"] is not None]
    p99 = float(np.percentile(lat, 99)) if lat else None
    p50 = float(np.percentile(lat, 50)) if lat else None
    agree = agreement(messages, expert)
    _say(out, f"recording: {path}")
    _say(out, f"epochs: {len(messages)} published, {len(scored)} scored, "
              f"{len(messages) - len(scored)} unscorable; wall time "
              f"{time.monotonic() - t0:.1f} s")
    if p50 is not None:
        _say(out, f"latency (epoch complete -> published): p50 {p50:.1f} ms")
    _say(out, summary_line(len(scored), agree, p99))
    return 0


def _last_line(log_file: Path) -> str:
    text = log_file.read_text(errors="replace").strip() if log_file.is_file() else ""
    return text.splitlines()[-1] if text else "no output"


def _exit_on_signal(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP (a CI timeout, a closed terminal) end the demo like Ctrl-C: through the
    ``finally`` that stops the daemon and the replay and removes the temporary folder."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m rtsleep.demo``)."""
    parser = argparse.ArgumentParser(prog="python -m rtsleep.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=None, help="EDF recording to replay.")
    parser.add_argument("--model", type=Path, default=None, help="Model (default: bundled).")
    parser.add_argument("--speed", default="auto",
                        help="Replay speed factor, 'max' (latency then includes the backlog) "
                             "or 'auto' (60x, faster for nights over 2 h).")
    parser.add_argument("--timeout", type=float, default=600.0, help="Give up after this (s).")
    parser.add_argument("--dataset", default=None,
                        help="Reader for the expert hypnogram (default: guessed from the name).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.speed != "auto":
        import typer

        from rtsleep.daemon.replay import parse_speed

        try:
            parse_speed(args.speed)
        except typer.BadParameter as err:
            _say(sys.stderr, f"demo: error: --speed: {err}")
            return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        return run_demo(args.file, args.model, args.speed, args.timeout, dataset=args.dataset)
    except (DemoError, DataError) as err:
        _say(sys.stderr, f"demo: error: {err}")
        return 1
    except KeyboardInterrupt:
        _say(sys.stderr, "demo: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

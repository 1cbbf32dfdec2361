"""Benchmark the daemon: epoch-close-to-publish latency, and CPU and RSS per bed.

For each bed count N a fresh ``rtsleep serve`` runs as a subprocess with N beds, fed by a feeder
process holding N LSL outlets (one per bed: a PSG amplifier stream with 4 ExG channels, EEG C3-M2,
EOG E1-M2, chin EMG and ECG, float32 at 256 Hz, synthetic noise at physiological amplitudes), and
read by a ZeroMQ SUB socket in this process. LSL is confined to the machine (``LSLAPICFG``).

Clocks: bed ``b`` pushes sample ``i`` at wall time ``T_b + i / (fs * speed)`` with the LSL
timestamp ``t_b + i / fs`` (chunks of ``tick`` wall seconds, the last sample stamped), so
``speed`` > 1 accelerates the data *and* its timestamps consistently: the daemon sees a normal
stream whose epochs close every ``30 / speed`` s. Beds start staggered over one epoch period, as
beds in a lab do, so epoch closes are spread evenly (no artificial burst of N epochs at once).

Measured, after every stream is connected (from the ``status/`` heartbeats) and a warm-up:

- **latency**: ``close -> publish`` = SUB receive time minus the time the feeder's push of the
  epoch's last sample returned (both ``time.monotonic()``, one machine), p50 / p99 / max; and
  the daemon's own ``latency_ms`` field (poll that found the epoch complete -> publish call).
- **CPU**: the daemon's user + system time (all threads, ``/proc/PID/stat``) over the window,
  as a percentage of one core; per bed in real-time terms = CPU / (N * speed); per epoch = CPU
  time / epochs closed (includes the idle polling); and idle = 5 s with every stream open but no
  data yet (the cost of polling N inlets), measured before the feed starts.
- **RSS**: the daemon's ``VmRSS`` at the end of the window; per added bed = the slope against
  the 1-bed run. liblsl preallocates each inlet's queue (``daemon.inlet_buffer_s``, the config
  default unless ``--inlet-buflen`` is given), so that key sets most of the per-bed figure.
- **sustained**: every epoch that closed in the window (except the last 3 s) was published,
  in order and once, and the worst close -> publish latency stays below one epoch period
  (no backlog builds). The feeder's worst lag behind its schedule is reported beside it: a late
  push delays the close itself, which is measured when it happens, so it does not bias latency.

The model is ``--model`` (default: the bundled one, else a randomly initialised
``SleepNetConfig.default()`` model written to a temp dir: the compute cost is the same).
Prints a Markdown table (and ``--json`` writes the raw figures). Runtime about 7 minutes with the
defaults. Timings on the shared 2-core development machine are noisy: other jobs steal CPU.

    .venv/bin/python tools/bench_daemon.py
    .venv/bin/python tools/bench_daemon.py --beds 1,16 --seconds 20   # quick look
    .venv/bin/python tools/bench_daemon.py --beds 1,64 --speeds 30,1 --montage bipolar  # 2 EEG
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from rtsleep.daemon.lslconfig import write_loopback_config

log = logging.getLogger("bench_daemon")

EPOCH_S = 30.0
FS = 256.0
Channel = tuple[str, str, str, float]
"""(label, unit, type, noise standard deviation in µV)"""
#: The streamed channels per ``--montage``. ``referential``: one central EEG (the bundled model's
#: referential group, one state row per bed). ``bipolar``: the two Sleep-EDF derivations, which
#: the bundled model scores as two EEG views (its bipolar group, two state rows per bed).
MONTAGES: dict[str, tuple[Channel, ...]] = {
    "referential": (
        ("C3-M2", "uV", "EEG", 20.0),
        ("E1-M2", "uV", "EOG", 30.0),
        ("Chin1-Chin2", "uV", "EMG", 8.0),
        ("ECG", "uV", "ECG", 300.0),
    ),
    "bipolar": (
        ("EEG Fpz-Cz", "uV", "EEG", 20.0),
        ("EEG Pz-Oz", "uV", "EEG", 20.0),
        ("E1-M2", "uV", "EOG", 30.0),
        ("Chin1-Chin2", "uV", "EMG", 8.0),
        ("ECG", "uV", "ECG", 300.0),
    ),
}
#: Default speed per bed count: enough epochs for a p99 in about a minute; >= 64 beds real time.
DEFAULT_SPEED = {1: 30.0, 16: 4.0, 64: 1.0, 256: 1.0}



# ---------------------------------------------------------------------------------- feeder
def _source_id(bed: int, n_beds: int) -> str:
    """Unique per run (bed count), so a run never resolves an outlet of the previous one."""
    return f"rtsleep-bench-{n_beds}-bed{bed:03d}"


def feeder_main(n_beds: int, speed: float, tick_s: float, seed: int,
                conn: mpc.Connection, channels: tuple[Channel, ...] = MONTAGES["referential"]
                ) -> None:
    """Feeder process: N outlets, then ``("go", start_at, stop_at)``, then paced pushes.

    Bed ``b`` begins with ``(1 - b / N)`` of an epoch already recorded (pushed at once at
    ``start_at``), so its epochs close at ``start_at + (b / N + k) * 30 / speed``: every bed runs
    from the start and the closes are spread evenly. Sends back ``{"closes": [[t, ...] per bed],
    "max_lag_s": ...}``: the ``time.monotonic()`` at which the push holding epoch ``k``'s last
    sample returned.
    """
    import pylsl

    rng = np.random.default_rng(seed)
    n_chans = len(channels)
    per_epoch = int(EPOCH_S * FS)
    scale = np.array([c[3] for c in channels], dtype=np.float32)
    outlets: list[Any] = []
    noise: list[np.ndarray] = []
    for b in range(n_beds):
        info = pylsl.StreamInfo(f"bench-bed{b:03d}", "EEG", n_chans, FS, pylsl.cf_float32,
                                _source_id(b, n_beds))
        chans = info.desc().append_child("channels")
        for label, unit, ctype, _ in channels:
            ch = chans.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("unit", unit)
            ch.append_child_value("type", ctype)
        outlets.append(pylsl.StreamOutlet(info, chunk_size=0, max_buffered=360))
        # one epoch of white noise per bed, (per_epoch, n_chans) float32 µV, replayed cyclically
        noise.append((rng.standard_normal((per_epoch, n_chans)) * scale).astype(np.float32))
    conn.send("ready")
    _, start_at, stop_at = conn.recv()
    pre = [int(round((1.0 - b / n_beds) * per_epoch)) % per_epoch for b in range(n_beds)]
    sent = [0] * n_beds
    closes: list[list[float]] = [[] for _ in range(n_beds)]
    max_lag = 0.0
    next_tick = start_at
    l_start: float | None = None
    while True:
        now = time.monotonic()
        if now < next_tick:
            time.sleep(next_tick - now)
            now = time.monotonic()
        if now >= stop_at:
            break
        if l_start is None:
            l_start = pylsl.local_clock()
        max_lag = max(max_lag, now - next_tick)
        next_tick += tick_s
        for b in range(n_beds):
            target = pre[b] + int((now - start_at) * FS * speed)
            if target <= sent[b]:
                continue
            idx = np.arange(sent[b], target) % per_epoch
            t_last = l_start + (target - 1 - pre[b]) / FS  # LSL time of the chunk's last sample
            outlets[b].push_chunk(noise[b][idx], t_last)  # (n, n_chans)
            t_pushed = time.monotonic()
            while len(closes[b]) < target // per_epoch:  # epochs whose last sample went out
                closes[b].append(t_pushed)
            sent[b] = target
    conn.send({"closes": closes, "max_lag_s": max_lag})
    # keep the outlets until told, so the daemon never sees them vanish mid-measurement
    conn.poll(30.0)


# ---------------------------------------------------------------------------------- daemon
def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, model: Path, n_beds: int, port: int, poll_s: float,
                 inlet_buffer_s: int = 0) -> Path:
    """The daemon's TOML config; ``inlet_buffer_s`` 0 keeps the config default."""
    buffer_line = f"inlet_buffer_s = {inlet_buffer_s}\n" if inlet_buffer_s > 0 else ""
    beds = "".join(
        f'\n[[beds]]\nid = "bed{b:03d}"\nstreams = [{{ source_id = "{_source_id(b, n_beds)}" }}]\n'
        for b in range(n_beds)
    )
    text = f"""[daemon]
state_dir = "{tmp / f'state-{n_beds}'}"
heartbeat_s = 1.0
epoch_timeout_s = 10.0
poll_s = {poll_s}
{buffer_line}
[model]
path = "{model}"
device = "cpu"
max_batch = 256

[zmq]
endpoints = ["tcp://127.0.0.1:{port}"]
sndhwm = 100000
{beds}"""
    path = tmp / f"rtsleep-{n_beds}.toml"
    path.write_text(text)
    return path


@dataclass
class RunResult:
    n_beds: int
    speed: float
    window_s: float
    n_closed: int = 0
    n_published: int = 0
    n_scored: int = 0
    n_missed: int = 0
    n_duplicates: int = 0
    out_of_order: int = 0
    e2e_ms: dict[str, float] = field(default_factory=dict)
    daemon_ms: dict[str, float] = field(default_factory=dict)
    cpu_pct: float = 0.0
    #: Daemon CPU with every stream open but no data (polling, heartbeats), % of one core.
    idle_cpu_pct: float = 0.0
    #: Daemon CPU time per published epoch in the window (idle polling included), ms.
    cpu_ms_per_epoch: float = 0.0
    cpu_pct_per_bed_rt: float = 0.0
    rss_mb: float = 0.0
    rss_start_mb: float = 0.0
    feeder_max_lag_s: float = 0.0
    #: 1-min load average of the machine at the start and end of the window.
    load: tuple[float, float] = (0.0, 0.0)
    startup_s: float = 0.0
    sustained: bool = False
    notes: list[str] = field(default_factory=list)


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "n": float(a.size)}


def run_one(n_beds: int, speed: float, seconds: float, model: Path, tmp: Path, tick_s: float,
            poll_s: float, daemon_cpus: str, startup_limit_s: float, torch_threads: int,
            log_dir: Path | None = None, inlet_buflen_s: int = 0,
            idle_s: float = 5.0, montage: str = "referential") -> RunResult:
    """One bed count: feeder outlets, then the daemon; once every stream is connected, play
    for one epoch period of warm-up plus ``seconds`` and measure the window."""
    import zmq

    res = RunResult(n_beds=n_beds, speed=speed, window_s=seconds)
    port = _free_port()
    cfg = write_config(tmp, model, n_beds, port, poll_s, inlet_buflen_s)
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    if torch_threads > 0:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    cmd = [sys.executable, "-m", "rtsleep.cli", "serve", "--config", str(cfg)]
    if daemon_cpus:
        cmd = ["taskset", "-c", daemon_cpus, *cmd]
    log_path = (log_dir or tmp) / f"daemon-{n_beds}.log"
    spawn = mp.get_context("spawn")
    conn, child = spawn.Pipe()
    feeder = spawn.Process(target=feeder_main,
                           args=(n_beds, speed, tick_s, n_beds, child, MONTAGES[montage]),
                           daemon=True)
    feeder.start()
    if not conn.poll(startup_limit_s):
        feeder.kill()
        raise RuntimeError(f"{n_beds} beds: the feeder did not create its outlets")
    conn.recv()
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    for t in (b"stage/", b"status/"):
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.connect(f"tcp://127.0.0.1:{port}")
    t_launch = time.monotonic()
    log_fh = log_path.open("wb")
    daemon = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=log_fh)
    try:
        deadline = t_launch + startup_limit_s
        connected = False
        while not connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n_beds} beds: streams not connected after "
                                   f"{startup_limit_s:.0f} s (see {log_path})")
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon exited with {daemon.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            if sub.poll(200):
                topic, payload = sub.recv_multipart()
                beds = json.loads(payload).get("beds", {}) if topic == b"status/" else {}
                connected = len(beds) == n_beds and all(
                    b.get("streams_open") == b.get("streams_total") for b in beds.values())
        res.startup_s = time.monotonic() - t_launch
        # idle cost: every stream open, no data yet (polling N inlets, heartbeats)
        c0, w0 = _proc_cpu_s(daemon.pid), time.monotonic()
        while time.monotonic() - w0 < idle_s:
            if sub.poll(100):
                sub.recv_multipart()
        res.idle_cpu_pct = 100.0 * (_proc_cpu_s(daemon.pid) - c0) / (time.monotonic() - w0)
        start_at = time.monotonic() + 0.5
        t_meas0 = start_at + EPOCH_S / speed  # one epoch period of warm-up: every bed has begun
        t_stop = t_meas0 + seconds
        conn.send(("go", start_at, t_stop))
        stage_msgs: list[tuple[float, dict[str, Any]]] = []
        cpu0 = cpu1 = t_cpu0 = t_cpu1 = None
        while True:
            now = time.monotonic()
            if cpu0 is None and now >= t_meas0:
                cpu0, t_cpu0 = _proc_cpu_s(daemon.pid), now
                res.rss_start_mb = _proc_rss_mb(daemon.pid)
                load0 = os.getloadavg()[0]
            if cpu1 is None and now >= t_stop:
                cpu1, t_cpu1 = _proc_cpu_s(daemon.pid), now
                res.rss_mb = _proc_rss_mb(daemon.pid)
                res.load = (load0, os.getloadavg()[0])
            if now >= t_stop + 3.0:
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon exited with {daemon.returncode} mid-run (see "
                                   f"{log_path})")
            if sub.poll(50):
                while sub.poll(0):
                    topic, payload = sub.recv_multipart()
                    if topic.startswith(b"stage/"):
                        stage_msgs.append((time.monotonic(), json.loads(payload)))
        if not conn.poll(30.0):
            raise RuntimeError("the feeder sent no results")
        feed = conn.recv()
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        log_fh.close()
        conn.send("done")
        feeder.join(10)
        if feeder.is_alive():
            feeder.kill()
        sub.close(0)
    if cpu0 is None or cpu1 is None or t_cpu0 is None or t_cpu1 is None:
        raise RuntimeError("measurement window not reached")
    res.cpu_pct = 100.0 * (cpu1 - cpu0) / (t_cpu1 - t_cpu0)
    res.cpu_pct_per_bed_rt = res.cpu_pct / (n_beds * speed)
    epochs_per_s = n_beds * speed / EPOCH_S
    res.cpu_ms_per_epoch = 10.0 * res.cpu_pct / epochs_per_s  # (% / 100) s/s / (epochs/s) in ms
    res.feeder_max_lag_s = float(feed["max_lag_s"])
    _score_latency(res, feed["closes"], stage_msgs, t_meas0, t_stop, tick_s)
    return res


def _score_latency(res: RunResult, closes: list[list[float]],
                   stage_msgs: list[tuple[float, dict[str, Any]]], t0: float, t1: float,
                   tick_s: float) -> None:
    got: dict[tuple[int, int], list[tuple[float, dict[str, Any]]]] = {}
    last_epoch: dict[int, int] = {}
    for t_recv, msg in stage_msgs:
        bed = int(str(msg["bed"])[3:])
        k = int(msg["epoch"])
        got.setdefault((bed, k), []).append((t_recv, msg))
        if k <= last_epoch.get(bed, -1):
            res.out_of_order += 1
        last_epoch[bed] = k
    e2e: list[float] = []
    daemon_lat: list[float] = []
    for bed, times in enumerate(closes):
        for k, t_close in enumerate(times):
            if not t0 <= t_close <= t1 - 3.0:
                continue
            res.n_closed += 1
            msgs = got.get((bed, k))
            if not msgs:
                res.n_missed += 1
                log.warning("bed %d epoch %d closed at window+%.2f s: not published", bed, k,
                            t_close - t0)
                continue
            res.n_duplicates += len(msgs) - 1
            t_recv, msg = msgs[0]
            res.n_published += 1
            res.n_scored += msg.get("status") == "scored"
            e2e.append((t_recv - t_close) * 1000.0)
            if isinstance(msg.get("latency_ms"), int | float):
                daemon_lat.append(float(msg["latency_ms"]))
    res.e2e_ms = _pcts(e2e)
    res.daemon_ms = _pcts(daemon_lat)
    period = EPOCH_S / res.speed
    res.sustained = (res.n_closed > 0 and res.n_missed == 0 and res.n_duplicates == 0
                     and res.out_of_order == 0 and res.e2e_ms.get("max", 1e9) < 1000.0 * period)
    if res.n_missed:
        res.notes.append(f"{res.n_missed} missed")
    if res.n_duplicates or res.out_of_order:
        res.notes.append(f"{res.n_duplicates} duplicates, {res.out_of_order} out of order")


# ---------------------------------------------------------------------------------- main
def make_model(path_opt: str, tmp: Path) -> tuple[Path, str]:
    """The model file to serve and how it was obtained."""
    if path_opt:
        return Path(path_opt), "given"
    from rtsleep.daemon.scorer import default_model_path

    bundled = default_model_path()
    if bundled.is_file():
        return bundled, "bundled"
    import torch

    from rtsleep.data.preprocessing import PreprocessSpec
    from rtsleep.models import SleepNet, SleepNetConfig, save_model

    torch.manual_seed(0)
    path = tmp / "bench-model.safetensors"
    save_model(SleepNet(SleepNetConfig.default()).eval(), path, PreprocessSpec.default())
    return path, "random SleepNetConfig.default()"


def _fmt(d: dict[str, float], key: str) -> str:
    return f"{d[key]:.0f}" if key in d else "--"


def table(results: list[RunResult], rss_base: float | None) -> str:
    lines = [
        "| beds | speed | epochs in window | published | scored | close->publish p50 / p99 / "
        "max ms | daemon latency_ms p50 / p99 | CPU % (one core) | idle CPU % | CPU ms per epoch | "
        "CPU % per bed, real time | "
        "RSS MB | RSS per added bed MB | sustained | feeder max lag s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_bed = ("--" if rss_base is None or r.n_beds == 1 else
                   f"{(r.rss_mb - rss_base) / (r.n_beds - 1):.2f}")
        lines.append(
            f"| {r.n_beds} | {r.speed:g}x | {r.n_closed} | {r.n_published} | {r.n_scored} | "
            f"{_fmt(r.e2e_ms, 'p50')} / {_fmt(r.e2e_ms, 'p99')} / {_fmt(r.e2e_ms, 'max')} | "
            f"{_fmt(r.daemon_ms, 'p50')} / {_fmt(r.daemon_ms, 'p99')} | {r.cpu_pct:.1f} | "
            f"{r.idle_cpu_pct:.1f} | {r.cpu_ms_per_epoch:.0f} | "
            f"{r.cpu_pct_per_bed_rt:.3f} | {r.rss_mb:.0f} | {per_bed} | "
            f"{'yes' if r.sustained else 'NO'}{' (' + '; '.join(r.notes) + ')' if r.notes else ''}"
            f" | {r.feeder_max_lag_s:.2f} | {r.load[0]:.0f}-{r.load[1]:.0f} |"
        )
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(
    beds: Annotated[str, typer.Option(help="Bed counts, comma-separated.")] = "1,16,64,256",
    speeds: Annotated[str, typer.Option(
        help="Clock speed per bed count, comma-separated (default 30,4,1,1 for 1,16,64,256; "
             "1 for other counts).")] = "",
    seconds: Annotated[float, typer.Option(help="Measurement window per bed count, s.")] = 60.0,
    tick: Annotated[float, typer.Option(help="Feeder push period, wall s.")] = 0.05,
    poll: Annotated[float, typer.Option(help="Daemon poll_s.")] = 0.02,
    model: Annotated[str, typer.Option(help="Model file (default: bundled, else random).")] = "",
    daemon_cpus: Annotated[str, typer.Option(
        help="Pin the daemon with taskset -c (e.g. 0,1); default: no pinning.")] = "",
    startup_limit: Annotated[float, typer.Option(help="Max s for the streams to connect.")] = 180.0,
    torch_threads: Annotated[int, typer.Option(
        help="OMP_NUM_THREADS of the daemon (0: torch's default, one per core).")] = 1,
    log_dir: Annotated[str, typer.Option(help="Keep the daemon logs here.")] = "",
    inlet_buflen: Annotated[int, typer.Option(
        help="daemon.inlet_buffer_s, liblsl's queue per inlet in s (0: the config default)."
    )] = 0,
    montage: Annotated[str, typer.Option(
        help="Streamed channels: 'referential' (one EEG, C3-M2) or 'bipolar' (EEG Fpz-Cz and "
             "EEG Pz-Oz, which the bundled model scores as two EEG views per bed).")
    ] = "referential",
    json_out: Annotated[str, typer.Option("--json", help="Write raw results here.")] = "",
) -> None:
    """Run the daemon benchmark and print a Markdown table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up the daemon and the feeder on kill
    if montage not in MONTAGES:
        raise typer.BadParameter(f"--montage: expected one of {sorted(MONTAGES)}, got {montage!r}")
    counts = [int(x) for x in beds.split(",") if x.strip()]
    if speeds:
        speed_list = [float(x) for x in speeds.split(",")]
        if len(speed_list) != len(counts):
            raise typer.BadParameter("--speeds needs one value per bed count")
    else:
        speed_list = [DEFAULT_SPEED.get(n, 1.0) for n in counts]
    with tempfile.TemporaryDirectory(prefix="rtsleep-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_path, how = make_model(model, tmp)
        log.info("model %s (%s)", model_path, how)
        results: list[RunResult] = []
        for n, sp in zip(counts, speed_list, strict=True):
            log.info("%d bed(s) at %gx for %.0f s", n, sp, seconds)
            # discovery is unicast to every port of the range, so it must hold every outlet of
            # the feeder (liblsl's default is 32 ports)
            cfg = write_loopback_config(tmp / f"lsl-{n}.cfg", f"rtsleep-bench-{os.getpid()}",
                                        port_range=max(32, 2 * n + 32))
            os.environ["LSLAPICFG"] = str(cfg)  # inherited by the feeder and the daemon
            res = run_one(n, sp, seconds, model_path, tmp, tick, poll, daemon_cpus,
                          startup_limit, torch_threads, Path(log_dir) if log_dir else None,
                          inlet_buflen, montage=montage)
            log.info("%d bed(s): %s", n, res)
            results.append(res)
    base = next((r.rss_mb for r in results if r.n_beds == 1), None)
    from rtsleep.daemon.config import DaemonSection

    buffer_s = inlet_buflen if inlet_buflen > 0 else DaemonSection().inlet_buffer_s
    header = (f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, model: {how}, montage {montage}, "
              f"daemon.inlet_buffer_s {buffer_s} "
              f"({'given' if inlet_buflen > 0 else 'config default'}); load average "
              f"{os.getloadavg()[0]:.1f} at the end")
    typer.echo(header)
    typer.echo(table(results, base))
    if json_out:
        Path(json_out).write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    typer.run(main)

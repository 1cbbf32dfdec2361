"""Benchmark the daemon's LSL ingest side (inlets, dejitter, epocher) on loopback.

Measures, and prints as Markdown:

1. CPU per pulled chunk of the ingest path without the network (``Dejitter`` + ring buffer +
   ``BedEpocher.push`` + ``pop_ready``), and what that costs per bed and real-time second.
2. Resident memory that liblsl allocates per opened inlet, by ``max_buflen_s`` and rate.
3. Ingest latency over LSL: from ``push_chunk`` of the chunk that closes an epoch to the
   ``EpochBlock`` coming out of ``BedIngest.poll()`` (polling every ``--poll-ms``).
4. Throughput: DREAMS excerpt3 (or ``--file``) replayed at ``--speed max`` into one bed.

LSL is confined to this machine (same config as tests/conftest.py). Timings on the shared 2-core
machines are noisy when other jobs run; the load average is printed with the results.

    .venv/bin/python tools/bench_lsl_ingest.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from rtsleep.daemon.lslconfig import write_loopback_config  # imports no pylsl

if "LSLAPICFG" not in os.environ:  # the spawned player inherits the parent's config
    _CFG = write_loopback_config(
        Path(tempfile.gettempdir()) / f"rtsleep-bench-lsl-{os.getpid()}.cfg",
        f"rtsleep-bench-{os.getpid()}", port_range=512,
    )
    os.environ["LSLAPICFG"] = str(_CFG)

import numpy as np  # noqa: E402
import pylsl  # noqa: E402
import typer  # noqa: E402

from rtsleep.daemon.epocher import BedEpocher, EpochBlock  # noqa: E402
from rtsleep.daemon.ingest import BedIngest  # noqa: E402
from rtsleep.daemon.inlet import (  # noqa: E402
    ChannelSpec,
    Dejitter,
    StreamLayout,
    StreamSelector,
    resolve,
)
from rtsleep.daemon.ringbuffer import RingBuffer  # noqa: E402
from rtsleep.settings import data_dir  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def bench_cpu(sfreq: float, n_chans: int, chunk: int, n_chunks: int) -> float:
    """Mean µs of CPU per chunk through dejitter + ring buffer + epocher."""
    layout = StreamLayout("s", "s", "EEG", "s", sfreq,
                          tuple(ChannelSpec(f"C{i}", "uV", "EEG") for i in range(n_chans)))
    dj = Dejitter(sfreq)
    rb = RingBuffer(max(256, int(10 * sfreq)), n_chans)
    ep = BedEpocher("b", ["s"])
    ep.attach("s", layout)
    x = np.random.default_rng(0).normal(size=(chunk, n_chans))
    steps = np.arange(chunk) / sfreq
    t0 = 1000.0
    start = time.process_time()
    for k in range(n_chunks):
        ts = t0 + k * chunk / sfreq + steps
        rb.push(x, dj.process(ts))
        data, grid = rb.pop()
        ep.push("s", data, grid)
        ep.pop_ready(0.0)
    return (time.process_time() - start) / n_chunks * 1e6


def bench_rss(sfreq: float, buflen: int, n: int = 8) -> float:
    """MB of RSS added per opened inlet."""
    tag = f"rss-{os.getpid()}-{time.monotonic_ns()}"
    outs = [pylsl.StreamOutlet(pylsl.StreamInfo(f"r{i}", "EEG", 4, sfreq, pylsl.cf_double64,
                                                f"{tag}-{i}")) for i in range(n)]
    infos = [resolve(StreamSelector(source_id=f"{tag}-{i}"), 3.0)[0] for i in range(n)]
    before = _rss_mb()
    inlets = [pylsl.StreamInlet(i, max_buflen=buflen, recover=True) for i in infos]
    for inlet in inlets:
        inlet.open_stream(3.0)
    time.sleep(0.3)
    per = (_rss_mb() - before) / n
    del inlets, outs
    return per


def bench_latency(sfreq: float, n_epochs: int, chunk_s: float, poll_ms: float) -> list[float]:
    """ms from the push of an epoch's closing chunk to its EpochBlock.

    Per epoch: everything but the last chunk is pushed and drained first, then the closing chunk
    is pushed and the bed is polled every ``poll_ms`` until the epoch comes out.
    """
    tag = f"lat-{os.getpid()}-{time.monotonic_ns()}"
    info = pylsl.StreamInfo("lat", "EEG", 4, sfreq, pylsl.cf_double64, tag)
    chans = info.desc().append_child("channels")
    for i in range(4):
        ch = chans.append_child("channel")
        ch.append_child_value("label", f"C{i}")
        ch.append_child_value("unit", "uV")
        ch.append_child_value("type", "EEG")
    outlet = pylsl.StreamOutlet(info)
    ingest = BedIngest("bed", [StreamSelector(source_id=tag)])
    if not ingest.wait_open(15):
        raise RuntimeError("inlet did not open")
    chunk = int(round(chunk_s * sfreq))
    per_epoch = int(round(30 * sfreq))
    x = np.random.default_rng(0).normal(size=(per_epoch, 4))
    t0 = pylsl.local_clock()
    lat: list[float] = []
    for k in range(n_epochs):
        first = k * per_epoch
        body = per_epoch - chunk
        outlet.push_chunk(x[:body], timestamp=t0 + (first + body - 1) / sfreq)
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            if ingest.poll():
                raise RuntimeError("epoch closed before its last chunk")
            time.sleep(poll_ms / 1000.0)
        outlet.push_chunk(x[body:], timestamp=t0 + (first + per_epoch - 1) / sfreq)
        pushed = time.perf_counter()
        blocks: list[EpochBlock] = []
        while not blocks:
            time.sleep(poll_ms / 1000.0)
            blocks = ingest.poll()
        lat.append((time.perf_counter() - pushed) * 1e3)
    ingest.close()
    del outlet
    return lat


def bench_replay(path: Path) -> tuple[int, float]:
    """Epochs and wall seconds from the first to the last epoch of a max-speed replay."""
    from rtsleep.daemon.replay import Player, PlayerConfig, load_channels, plan_outlets

    plans = plan_outlets(str(path), load_channels(path))
    n_epochs = min(p.n_samples // int(round(30 * p.sfreq)) for p in plans)
    ingest = BedIngest("bed", [StreamSelector(source_id=p.source_id) for p in plans])
    player = Player(PlayerConfig(path=path, speed=None, wait_consumers_s=30.0))
    got = 0
    try:
        player.start(timeout_s=60)
        t_first = None
        deadline = time.monotonic() + 120
        while got < n_epochs and time.monotonic() < deadline:
            blocks = ingest.poll()
            if blocks and t_first is None:
                t_first = time.perf_counter()
            got += len(blocks)
            time.sleep(0.002)
        wall = time.perf_counter() - (t_first or time.perf_counter())
    finally:
        player.stop()
        ingest.close()
    return got, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=None, help="EDF to replay (default excerpt3)")
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--latency-epochs", type=int, default=30)
    args = parser.parse_args()

    typer.echo(f"load average before: {os.getloadavg()[0]:.1f}\n")
    typer.echo("| rate Hz | channels | samples/chunk | µs CPU per chunk (incl. epoch emission) | "
          "CPU ms per bed-second (6 such streams, 20 chunks/s) |")
    typer.echo("|---|---|---|---|---|")
    for sfreq, n_chans, chunk in ((50.0, 3, 3), (100.0, 4, 5), (256.0, 8, 13)):
        us = bench_cpu(sfreq, n_chans, chunk, 20000)
        typer.echo(f"| {sfreq:g} | {n_chans} | {chunk} | {us:.1f} | {us * 6 * 20 / 1000:.2f} |")

    typer.echo("\n| rate Hz | max_buflen_s | MB RSS per inlet |")
    typer.echo("|---|---|---|")
    for sfreq, buflen in ((50.0, 60), (50.0, 1800), (256.0, 60), (256.0, 360), (256.0, 1800)):
        typer.echo(f"| {sfreq:g} | {buflen} | {bench_rss(sfreq, buflen):.2f} |")

    lat = sorted(bench_latency(100.0, args.latency_epochs, 0.05, args.poll_ms))
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    typer.echo(f"\ningest latency (push of the closing chunk -> EpochBlock), {len(lat)} epochs, "
          f"poll {args.poll_ms:g} ms: p50 {statistics.median(lat):.1f} ms, p99 {p99:.1f} ms, "
          f"max {lat[-1]:.1f} ms")

    path = args.file or data_dir() / "dreams-spindles" / "excerpt3.edf"
    if path.is_file():
        got, wall = bench_replay(path)
        typer.echo(f"replay {path.name} at max speed: {got} epochs in {wall:.2f} s after the first "
              f"({got / max(wall, 1e-9):.0f} epochs/s)")
    typer.echo(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

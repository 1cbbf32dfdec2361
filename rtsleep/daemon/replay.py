"""Replay a recording (EDF or store Parquet) as LSL outlets with exact per-sample timestamps.

Public API (stable):

- ``load_channels(path, dataset="edf", include_other=False) -> list[Channel]``: the channels to
  play. EDF goes through the data layer's ``read_recording(dataset, path)`` (ExG in µV); a store
  ``.parquet`` file plays its stored (already preprocessed, model-rate) signals, epoch after epoch.
  ``OTHER`` channels (position, label channels such as the hypnogram) are skipped unless asked.
- ``plan_outlets(source, channels) -> list[OutletPlan]``: one outlet per modality; channels of one
  modality with different rates get one outlet per rate. ``source_id`` is
  ``rtsleep-replay:<file name>:<modality>`` (``...:<modality>:<rate>Hz`` when a modality is
  split), stream name ``<file stem>-<modality>``, type the modality, nominal rate the channel rate,
  format double (samples are bit-exact), channel metadata in ``desc/channels/channel/{label, unit,
  type}`` (LSL/XDF conventions).
- ``PlayerConfig`` + ``play(config, stop=None, ready=None)``: the blocking play loop.
  Sample ``i`` of an outlet carries the LSL timestamp ``t0 + i / fs`` (pushed with
  ``push_chunk(x, timestamp=<time of the chunk's LAST sample>)``), whatever the speed, so a replay
  at 60x or ``max`` yields the same epochs as one in real time. ``speed=None`` is ``max``: no
  pacing (outlets then buffer the whole file for slow consumers). ``start_s`` starts mid-file
  (timestamps stay ``t0 + i / fs``, so a restarted player with the same ``t0`` continues the
  timeline; ``t0`` defaults to "now" minus ``start_s``, so the first pushed sample is stamped
  now); ``loop`` plays forever with ever-increasing sample indices; ``ramp`` appends a
  channel ``ramp`` (type OTHER) holding each sample's index, for timing tests;
  ``jitter_s`` adds uniform noise to every chunk's timestamp (uneven chunk timestamps).
- ``Player(config)``: ``play`` in a separate process (multiprocessing, spawn): ``start(timeout_s)``
  waits until the outlets exist (and have consumers when ``wait_consumers_s`` > 0), ``stop()``,
  ``kill()`` (SIGKILL, a crash), ``join()``; a context manager.
- ``inlet_buffer_for(span_s, speed)``: the ``daemon.inlet_buffer_s`` a daemon reading a replay
  needs so that no sample is dropped (the CLI prints it when the default is too small).
- ``register(app)``: the ``rtsleep replay FILE [--speed N|max] [--loop]`` command.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import multiprocessing.synchronize as mps
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import pylsl
import typer

from rtsleep.daemon.config import DaemonSection
from rtsleep.daemon.inlet import queue_seconds
from rtsleep.data.errors import DataError
from rtsleep.data.recording import Channel, Modality

log = logging.getLogger(__name__)

RAMP_LABEL = "ramp"


def _store_channels(path: Path) -> list[Channel]:
    from rtsleep.data.store import StoredRecording

    rec = StoredRecording(path)
    batch = rec.read(beats=False)
    out: list[Channel] = []
    for sc in rec.meta.channels:
        x = batch.signals[sc.label].astype(np.float64).reshape(-1)  # (n_epochs, S) -> (n_epochs*S,)
        out.append(Channel(sc.label, Modality(sc.modality), sc.sfreq, sc.unit, x))
    return out


def load_channels(path: Path, dataset: str = "edf", include_other: bool = False) -> list[Channel]:
    """Channels of ``path`` to replay (EDF via ``read_recording``, or a store Parquet file)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; give one recording file")
    if not path.is_file():
        raise DataError(path, "no such file")
    if path.suffix.lower() == ".parquet":
        channels = _store_channels(path)
    else:
        from rtsleep.data.readers import read_recording

        channels = read_recording(dataset, path).channels
    if not include_other:
        channels = [c for c in channels if c.modality != Modality.OTHER]
    if not channels:
        raise DataError(path, "no channel to replay")
    return channels


@dataclass(frozen=True)
class OutletPlan:
    """One outlet: channels of one modality at one rate."""

    name: str
    type: str
    source_id: str
    sfreq: float
    labels: tuple[str, ...]
    units: tuple[str, ...]
    types: tuple[str, ...]
    #: ``(n_samples, n_chans)`` float64, in the order of ``labels``.
    data: np.ndarray = field(repr=False)

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])


def plan_outlets(source: str, channels: Sequence[Channel], ramp: bool = False) -> list[OutletPlan]:
    """Group channels by (modality, rate) into outlets; see the module docstring for names."""
    name = Path(source).name
    stem = Path(source).stem
    groups: dict[tuple[Modality, float], list[Channel]] = {}
    for c in channels:
        if c.sfreq <= 0:
            raise DataError(source, f"channel {c.label!r} has no sampling rate")
        groups.setdefault((c.modality, float(c.sfreq)), []).append(c)
    rates: dict[Modality, int] = {}
    for modality, _ in groups:
        rates[modality] = rates.get(modality, 0) + 1
    plans: list[OutletPlan] = []
    for (modality, sfreq), chans in groups.items():
        n = min(c.n_samples for c in chans)
        if any(c.n_samples != n for c in chans):
            log.warning("%s: %s channels differ in length; playing %d samples", source, modality, n)
        cols = [np.asarray(c.data[:n], dtype=np.float64) for c in chans]
        labels = [c.label for c in chans]
        units = [c.unit for c in chans]
        types = [str(modality)] * len(chans)
        if ramp:
            cols.append(np.arange(n, dtype=np.float64))
            labels.append(RAMP_LABEL)
            units.append("")
            types.append(str(Modality.OTHER))
        sid = f"rtsleep-replay:{name}:{modality}"
        if rates[modality] > 1:
            sid += f":{sfreq:g}Hz"
        plans.append(
            OutletPlan(
                name=f"{stem}-{modality}",
                type=str(modality),
                source_id=sid,
                sfreq=sfreq,
                labels=tuple(labels),
                units=tuple(units),
                types=tuple(types),
                data=np.stack(cols, axis=1),  # n_chans x (n,) -> (n, n_chans)
            )
        )
    return plans


def stream_info(plan: OutletPlan) -> pylsl.StreamInfo:
    """The LSL stream description of an outlet (XDF channel metadata in ``desc``)."""
    info = pylsl.StreamInfo(
        plan.name, plan.type, len(plan.labels), plan.sfreq, pylsl.cf_double64, plan.source_id
    )
    desc = info.desc()
    desc.append_child("acquisition").append_child_value("manufacturer", "rtsleep-replay")
    chans = desc.append_child("channels")
    for label, unit, ctype in zip(plan.labels, plan.units, plan.types, strict=True):
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", ctype)
    return info


@dataclass
class PlayerConfig:
    """What and how to play (see the module docstring). Times in s, ``speed`` None = max."""

    path: Path | None = None
    #: In-memory channels instead of a file (tests); ``source`` names them.
    channels: list[Channel] | None = None
    source: str = "synthetic"
    dataset: str = "edf"
    include_other: bool = False
    speed: float | None = 1.0
    loop: bool = False
    t0: float | None = None
    start_s: float = 0.0
    #: Stop after this much file time has been pushed (None: the whole file, or forever if loop).
    duration_s: float | None = None
    #: Wall-clock period of pushes at finite speed; file time per push at max speed.
    chunk_s: float = 0.05
    max_chunk_s: float = 1.0
    ramp: bool = False
    jitter_s: float = 0.0
    seed: int = 0
    #: Wait up to this long for a consumer on every outlet before pushing (0: do not wait).
    wait_consumers_s: float = 0.0


def _plans(config: PlayerConfig) -> list[OutletPlan]:
    if config.channels is not None:
        return plan_outlets(config.source, config.channels, ramp=config.ramp)
    if config.path is None:
        raise ValueError("player config needs a path or channels")
    channels = load_channels(config.path, config.dataset, config.include_other)
    return plan_outlets(str(config.path), channels, ramp=config.ramp)


def play(
    config: PlayerConfig,
    stop: mps.Event | None = None,
    ready: mps.Event | None = None,
    plans: list[OutletPlan] | None = None,
) -> int:
    """Play until the end (or ``stop`` is set); returns the number of chunks pushed.

    At the end the outlets stay open until ``stop`` is set (1 s when there is no ``stop``), so
    consumers receive the last chunks.
    """
    if config.speed is not None and config.speed <= 0:
        raise ValueError(f"speed must be > 0 or None (max), got {config.speed}")
    plans = _plans(config) if plans is None else plans
    file_s = max(p.n_samples / p.sfreq for p in plans)
    span = file_s if config.duration_s is None else config.duration_s
    buffered = 360 if config.speed is not None and config.speed <= 10 else int(span) + 60
    outlets = [pylsl.StreamOutlet(stream_info(p), 0, buffered) for p in plans]
    if config.wait_consumers_s > 0:
        deadline = time.monotonic() + config.wait_consumers_s
        for o, p in zip(outlets, plans, strict=True):
            if not o.wait_for_consumers(max(0.0, deadline - time.monotonic())):
                log.warning("%s: no consumer after %.1f s; playing anyway", p.source_id,
                            config.wait_consumers_s)
    rng = np.random.default_rng(config.seed)
    # by default the first pushed sample is stamped "now"
    t0 = pylsl.local_clock() - config.start_s if config.t0 is None else config.t0
    next_i = [int(round(config.start_s * p.sfreq)) for p in plans]
    end_s = None if (config.loop and config.duration_s is None) else config.start_s + span
    end_i: list[int | None] = []
    for p in plans:
        if end_s is None:
            end_i.append(None)
        else:
            last = int(round(end_s * p.sfreq))
            end_i.append(last if config.loop else min(p.n_samples, last))
    log.info("replay: %d outlets, %.0f s of file, speed %s", len(plans), file_s,
             "max" if config.speed is None else f"{config.speed:g}x")
    if ready is not None:
        ready.set()
    wall0 = time.monotonic()
    pos_s = config.start_s  # file time pushed so far (max speed)
    n_chunks = 0
    while stop is None or not stop.is_set():
        if config.speed is None:
            pos_s += config.max_chunk_s
        else:
            pos_s = config.start_s + (time.monotonic() - wall0) * config.speed
        done = True
        for k, (o, p) in enumerate(zip(outlets, plans, strict=True)):
            due = int(math.floor(pos_s * p.sfreq + 1e-9))
            stop_i = end_i[k]
            if stop_i is not None:
                due = min(due, stop_i)
                done &= due >= stop_i
            else:
                done = False
            if due <= next_i[k]:
                continue
            idx = np.arange(next_i[k], due)  # (m,) sample indices, continuing across loops
            x = p.data[idx % p.n_samples]  # (m, n_chans)
            if config.ramp:
                x[:, -1] = idx
            t_last = t0 + (due - 1) / p.sfreq
            if config.jitter_s > 0:
                t_last += float(rng.uniform(-config.jitter_s, config.jitter_s))
            o.push_chunk(x, timestamp=t_last)
            next_i[k] = due
            n_chunks += 1
        if done:
            break
        if config.speed is not None:
            time.sleep(config.chunk_s)
    # let liblsl hand the last chunks to the consumers before the outlets go away
    if stop is None:
        time.sleep(1.0)
    else:
        stop.wait()
    return n_chunks


def _player_main(config: PlayerConfig, stop: mps.Event, ready: mps.Event) -> None:
    logging.basicConfig(level=logging.WARNING)
    play(config, stop, ready)


class Player:
    """``play(config)`` in a separate process (spawn), for tests and tools."""

    def __init__(self, config: PlayerConfig) -> None:
        self.config = config
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self._proc = ctx.Process(
            target=_player_main, args=(config, self._stop, self._ready), daemon=True
        )

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the process; wait until its outlets exist (and have consumers, if asked)."""
        self._proc.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if not self._proc.is_alive():
                raise RuntimeError(f"player exited with code {self._proc.exitcode}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"player not ready after {timeout_s} s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def is_alive(self) -> bool:
        """Whether the player process is still running."""
        return self._proc.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the player to stop and wait for it (SIGKILL if it does not)."""
        self._stop.set()
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self.kill()

    def kill(self) -> None:
        """SIGKILL the player (a crash: the outlets vanish without goodbye)."""
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5.0)

    def __enter__(self) -> Player:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def inlet_buffer_for(span_s: float, speed: float | None, stall_s: float = 10.0) -> int:
    """``daemon.inlet_buffer_s`` (s) for a daemon reading ``span_s`` s of file played at ``speed``.

    The daemon drains its inlets every round, so liblsl's queue only has to hold what arrives
    while the loop is stalled: ``stall_s`` wall seconds at ``speed``, plus a 60-s margin, at most
    the whole span (plus the margin). At max speed (``None``) the whole span arrives at once.
    """
    whole = int(math.ceil(span_s)) + 60
    if speed is None:
        return whole
    return min(whole, int(math.ceil(speed * stall_s)) + 60)


def parse_speed(value: str) -> float | None:
    """``"max"`` -> None, else a positive float (``"60"``, ``"60x"``)."""
    text = value.strip().lower()
    if text == "max":
        return None
    text = text.removesuffix("x")
    try:
        speed = float(text)
    except ValueError:
        raise typer.BadParameter(f"speed must be a number or 'max', got {value!r}") from None
    if not speed > 0 or not math.isfinite(speed):
        raise typer.BadParameter(f"speed must be a finite number > 0, got {value!r}")
    return speed


def register(app: typer.Typer) -> None:
    """Add ``rtsleep replay``."""

    @app.command()
    def replay(
        file: Annotated[Path, typer.Argument(help="EDF file or store .parquet file to play.")],
        speed: Annotated[str, typer.Option(help="Speed factor (e.g. 1, 60) or 'max'.")] = "1",
        loop: Annotated[bool, typer.Option(help="Start over at the end, forever.")] = False,
        dataset: Annotated[str, typer.Option(help="Reader for EDF files.")] = "edf",
        include_other: Annotated[
            bool, typer.Option(help="Also play OTHER channels (position, label channels).")
        ] = False,
        wait_consumers: Annotated[
            float, typer.Option(help="Wait this many s for a consumer on every outlet.")
        ] = 0.0,
        start: Annotated[
            float, typer.Option(help="Start this many s into the file.", min=0.0)
        ] = 0.0,
    ) -> None:
        """Play a recording as LSL outlets, one per modality, with exact sample timestamps."""
        config = PlayerConfig(
            path=file,
            dataset=dataset,
            include_other=include_other,
            speed=parse_speed(speed),
            loop=loop,
            wait_consumers_s=wait_consumers,
            start_s=start,
        )
        try:
            plans = _plans(config)
        except DataError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        length_s = max(p.n_samples / p.sfreq for p in plans)
        if not start < length_s:  # also inf and nan
            typer.echo(f"error: {file}: --start {start:g} s is not within the recording "
                       f"({length_s:g} s)", err=True)
            raise typer.Exit(1)
        for p in plans:
            typer.echo(f"{p.source_id}: {len(p.labels)} channels at {p.sfreq:g} Hz "
                       f"({', '.join(p.labels)})")
        span_s = length_s - start
        need = inlet_buffer_for(span_s, config.speed)
        live = DaemonSection()
        budget = live.inlet_buffer_mb * 1e6 or None
        # replay outlets carry float64 values (8 bytes)
        if any(queue_seconds(p.sfreq, len(p.labels), 8, live.inlet_buffer_s, budget) < need
               for p in plans):
            typer.echo(f"replay: faster than live; a daemon reading it needs [daemon] "
                       f"inlet_buffer_s >= {need} and inlet_buffer_mb = 0 (the defaults, "
                       f"{live.inlet_buffer_s} s and {live.inlet_buffer_mb:g} MB per stream, "
                       f"do not hold this backlog)")
        try:
            n = play(config, plans=plans)
        except KeyboardInterrupt:
            # a second Ctrl-C while the outlets are torn down would only print noise
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            typer.echo("replay: interrupted")
            return
        except DataError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"replay: done ({n} chunks)")

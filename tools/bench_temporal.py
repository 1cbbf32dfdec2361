"""Benchmark the Mamba temporal module on CPU: selective scans, recurrent step, state size.

Measures, for ``MambaTemporal`` (``--d-model``, ``--n-layers``, d_state 16, d_conv 4, expand 2):

- forward over ``--steps`` tokens for ``--batch`` sequences (no grad), and one training step
  (forward + backward of a mean loss), with the sequential scan and with the chunked scan at
  several chunk sizes;
- with ``--parts scan``: one layer's selective scan alone (same shapes), both scans;
- one recurrent ``step`` for 1 stream and for 64 streams (median and p99 over ``--step-repeats``);
- recurrent state bytes per stream (fp32).

Prints a Markdown table of wall and process-CPU medians. Run it alone: concurrent torch
processes inflate timings several times.

    .venv/bin/python tools/bench_temporal.py --threads 2
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

import torch
import typer

from rtsleep.models.mamba import selective_scan_chunked, selective_scan_sequential
from rtsleep.models.temporal import MambaTemporal, TemporalConfig


def _time(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU times in seconds of ``repeats`` calls after one warm-up call.

    CPU time (all threads of this process) is less sensitive than wall time to other jobs on a
    shared machine, so both are reported.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def _build(d_model: int, n_layers: int, scan: str, chunk_size: int | None) -> MambaTemporal:
    """A temporal module whose layers use the given scan and chunk size."""
    model = MambaTemporal(TemporalConfig(d_model=d_model, n_layers=n_layers, scan=scan))
    for block in model.blocks():
        block.mixer.cfg = replace(block.mixer.cfg, chunk_size=chunk_size)
    return model


Row = tuple[str, str, str]


def _timed_row(name: str, fn: Callable[[], object], repeats: int) -> Row:
    wall, cpu = _time(fn, repeats)
    return (name, f"{statistics.median(wall):.3f} s", f"{statistics.median(cpu):.3f} s")


def _module_rows(
    d_model: int,
    n_layers: int,
    x: torch.Tensor,
    cases: list[tuple[str, str, int | None]],
    repeats: int,
) -> list[Row]:
    """Whole MambaTemporal: forward (no grad) and forward + backward, per scan case."""
    rows = []
    for label, scan, size in cases:
        model = _build(d_model, n_layers, scan, size)

        def forward(model: MambaTemporal = model) -> object:
            with torch.no_grad():
                return model(x)

        def train_step(model: MambaTemporal = model) -> object:
            model.zero_grad(set_to_none=True)
            y, _ = model(x)
            y.square().mean().backward()
            return None

        rows.append(_timed_row(f"module forward, {label}", forward, repeats))
        rows.append(_timed_row(f"module forward + backward, {label}", train_step, repeats))
    return rows


def _scan_rows(
    batch: int, steps: int, d_inner: int, cases: list[tuple[str, str, int | None]], repeats: int
) -> list[Row]:
    """One selective scan alone (one layer's shapes), forward and forward + backward."""
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "u": torch.randn(batch, steps, d_inner, generator=gen),
        "delta": torch.randn(batch, steps, d_inner, generator=gen),
        "A": -torch.exp(torch.randn(d_inner, 16, generator=gen)),
        "B": torch.randn(batch, steps, 16, generator=gen),
        "C": torch.randn(batch, steps, 16, generator=gen),
        "D": torch.randn(d_inner, generator=gen),
        "z": torch.randn(batch, steps, d_inner, generator=gen),
        "delta_bias": torch.randn(d_inner, generator=gen),
    }
    rows = []
    for label, scan, size in cases:

        def run(scan: str = scan, size: int | None = size, **tensors: Any) -> torch.Tensor:
            if scan == "chunked":
                return selective_scan_chunked(**tensors, chunk_size=size)[0]
            return selective_scan_sequential(**tensors)[0]

        def forward(run: Callable[..., torch.Tensor] = run) -> object:
            with torch.no_grad():
                return run(**inputs)

        def train_step(run: Callable[..., torch.Tensor] = run) -> object:
            leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
            run(**leaves).square().mean().backward()
            return None

        rows.append(_timed_row(f"scan only, forward, {label}", forward, repeats))
        rows.append(_timed_row(f"scan only, forward + backward, {label}", train_step, repeats))
    return rows


def _step_rows(d_model: int, n_layers: int, step_repeats: int) -> list[Row]:
    """One recurrent step for 1 and 64 streams, and the state size."""
    rows = []
    model = MambaTemporal(TemporalConfig(d_model=d_model, n_layers=n_layers)).eval()
    for n_streams in (1, 64):
        state = model.init_state(n_streams)
        x_t = torch.randn(n_streams, d_model)

        def one_step(state: dict[str, torch.Tensor] = state, x_t: torch.Tensor = x_t) -> object:
            with torch.no_grad():
                return model.step(x_t, state)

        wall, cpu = _time(one_step, step_repeats)
        wall.sort()
        p99 = wall[min(len(wall) - 1, int(0.99 * len(wall)))]
        rows.append(
            (
                f"one recurrent step, {n_streams} stream(s)",
                f"{1e3 * statistics.median(wall):.3f} ms (p99 {1e3 * p99:.3f} ms)",
                f"{1e3 * statistics.median(cpu):.3f} ms",
            )
        )
    rows.append(("recurrent state per stream (fp32)", f"{model.state_nbytes(1):,} bytes", ""))
    return rows


def main(
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    d_model: Annotated[int, typer.Option(help="model width")] = 128,
    n_layers: Annotated[int, typer.Option(help="Mamba blocks")] = 2,
    batch: Annotated[int, typer.Option(help="sequences per training batch")] = 16,
    steps: Annotated[int, typer.Option(help="tokens (epochs) per sequence")] = 1000,
    repeats: Annotated[int, typer.Option(help="timed repeats per scan case")] = 3,
    chunk_sizes: Annotated[str, typer.Option(help="comma-separated chunk sizes")] = "16,32,64",
    step_repeats: Annotated[int, typer.Option(help="timed recurrent steps")] = 500,
    parts: Annotated[str, typer.Option(help="comma-separated: module, scan, step")] = "module,step",
) -> None:
    """Print the temporal-module benchmark as a Markdown table."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    chosen = {p.strip() for p in parts.split(",") if p.strip()}
    unknown = chosen - {"module", "scan", "step"}
    if unknown:
        raise typer.BadParameter(f"unknown parts {sorted(unknown)}", param_hint="--parts")
    sizes = [int(s) for s in chunk_sizes.split(",") if s]
    cases: list[tuple[str, str, int | None]] = [("sequential", "sequential", None)]
    cases += [(f"chunked K={k}", "chunked", k) for k in sizes]
    rows: list[Row] = []
    if "module" in chosen:
        x = torch.randn(batch, steps, d_model)
        rows += _module_rows(d_model, n_layers, x, cases, repeats)
    if "scan" in chosen:
        rows += _scan_rows(batch, steps, 2 * d_model, cases, repeats)
    if "step" in chosen:
        rows += _step_rows(d_model, n_layers, step_repeats)

    typer.echo(
        f"d_model {d_model}, d_state 16, d_conv 4, expand 2, {n_layers} layers, batch {batch}, "
        f"{steps} steps, {threads} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    typer.echo("")
    typer.echo("| workload | wall (median) | process CPU (median) |")
    typer.echo("|---|---|---|")
    for name, wall_s, cpu_s in rows:
        typer.echo(f"| {name} | {wall_s} | {cpu_s} |")


if __name__ == "__main__":
    typer.run(main)

"""Benchmark the shared models: streaming step (1 bed, 64 beds), full-night forward, training
throughput, state size and parameter counts. Prints a Markdown table for docs/benchmarks.md.

    .venv/bin/python tools/bench_models.py                    # CPU, 2 threads, default preset
    .venv/bin/python tools/bench_models.py --device cuda      # on a GPU machine

Timings are medians after warm-up (p99 for the one-bed step), wall clock by default. Run it
alone: other processes on the same cores inflate every figure, 2-thread runs worst of all (each
parallel region waits for a descheduled thread). On a shared machine, ``--threads 1 --clock cpu``
(process CPU time of a single-threaded run) estimates the time on one idle core.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import typer

from rtsleep.data.recording import EXG_MODALITIES
from rtsleep.models import SleepNet, SleepNetConfig

log = logging.getLogger("bench_models")
M = len(EXG_MODALITIES)
PRESETS = ("default", "tiny", "paper")


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _timeit(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds (by the selected clock) of ``reps`` calls after ``warmup`` calls."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t0 = _clock()
        fn()
        sync()
        out.append(_clock() - t0)
    return out


def _fmt(n: int) -> str:
    """``1234567 -> "1 234 567"``."""
    return f"{n:,}".replace(",", " ")


def _n_params(cfg: SleepNetConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in SleepNet(cfg).parameters())


def bench(preset: str, device: torch.device, night: int, train_t: int, train_b: int) -> list[str]:
    """Run every case; returns Markdown table rows ``| case | value | target |``."""
    cfg = getattr(SleepNetConfig, preset)()
    torch.manual_seed(0)
    net = SleepNet(cfg).to(device).eval()
    s = net.n_times
    rows = []

    def epoch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(b, M, s, device=device)  # (B, M, S)
        return x, torch.ones(b, M, dtype=torch.bool, device=device)

    with torch.inference_mode():
        x1, m1 = epoch(1)
        state1 = net.init_state(1)
        t = _timeit(lambda: net.step(x1, m1, state1), reps=200, warmup=20, device=device)
        p99 = sorted(t)[int(0.99 * len(t)) - 1]
        rows.append(
            f"| one streaming step, 1 bed (4 modalities) | {statistics.median(t) * 1e3:.2f} ms "
            f"(p99 {p99 * 1e3:.2f}) | <= 10 ms |"
        )
        x1e, m1e = x1.clone(), m1.clone()
        m1e[:, 1:] = False
        t = _timeit(lambda: net.step(x1e, m1e, state1), reps=200, warmup=20, device=device)
        rows.append(
            f"| one streaming step, 1 bed (EEG only) | {statistics.median(t) * 1e3:.2f} ms | |"
        )
        x64, m64 = epoch(64)
        state64 = net.init_state(64)
        t = _timeit(lambda: net.step(x64, m64, state64), reps=10, warmup=2, device=device)
        rows.append(
            f"| one streaming step, 64 beds | {statistics.median(t) * 1e3:.1f} ms | <= 100 ms |"
        )
        xn = torch.randn(1, night, M, s, device=device)  # (1, T, M, S)
        mn = torch.ones(1, night, M, dtype=torch.bool, device=device)
        t = _timeit(lambda: net(xn, mn), reps=3, warmup=1, device=device)
        rows.append(
            f"| full-night forward, {night} epochs | {statistics.median(t):.2f} s | <= 2 s |"
        )

    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    xt = torch.randn(train_b, train_t, M, s, device=device)  # (B, T, M, S)
    mt = torch.ones(train_b, train_t, M, dtype=torch.bool, device=device)
    stage = torch.randint(0, 5, (train_b, train_t), device=device)
    flags = torch.randint(0, 2, (train_b, train_t), device=device).float()

    def train_step() -> None:
        out, _ = net(xt, mt)
        loss = (
            F.cross_entropy(out.stage_logits.flatten(0, 1), stage.flatten())
            + F.binary_cross_entropy_with_logits(out.apnea_logit, flags)
            + F.binary_cross_entropy_with_logits(out.hypopnea_logit, flags)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = _timeit(train_step, reps=3, warmup=1, device=device)
    rate = train_b * train_t / statistics.median(t)
    rows.append(
        f"| training (fwd + bwd + AdamW), {train_b} x {train_t} epochs | {rate:.0f} epochs/s | |"
    )
    rows.append(f"| recurrent state per bed | {_fmt(net.state_nbytes(1))} B | <= 100 kB |")
    return rows


def main(
    preset: str = typer.Option("default", help=f"One of {PRESETS}."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    night: int = typer.Option(1000, help="Epochs in the full-night forward."),
    train_t: int = typer.Option(64, help="Sequence length of a training batch."),
    train_b: int = typer.Option(4, help="Sequences per training batch."),
    clock: str = typer.Option("wall", help="wall (perf_counter) or cpu (process CPU time)."),
) -> None:
    """Print the Markdown table of the model benchmarks."""
    global _clock
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if clock not in CLOCKS:
        raise typer.BadParameter(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    _clock = CLOCKS[clock]
    if preset not in PRESETS:
        raise typer.BadParameter(f"preset must be one of {PRESETS}, got {preset!r}")
    torch.set_num_threads(threads)
    dev = torch.device(device)
    rows = bench(preset, dev, night, train_t, train_b)
    counts = ", ".join(
        f"{name} {_fmt(_n_params(getattr(SleepNetConfig, name)()))}" for name in PRESETS
    )
    dual = _n_params(SleepNetConfig(encoder="dual_branch"))
    typer.echo(
        f"preset {preset}, device {dev}, {threads} threads, {clock} clock, "
        f"torch {torch.__version__}"
    )
    typer.echo("")
    typer.echo("| case | measured | target |")
    typer.echo("|---|---|---|")
    for row in rows:
        typer.echo(row)
    typer.echo(f"| parameters | {counts}; dual-branch default {_fmt(dual)} | |")


if __name__ == "__main__":
    typer.run(main)

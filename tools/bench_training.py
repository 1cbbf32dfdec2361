"""Benchmark offline training throughput on CPU: seconds per step of each pretraining method and of
fine-tuning, with the default (CPU daemon) model and the default loop sizes.

Builds a small synthetic store in a temporary folder (stage-shaped synthetic signals, the
mechanics are what is timed), runs each objective for ``--steps`` steps through the real
``pretrain`` / ``finetune`` functions and reports the median wall time per step after the first
(measured with a step hook), plus epochs per second. Prints a Markdown table. Run it alone:
concurrent torch processes inflate timings several times.

    .venv/bin/python tools/bench_training.py --threads 2 --steps 6
    .venv/bin/python tools/bench_training.py --threads 1 --clock cpu   # on a shared machine
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from torch import Tensor, nn

from offline.config import ModelSection
from offline.finetune import FinetuneConfig, finetune
from offline.pretrain.run import PretrainConfig, pretrain
from offline.train_loop import LoopConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_psg import synthetic_store  # noqa: E402


class _StepTimer:
    def __init__(self, clock: str) -> None:
        self.stamps: list[float] = []
        self.clock = time.process_time if clock == "cpu" else time.perf_counter

    def __call__(self, step: int, _obj: nn.Module, _loss: Tensor) -> None:
        self.stamps.append(self.clock())

    def per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:], strict=True)]
        return statistics.median(gaps[1:] if len(gaps) > 2 else gaps)


def main(
    steps: Annotated[int, typer.Option(help="Steps per objective.")] = 6,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    preset: Annotated[str, typer.Option(help="Model preset: tiny, default, paper.")] = "default",
    clock: Annotated[
        str, typer.Option(help="wall, or cpu (process CPU time: one idle core at --threads 1).")
    ] = "wall",
) -> None:
    """Time every objective; print a Markdown table."""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "store", n_recordings=3, n_epochs=80)
        loop = LoopConfig(steps=steps, threads=threads, progress=False, log_every=10_000)
        model = ModelSection(preset)
        for method in ("neuronet", "synthsleepnet", "mc2"):
            cfg = PretrainConfig(method=method, model=model,
                                 loop=dataclasses.replace(loop, batch_size=16))
            timer = _StepTimer(clock)
            pretrain(cfg, store, Path(tmp) / method, hooks=[timer])
            t = cfg.mc2.seq_len if method == "mc2" else 1
            per = timer.per_step()
            rows.append((f"pretrain {method}", f"16 x {t} epochs", per, 16 * t / per))
        ft = FinetuneConfig(model=model, loop=dataclasses.replace(loop, batch_size=4))
        timer = _StepTimer(clock)
        finetune(ft, store, Path(tmp) / "ft", hooks=[timer])
        mean_len = (ft.data.min_len + ft.data.max_len) / 2
        per = timer.per_step()
        rows.append(("finetune stage", f"4 lanes x {ft.data.min_len}-{ft.data.max_len} epochs",
                     per, 4 * mean_len / per))
    typer.echo(f"\nmodel preset `{preset}`, {threads} threads, {clock} clock, "
               f"torch {torch.__version__}, {platform.processor() or platform.machine()}\n")
    typer.echo("| objective | batch | s/step | epochs/s |")
    typer.echo("|---|---|---|---|")
    for name, batch, per, eps in rows:
        typer.echo(f"| {name} | {batch} | {per:.2f} | {eps:.0f} |")


if __name__ == "__main__":
    typer.run(main)

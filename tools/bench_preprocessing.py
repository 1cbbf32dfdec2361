"""Benchmark the causal preprocessing: one night of one channel through ``ChannelPipeline``.

Feeds ``--hours`` of a synthetic EEG-like channel at ``--sfreq`` Hz (default: 8 h at 256 Hz) through
the default EEG pipeline (band-pass, polyphase resampling to 100 Hz, scaling) in two ways:

- epoch by epoch (30 s of raw samples per call), the unit the daemon and ingest use;
- in one call over the whole night.

Prints a Markdown table of input samples/s, ms per epoch and the wall time per night, and checks
that both ways give bit-identical outputs. Timings on a shared machine are noisy.

    .venv/bin/python tools/bench_preprocessing.py --hours 8 --sfreq 256
"""

from __future__ import annotations

import platform
import time
from typing import Annotated

import numpy as np
import typer

from rtsleep.data.preprocessing import ChannelPipeline, PreprocessSpec
from rtsleep.data.recording import Modality


def main(
    hours: Annotated[float, typer.Option(help="Length of the synthetic night in hours.")] = 8.0,
    sfreq: Annotated[float, typer.Option(help="Input sampling rate in Hz.")] = 256.0,
    modality: Annotated[str, typer.Option(help="Modality whose default spec is used.")] = "EEG",
    repeats: Annotated[int, typer.Option(help="Runs per mode; the best is reported.")] = 3,
) -> None:
    """Time the default pipeline of ``modality`` on ``hours`` of signal at ``sfreq`` Hz."""
    spec = PreprocessSpec.default().for_modality(Modality(modality.upper()))
    per_epoch = int(round(30 * sfreq))
    n_epochs = int(hours * 3600 // 30)
    rng = np.random.default_rng(0)
    x = 20.0 * rng.standard_normal(n_epochs * per_epoch)  # (n,) µV

    def by_epoch() -> np.ndarray:
        pipe = ChannelPipeline(spec, sfreq)
        return np.concatenate(
            [pipe.process(x[k * per_epoch : (k + 1) * per_epoch]) for k in range(n_epochs)]
        )

    def one_call() -> np.ndarray:
        return ChannelPipeline(spec, sfreq).process(x)

    results: dict[str, tuple[float, np.ndarray]] = {}
    for name, fn in (("epoch by epoch", by_epoch), ("one call", one_call)):
        best, out = float("inf"), np.zeros(0)
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        results[name] = (best, out)
    identical = np.array_equal(results["epoch by epoch"][1], results["one call"][1])
    pipe = ChannelPipeline(spec, sfreq)
    typer.echo(
        f"{spec.modality} {sfreq:g} Hz -> {spec.sfreq:g} Hz (up {pipe.up}, down {pipe.down}), "
        f"{hours:g} h = {n_epochs} epochs, {len(x)} samples; {platform.processor() or 'cpu'}; "
        f"outputs identical: {identical}"
    )
    typer.echo("| mode | input samples/s | ms per epoch | s per night |")
    typer.echo("|---|---|---|---|")
    for name, (seconds, _) in results.items():
        typer.echo(
            f"| {name} | {len(x) / seconds / 1e6:.2f} M | {1e3 * seconds / n_epochs:.2f} | "
            f"{seconds:.2f} |"
        )
    if not identical:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)

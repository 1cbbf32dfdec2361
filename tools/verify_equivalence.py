"""Check that streaming equals batch scoring for the default multimodal model.

Builds ``SleepNetConfig.default()`` (4 modalities, random weights with a fixed seed), scores a
random ``--epochs``-long night with modalities dropping in and out, once with ``forward`` over the
whole sequence and once epoch by epoch with ``step``, and prints the largest absolute difference
over stage logits/probabilities, apnea/hypopnea probabilities and the temporal embedding. The
last line reads ``max_abs_diff=<value>``; the exit code is 1 when it exceeds ``--tol``.

    .venv/bin/python tools/verify_equivalence.py            # fp32, 2000 epochs, tol 1e-5
    .venv/bin/python tools/verify_equivalence.py --dtype float64 --tol 1e-10
"""

from __future__ import annotations

import logging
import time

import torch
import typer

from rtsleep.data.recording import EXG_MODALITIES
from rtsleep.models import SleepNet, SleepNetConfig

log = logging.getLogger("verify_equivalence")
FIELDS = ("stage_logits", "stage_probs", "apnea_prob", "hypopnea_prob", "embedding")


def max_abs_diff(epochs: int, dtype: torch.dtype, seed: int, beds: int) -> float:
    """Largest |forward - step| over all output fields for a random night of ``epochs``."""
    torch.manual_seed(seed)
    net = SleepNet(SleepNetConfig.default()).to(dtype).eval()
    m, s = len(EXG_MODALITIES), net.n_times
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(beds, epochs, m, s, generator=g, dtype=dtype)  # (B, T, M, S)
    mask = torch.rand(beds, epochs, m, generator=g) > 0.1  # (B, T, M)
    x[~mask] = float("nan")  # absent modalities must never be read
    with torch.inference_mode():
        t0 = time.perf_counter()
        seq, _ = net(x, mask)
        t1 = time.perf_counter()
        state = net.init_state(beds, dtype=dtype)
        worst = 0.0
        for i in range(epochs):
            out = net.step(x[:, i], mask[:, i], state)
            for f in FIELDS:
                diff = (getattr(out, f) - getattr(seq, f)[:, i]).abs().max()
                worst = max(worst, float(diff))
        t2 = time.perf_counter()
    log.info("forward %.2f s, %d steps %.2f s", t1 - t0, epochs, t2 - t1)
    return worst


def main(
    epochs: int = typer.Option(2000, help="Epochs in the night."),
    dtype: str = typer.Option("float32", help="float32 or float64."),
    tol: float = typer.Option(1e-5, help="Largest allowed difference."),
    seed: int = typer.Option(0, help="Seed of the weights and inputs."),
    beds: int = typer.Option(1, help="Beds scored side by side."),
    threads: int = typer.Option(1, help="torch CPU threads (1: robust on shared cores)."),
) -> None:
    """Print ``max_abs_diff=<value>`` for forward vs step of the default model."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(threads)
    dt = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
    if dt is None:
        raise typer.BadParameter(f"dtype must be float32 or float64, got {dtype!r}")
    worst = max_abs_diff(epochs, dt, seed, beds)
    typer.echo(f"max_abs_diff={worst:.3e}")
    if not worst <= tol:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)

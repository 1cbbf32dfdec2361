"""``rtsleep-train ingest``: read PSG archives and write one store file per recording.

Every PATH (a file or a folder) is expanded into recordings by the dataset's reader
(:func:`rtsleep.data.readers.list_sources`); each recording is read, preprocessed and labelled, and
written atomically to ``STORE/<dataset>/<recording id>.parquet`` (see :mod:`rtsleep.data.store`).

Bad input never leaves partial output: a recording that fails is reported as one line naming the
file and the problem, the others are still ingested, and the command exits non-zero. A store
folder this command created is removed again when nothing could be written into it.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from offline.clihelp import help_text
from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.labels import DEFAULT_MIN_OVERLAP_S
from rtsleep.data.readers import DATASETS, list_sources, read_recording
from rtsleep.data.recording import Modality
from rtsleep.data.store import write_recording

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """Store files written and ``(source, one-line error)`` failures, in input order."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    n_epochs: int = 0


def parse_modalities(text: str) -> tuple[Modality, ...]:
    """``"EEG,EOG"`` -> modalities; ``""`` or ``"none"`` -> none; bad names -> ``ValueError``."""
    names = [t.strip().upper() for t in text.replace(" ", ",").split(",") if t.strip()]
    if names == ["NONE"]:
        return ()
    known = [m.value for m in Modality]
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown modality {', '.join(bad)} (known: {', '.join(known)})")
    return tuple(Modality(n) for n in names)


def load_channel_map(path: Path) -> ChannelMap:
    """A TOML file of ``"<channel label>" = "<modality>"`` lines -> ``ChannelMap``."""
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
        return ChannelMap.from_dict({str(k): str(v) for k, v in table.items()})
    except (OSError, tomllib.TOMLDecodeError, ValueError, TypeError) as err:
        raise DataError(path, f"bad channel map ({err})") from err


def _remove_if_created_and_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty, or not there


def ingest_paths(
    paths: list[Path],
    dataset: str,
    out: Path,
    *,
    require: tuple[Modality, ...] = (Modality.EEG,),
    channel_map: ChannelMap | None = None,
    min_overlap_s: float = DEFAULT_MIN_OVERLAP_S,
    progress: bool = True,
) -> IngestReport:
    """Ingest every recording under ``paths`` into the store folder ``out``.

    ``require``: modalities a recording with signals must have (label-only recordings are exempt).
    Errors of single recordings are collected in the report (nothing of theirs is written); an
    unknown dataset raises ``DataError``.
    """
    if dataset not in DATASETS:
        raise DataError(dataset, f"unknown dataset (known: {', '.join(DATASETS)})")
    if out.exists() and not out.is_dir():
        raise DataError(out, "store path exists and is not a folder")
    created = [p for p in (out / dataset, out, *out.parents) if not p.exists()]
    report = IngestReport()
    sources: list[Path] = []
    for path in paths:
        try:
            found = list_sources(dataset, path)  # DataError for a missing path
            if not found:
                raise DataError(path, f"no {dataset} recording found")
            sources.extend(found)
        except DataError as err:
            report.failed.append((str(path), str(err)))
    seen: dict[str, Path] = {}
    bar = tqdm(sources, desc=f"ingest {dataset}", unit="rec", file=sys.stderr,
               disable=not progress)
    try:
        for source in bar:
            bar.set_postfix_str(source.name, refresh=False)
            try:
                rec = read_recording(dataset, source, channel_map)
                if rec.id in seen:
                    raise DataError(source, f"recording id {rec.id!r} already read from "
                                    f"{seen[rec.id]} in this run")
                written, n = write_recording(rec, out, require=require,
                                             min_overlap_s=min_overlap_s)
                seen[rec.id] = source
                report.written.append(written)
                report.n_epochs += n
            except DataError as err:
                report.failed.append((str(source), str(err)))
            except Exception as err:  # noqa: BLE001 - one bad file must not stop a folder
                # Reader bugs or unexpected formats: still one line, naming the file.
                log.debug("unexpected error on %s", source, exc_info=True)
                report.failed.append((str(source), f"{source}: {type(err).__name__}: {err}"))
    finally:
        bar.close()
        _remove_if_created_and_empty(created)
    return report


def ingest_command(
    paths: Annotated[list[Path], typer.Argument(help="Recording files or folders.")],
    dataset: Annotated[
        str, typer.Option("--dataset", help=f"Source format: {', '.join(DATASETS)}.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Store folder (created if missing).")],
    require: Annotated[
        str,
        typer.Option(
            "--require",
            help="Modalities a recording with signals must have, comma-separated ('none': none).",
        ),
    ] = "EEG",
    channel_map_file: Annotated[
        Path | None,
        typer.Option("--channel-map",
                     help="TOML of 'LABEL = MODALITY' overrides (\"EEG Fpz-Cz\" = \"EEG\")."),
    ] = None,
    min_overlap_s: Annotated[
        float, typer.Option("--min-overlap", help="Seconds an event must overlap an epoch.")
    ] = DEFAULT_MIN_OVERLAP_S,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Ingest PSG archives into a Parquet store (one file per recording, one row per epoch).

    A recording already in the store is replaced. Failed recordings are listed at the end (exit
    1); nothing of theirs is written.
    """
    if dataset not in DATASETS:
        typer.echo(f"error: unknown dataset {dataset!r} (known: {', '.join(DATASETS)})", err=True)
        raise typer.Exit(2)
    if not min_overlap_s >= 0:
        typer.echo(f"error: --min-overlap must be >= 0 s, got {min_overlap_s:g}", err=True)
        raise typer.Exit(2)
    try:
        needed = parse_modalities(require)
        cmap = load_channel_map(channel_map_file) if channel_map_file is not None else None
        report = ingest_paths(
            paths, dataset, out, require=needed, channel_map=cmap, min_overlap_s=min_overlap_s,
            progress=progress,
        )
    except (DataError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    total = len(report.written) + len(report.failed)
    if report.written:
        typer.echo(
            f"{out}: {len(report.written)} of {total} recordings ingested "
            f"({report.n_epochs} epochs)"
        )
    if report.failed:
        if total == 1:
            typer.echo(f"error: {report.failed[0][1]}", err=True)
        else:
            typer.echo(f"{len(report.failed)} of {total} failed:", err=True)
            for _, msg in report.failed:
                typer.echo(f"  {msg}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``ingest`` to the ``rtsleep-train`` app."""
    app.command("ingest", help=help_text(ingest_command.__doc__))(ingest_command)

"""``rtsleep-train inspect``: epochs, channels and label counts per recording of a store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from offline.clihelp import help_text
from rtsleep.data.errors import DataError
from rtsleep.data.recording import STAGE_NAMES, Stage
from rtsleep.data.store import FLAG_TYPES, StoredRecording, open_store

#: Flags shown by default (the per-type apnea flags are in --json).
SHOWN_FLAGS: tuple[str, ...] = ("apnea", "hypopnea", "apnea_hypopnea", "arousal", "desaturation")


def summarize(stored: StoredRecording) -> dict[str, Any]:
    """Counts of one stored recording: epochs, channels, stages and flagged epochs per flag."""
    meta = stored.meta
    labels = stored.read_labels()
    stages = labels["stage"].astype(np.int64)
    stage_counts = {name: int(np.sum(stages == i)) for i, name in enumerate(STAGE_NAMES)}
    stage_counts["unscored"] = int(np.sum(stages == int(Stage.UNSCORED)))
    out: dict[str, Any] = {
        "dataset": meta.dataset,
        "recording": meta.recording_id,
        "subject": meta.subject,
        "path": str(stored.path),
        "epochs": meta.n_epochs,
        "channels": [
            {"label": c.label, "modality": c.modality, "role": c.role, "sfreq": c.sfreq}
            for c in meta.channels
        ],
        "stages": stage_counts if meta.has_stages else None,
        "flagged_epochs": {f: int(labels[f].sum()) for f in FLAG_TYPES},
        "source_events": meta.event_counts,
    }
    if meta.has_minute_labels:
        minute = labels["minute_label"]
        out["minute_label_epochs"] = {
            "apnea": int(np.sum(minute == 1)), "normal": int(np.sum(minute == 0)),
        }
    if meta.has_beats:
        batch = stored.read(channels=[], beats=True)
        out["beats"] = int(sum(len(b) for b in batch.beat_t or []))
    return out


def format_summary(s: dict[str, Any]) -> list[str]:
    """Human-readable lines for one :func:`summarize` result."""
    minutes = s["epochs"] * 0.5
    lines = [f"{s['dataset']}/{s['recording']}: {s['epochs']} epochs ({minutes:g} min), "
             f"subject {s['subject']}"]
    if s["channels"]:
        chans = ", ".join(
            f"{c['label']} ({c['modality']}, {c['sfreq']:g} Hz)" for c in s["channels"]
        )
        lines.append(f"  channels: {chans}")
    else:
        lines.append("  channels: none (labels only)")
    if s["stages"] is not None:
        lines.append("  stages: " + ", ".join(f"{k} {v}" for k, v in s["stages"].items()))
    else:
        lines.append("  stages: none (no hypnogram)")
    flagged = s["flagged_epochs"]
    events = ", ".join(f"{f} {flagged[f]}" for f in SHOWN_FLAGS)
    lines.append(f"  events (epochs flagged): {events}")
    if "minute_label_epochs" in s:
        m = s["minute_label_epochs"]
        lines.append(f"  minute labels (epochs): apnea {m['apnea']}, normal {m['normal']}")
    if "beats" in s:
        lines.append(f"  beats: {s['beats']}")
    return lines


def inspect_command(
    store: Annotated[Path, typer.Argument(help="Store folder or one store file.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show epochs, channels and label counts per recording of a store."""
    try:
        reader = open_store(store)
    except DataError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if not len(reader):
        typer.echo(f"error: {store}: no store files (*.parquet) found", err=True)
        raise typer.Exit(1)
    failed = 0
    total_epochs = 0
    for path in reader.paths():
        try:
            s = summarize(StoredRecording(path))
        except DataError as err:
            typer.echo(f"error: {err}", err=True)
            failed += 1
            continue
        total_epochs += s["epochs"]
        if as_json:
            typer.echo(json.dumps(s, sort_keys=True))
        else:
            for line in format_summary(s):
                typer.echo(line)
    if not as_json:
        n = len(reader) - failed
        typer.echo(f"total: {n} recordings, {total_epochs} epochs")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``inspect`` to the ``rtsleep-train`` app."""
    app.command("inspect", help=help_text(inspect_command.__doc__))(inspect_command)

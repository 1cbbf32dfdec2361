"""MIT-BIH Polysomnographic Database (slpdb): ``.st`` WFDB annotations (+ signals when present).

One ``.st`` annotation per 30-s epoch, at the epoch's first sample (the first one at sample 1).
Its ``aux_note`` holds a stage token, then event tokens: ``"2 OA"``, ``"W"``, ``"3 HA X"``.
Epoch index = ``round(sample / (30 fs))``; epochs without an annotation are ``UNSCORED``.

Stages: ``W``, ``1``, ``2``, ``3``/``4`` (N3), ``R``; ``MT`` and ``M`` (movement) are unscored.
Events (onset = epoch start, duration 30 s: the source scores per epoch):
``H`` hypopnea, ``HA`` hypopnea + arousal, ``OA`` obstructive apnea, ``X`` obstructive apnea +
arousal, ``CA`` central apnea, ``CAA`` central apnea + arousal, ``A`` arousal, ``LA`` leg movement
+ arousal (the arousal is kept), ``L``/``LL``/... leg movements (no event type; not kept).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.readers.common import require_file, sha256_files
from rtsleep.data.readers.wfdb_io import read_annotation, read_header, read_signals
from rtsleep.data.recording import EPOCH_S, Event, EventType, Recording, Stage

log = logging.getLogger(__name__)

SLPDB_STAGES: dict[str, Stage] = {
    "W": Stage.W,
    "1": Stage.N1,
    "2": Stage.N2,
    "3": Stage.N3,
    "4": Stage.N3,
    "R": Stage.REM,
    "MT": Stage.UNSCORED,
    "M": Stage.UNSCORED,
}

SLPDB_EVENTS: dict[str, tuple[EventType, ...]] = {
    "H": (EventType.HYPOPNEA,),
    "HA": (EventType.HYPOPNEA, EventType.AROUSAL),
    "OA": (EventType.APNEA_OBSTRUCTIVE,),
    "X": (EventType.APNEA_OBSTRUCTIVE, EventType.AROUSAL),
    "CA": (EventType.APNEA_CENTRAL,),
    "CAA": (EventType.APNEA_CENTRAL, EventType.AROUSAL),
    "A": (EventType.AROUSAL,),
    "LA": (EventType.AROUSAL,),
    "L": (),
    "LL": (),
    "LLL": (),
    "LLLL": (),
}
"""Event token -> event types it implies (leg movements have none)."""


def list_slpdb_sources(path: Path) -> list[Path]:
    """``.st`` annotation files under ``path`` (one per record), sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "not found")
    return sorted(p for p in path.rglob("*.st") if p.is_file())


def read_slpdb_tokens(source: Path) -> tuple[list[tuple[int, list[str]]], int, float]:
    """``([(epoch, tokens)], n_epochs, fs)`` from ``slpXX.st`` and its header.

    ``n_epochs`` is the number of complete 30-s epochs of the recording (header length).
    Annotations past the end, two annotations for one epoch, or an empty note are ``DataError``.
    """
    require_file(source)
    record = source.with_suffix("")
    header = read_header(record)
    ann = read_annotation(record, source.suffix.lstrip("."))
    fs = float(header.fs)
    per_epoch = EPOCH_S * fs
    n_epochs = int(header.sig_len // per_epoch)
    out: list[tuple[int, list[str]]] = []
    seen: set[int] = set()
    notes = ann.aux_note or [""] * len(ann.sample)
    for sample, note in zip(ann.sample, notes, strict=True):
        k = int(round(sample / per_epoch))
        tokens = note.replace("\x00", " ").split()
        if not tokens:
            raise DataError(source, f"empty annotation at sample {sample}")
        if k >= n_epochs:
            raise DataError(
                source,
                f"annotation at sample {sample} (epoch {k}) is past the recording's "
                f"{n_epochs} epochs",
            )
        if k in seen:
            raise DataError(source, f"two annotations for epoch {k} (sample {sample})")
        seen.add(k)
        out.append((k, tokens))
    return out, n_epochs, fs


def read_slpdb(source: Path, channel_map: ChannelMap | None = None) -> Recording:
    """One slpdb record: stages and events from ``.st``, signals if the ``.dat`` is present."""
    annotations, n_epochs, _ = read_slpdb_tokens(source)
    stages = np.full(n_epochs, Stage.UNSCORED, dtype=np.int8)
    events: list[Event] = []
    ignored: Counter[str] = Counter()
    for k, tokens in annotations:
        stage_token, *event_tokens = tokens
        if stage_token not in SLPDB_STAGES:
            raise DataError(source, f"unknown stage token {stage_token!r} in epoch {k}")
        stages[k] = int(SLPDB_STAGES[stage_token])
        for token in event_tokens:
            if token not in SLPDB_EVENTS:
                ignored[token] += 1
                continue
            for etype in SLPDB_EVENTS[token]:
                events.append(Event(k * EPOCH_S, EPOCH_S, etype, token))
    if ignored:
        log.warning("%s: unknown event tokens ignored: %s", source, dict(ignored))
    record = source.with_suffix("")
    channels = read_signals(record, channel_map)
    hea = Path(f"{record}.hea")
    return Recording(
        id=record.name,
        dataset="slpdb",
        subject=record.name,
        source=source,
        channels=channels,
        stages=stages,
        events=events,
        source_sha256=sha256_files(source, hea),
        duration_hint_s=n_epochs * EPOCH_S,
    )

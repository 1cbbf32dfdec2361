"""Epoch labelling: stage annotations -> per-epoch stages, events -> per-epoch flags.

Epochs are 30 s long and aligned to the recording start: epoch ``k`` covers ``[30 k, 30 k + 30)``.

**Events** (:func:`event_epoch_flags`): an event marks every epoch it overlaps by at least
``min_overlap_s`` seconds (default :data:`DEFAULT_MIN_OVERLAP_S` = 1 s). An event shorter than
``min_overlap_s`` needs to overlap by its whole duration instead, and a zero-duration (point)
event marks the epoch that contains its onset, so no event ever vanishes. This replaces the
``round(start / 30) .. round(end / 30)`` rule of the seed code, which drops a short event that does
not cross a rounding boundary.

**Stages** (:func:`stages_from_annotations`): annotations are ``(onset_s, duration_s, label)``;
epoch ``k`` takes the label of the annotation that covers its midpoint ``30 k + 15``. Epochs that no
annotation covers are ``UNSCORED``. R&K stages 3 and 4 both map to N3; movement time and ``?`` are
``UNSCORED``.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from rtsleep.data.errors import DataError
from rtsleep.data.recording import EPOCH_S, Event, EventType, Stage

log = logging.getLogger(__name__)

DEFAULT_MIN_OVERLAP_S = 1.0
"""Default overlap (s) an event needs with an epoch to flag it."""

Annotation = tuple[float, float, str]
"""``(onset_s, duration_s, label)`` from the recording start."""


def _norm(label: str) -> str:
    return re.sub(r"\s+", " ", label.strip()).lower()


STAGE_LABELS: dict[str, Stage] = {
    _norm(k): v
    for k, v in {
        # Sleep-EDF (EDF+ annotations)
        "Sleep stage W": Stage.W,
        "Sleep stage 1": Stage.N1,
        "Sleep stage 2": Stage.N2,
        "Sleep stage 3": Stage.N3,
        "Sleep stage 4": Stage.N3,
        "Sleep stage R": Stage.REM,
        "Sleep stage ?": Stage.UNSCORED,
        "Movement time": Stage.UNSCORED,
        # AASM / BIDS style
        "Sleep stage N1": Stage.N1,
        "Sleep stage N2": Stage.N2,
        "Sleep stage N3": Stage.N3,
        "W": Stage.W,
        "N1": Stage.N1,
        "N2": Stage.N2,
        "N3": Stage.N3,
        "R": Stage.REM,
        "REM": Stage.REM,
        # NSRR EventConcept
        "Wake|0": Stage.W,
        "Stage 1 sleep|1": Stage.N1,
        "Stage 2 sleep|2": Stage.N2,
        "Stage 3 sleep|3": Stage.N3,
        "Stage 4 sleep|4": Stage.N3,
        "REM sleep|5": Stage.REM,
        "Movement|6": Stage.UNSCORED,
        "Unscored|9": Stage.UNSCORED,
    }.items()
}
"""Known stage annotation labels (normalised: lower case, single spaces) -> ``Stage``."""


def stage_of_label(label: str) -> Stage | None:
    """``Stage`` of an annotation label, or ``None`` when the label is not a stage."""
    return STAGE_LABELS.get(_norm(label))


def n_epochs_for(duration_s: float) -> int:
    """Number of complete 30-s epochs in ``duration_s`` seconds."""
    return int(math.floor(duration_s / EPOCH_S + 1e-9))


def annotation_epoch_counts(annotations: Iterable[Annotation]) -> Counter[str]:
    """30-s epochs per raw label (``round(duration / 30)`` per annotation), for source checks."""
    counts: Counter[str] = Counter()
    for _, duration, label in annotations:
        counts[label] += int(round(duration / EPOCH_S))
    return counts


def stage_annotations(
    annotations: Iterable[Annotation], mapping: Mapping[str, Stage] | None = None
) -> list[tuple[float, float, Stage]]:
    """The stage annotations among ``annotations`` as ``(onset_s, duration_s, Stage)``.

    ``mapping`` (raw label -> Stage) replaces the default :data:`STAGE_LABELS` lookup; labels that
    are not stages (events, comments) are skipped.
    """
    out: list[tuple[float, float, Stage]] = []
    for onset, duration, label in annotations:
        stage = mapping.get(label) if mapping is not None else stage_of_label(label)
        if stage is not None:
            out.append((float(onset), float(duration), stage))
    return out


def stages_from_annotations(
    annotations: Iterable[Annotation],
    n_epochs: int | None = None,
    *,
    mapping: Mapping[str, Stage] | None = None,
    source: str | Path = "<annotations>",
    allow_overrun_s: float = 0.0,
) -> np.ndarray:
    """Per-epoch stages from ``(onset_s, duration_s, label)`` stage annotations.

    Returns int8 ``(n_epochs,)`` of ``Stage`` values. Epoch ``k`` takes the stage annotation that
    covers its midpoint; uncovered epochs are ``UNSCORED``. With ``n_epochs=None`` the length is
    the number of epochs the annotations cover (last end rounded up to a whole epoch).

    When ``n_epochs`` is given (the recording's epochs), a stage annotation that ends more than
    ``allow_overrun_s`` after the recording's last complete epoch raises ``DataError``: the
    annotations do not belong to this recording. Readers decide the allowance (see
    ``docs/data.md``); overrunning parts are then dropped. A negative onset or duration is an
    error too.
    """
    stages = stage_annotations(annotations, mapping)
    for onset, duration, stage in stages:
        if onset < 0 or duration < 0 or not (math.isfinite(onset) and math.isfinite(duration)):
            raise DataError(
                source, f"stage annotation {stage.name} has onset {onset} s, duration {duration} s"
            )
    end = max((onset + duration for onset, duration, _ in stages), default=0.0)
    if n_epochs is None:
        n_epochs = int(math.ceil(end / EPOCH_S - 1e-9))
    else:
        limit = n_epochs * EPOCH_S
        if end > limit + allow_overrun_s + 1e-6:
            raise DataError(
                source,
                f"stage annotations run to {end:.0f} s but the recording has {n_epochs} epochs "
                f"({limit:.0f} s)",
            )
    out = np.full(n_epochs, Stage.UNSCORED, dtype=np.int8)
    mids = np.arange(n_epochs) * EPOCH_S + EPOCH_S / 2  # (n_epochs,)
    for onset, duration, stage in stages:
        covered = (mids >= onset) & (mids < onset + duration)
        out[covered] = int(stage)
    return out


def stage_counts(stages: np.ndarray) -> dict[str, int]:
    """``{"W": n, "N1": n, ..., "UNSCORED": n}`` for an int8 stage array (zeros included)."""
    values, counts = np.unique(np.asarray(stages, dtype=np.int64), return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    return {s.name: found.get(int(s), 0) for s in Stage}


def sleep_period_bounds(stages: np.ndarray, margin_epochs: int) -> tuple[int, int] | None:
    """Epochs ``[lo, hi)`` from ``margin_epochs`` before the first to ``margin_epochs`` after the
    last sleep epoch (N1, N2, N3 or REM) of ``stages`` (``Stage`` values, -1 = unscored), clipped
    to the recording; ``None`` when it holds no sleep. ``margin_epochs = 60`` (30 min) is the
    usual Sleep-EDF scoring convention."""
    if margin_epochs < 0:
        raise ValueError(f"margin_epochs must be >= 0, got {margin_epochs}")
    stages = np.asarray(stages)
    sleep = np.flatnonzero(stages > int(Stage.W))
    if sleep.size == 0:
        return None
    lo = max(0, int(sleep[0]) - margin_epochs)
    return lo, min(len(stages), int(sleep[-1]) + 1 + margin_epochs)


def event_epoch_flags(
    events: Sequence[Event],
    n_epochs: int,
    types: Iterable[EventType] | None = None,
    min_overlap_s: float = DEFAULT_MIN_OVERLAP_S,
) -> np.ndarray:
    """Per-epoch flags: True where an event of ``types`` overlaps the epoch enough.

    ``events``: onsets and durations in s from the recording start. ``types=None`` takes every
    event. An epoch is flagged when an event overlaps it by at least
    ``min(min_overlap_s, event duration)`` seconds; a zero-duration event flags the epoch holding
    its onset. Events outside ``[0, 30 n_epochs)`` flag nothing. Returns bool ``(n_epochs,)``.
    """
    if min_overlap_s < 0:
        raise ValueError(f"min_overlap_s must be >= 0, got {min_overlap_s}")
    if n_epochs < 0:
        raise ValueError(f"n_epochs must be >= 0, got {n_epochs}")
    wanted = None if types is None else frozenset(types)
    flags = np.zeros(n_epochs, dtype=bool)
    starts = np.arange(n_epochs) * EPOCH_S  # (n_epochs,)
    for ev in events:
        if wanted is not None and ev.type not in wanted:
            continue
        if ev.duration_s <= 0:
            k = int(math.floor(ev.onset_s / EPOCH_S))
            if 0 <= k < n_epochs:
                flags[k] = True
            continue
        need = min(min_overlap_s, ev.duration_s)
        first = max(0, int(math.floor(ev.onset_s / EPOCH_S)))
        last = min(n_epochs - 1, int(math.floor(ev.end_s / EPOCH_S)))
        if last < first:
            continue
        ks = np.arange(first, last + 1)
        overlap = np.minimum(ev.end_s, starts[ks] + EPOCH_S) - np.maximum(ev.onset_s, starts[ks])
        flags[ks[overlap >= need - 1e-9]] = True
    return flags


def event_counts(events: Iterable[Event]) -> dict[str, int]:
    """Number of events per ``EventType`` value (only types present)."""
    return dict(Counter(ev.type.value for ev in events))

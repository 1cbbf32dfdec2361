"""Sleep-EDF Expanded: ``*-PSG.edf`` + ``*-Hypnogram.edf`` (EDF+ stage annotations).

**Pairing.** A PSG pairs with the hypnogram whose name shares its first 7 characters
(``SC4001E0-PSG.edf`` <-> ``SC4001EC-Hypnogram.edf``; names in any letter case), searched in
the PSG's folder, then under its parent folder (the match must be unique at the level where it
is found). A PSG with another
name (``short_psg.edf``, the first 300 s of ``SC4001E0-PSG.edf``) pairs with a hypnogram only by
header: the same patient field and the same start date and time to the second, and exactly one
such hypnogram. An explicit ``hypnogram=``
argument overrides both.

**Overrun rule.** A hypnogram must fit its PSG. Unscored annotations (``Sleep stage ?``,
``Movement time``) past the PSG end are dropped: the cassette hypnograms end with a ``?``
annotation that starts at the PSG end. A scored stage that ends more than 30 s after the PSG's
last complete epoch is a ``DataError``, except for a PSG paired by header (a cut excerpt of the
original recording), whose hypnogram is cropped to the excerpt with an INFO log line.

**Label-only.** A hypnogram with no PSG is a recording without channels; its stages cover every
annotation, trailing ``?`` included (``duration_hint_s`` = end of the last annotation).

Ids: PSG ``SC4001E0``; label-only ``SC4001EC`` -> ``SC4001E0`` (the night's id), subject
``SC400`` (first 5 characters: study, subject number).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.labels import (
    Annotation,
    n_epochs_for,
    stage_of_label,
    stages_from_annotations,
)
from rtsleep.data.readers.common import require_file, sha256_files
from rtsleep.data.readers.edf import (
    check_edf_file,
    edf_annotations,
    edf_start_time,
    load_edf,
    read_edf,
)
from rtsleep.data.recording import EPOCH_S, Recording, Stage

log = logging.getLogger(__name__)

_NIGHT = re.compile(r"^(S[CT]\d{4}[A-Z])", re.IGNORECASE)
PSG_GLOB = "*-PSG.edf"
OVERRUN_ALLOWANCE_S = EPOCH_S


def _night_key(path: Path) -> str | None:
    m = _NIGHT.match(path.name)
    return m.group(1).upper() if m else None


def _is_hypnogram(path: Path) -> bool:
    return path.name.lower().endswith("-hypnogram.edf")


def _candidate_hypnograms(psg: Path) -> list[list[Path]]:
    """Hypnograms beside the PSG, then (excluding those) under its parent folder; names in any
    case (``SC4001EC-HYPNOGRAM.EDF``)."""
    near = sorted(p for p in psg.parent.iterdir() if _is_hypnogram(p))
    far: list[Path] = []
    if psg.parent.parent != psg.parent:
        far = sorted({p for p in psg.parent.parent.rglob("*") if _is_hypnogram(p)} - set(near))
    return [near, far]


def _header_identity(path: Path) -> tuple[bytes, bytes]:
    with open(path, "rb") as fh:
        raw = fh.read(256)
    return raw[8:88].strip(), raw[168:184]  # patient field, start date + time


def find_hypnogram(psg: Path) -> tuple[Path | None, str]:
    """The hypnogram of ``psg`` and how it was found: ``"name"``, ``"header"`` or ``"none"``.

    The PSG's own folder is searched first, then its parent folder tree; at each level the
    match must be unique.
    """
    levels = _candidate_hypnograms(psg)
    key = _night_key(psg)
    if key is not None:
        for candidates in levels:
            by_name = [h for h in candidates if _night_key(h) == key]
            if len(by_name) == 1:
                return by_name[0], "name"
            if len(by_name) > 1:
                raise DataError(psg, f"several hypnograms match: {[str(h) for h in by_name]}")
    identity = _header_identity(psg)
    if identity[0]:
        for candidates in levels:
            by_header = [h for h in candidates if _header_identity(h) == identity]
            if len(by_header) == 1:
                return by_header[0], "header"
            if len(by_header) > 1:
                break
    return None, "none"


def list_sleepedf_sources(path: Path) -> list[Path]:
    """PSG files (each read with its hypnogram) and hypnograms that no PSG claims by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "not found")
    edfs = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".edf" and p.is_file())
    psgs = [p for p in edfs if not _is_hypnogram(p)]
    claimed = {_night_key(p) for p in psgs if _night_key(p) is not None}
    hyps = [h for h in edfs if _is_hypnogram(h) and _night_key(h) not in claimed]
    return sorted(psgs + hyps)


def read_hypnogram_annotations(path: Path) -> list[Annotation]:
    """``(onset_s, duration_s, label)`` of a Sleep-EDF hypnogram; unknown labels are logged."""
    return _read_hypnogram(path)[0]


def _read_hypnogram(path: Path) -> tuple[list[Annotation], datetime | None]:
    header = check_edf_file(path)
    if header.reserved[:4] != "EDF+":
        raise DataError(path, "not an EDF+ file, so it holds no hypnogram annotations")
    edf, _ = load_edf(path)
    annotations = edf_annotations(path, edf)
    unknown = sorted({label for _, _, label in annotations if stage_of_label(label) is None})
    if unknown:
        log.warning("%s: annotations that are not stages, ignored: %s", path, unknown)
    if not any(stage_of_label(label) is not None for _, _, label in annotations):
        raise DataError(path, "hypnogram has no sleep stage annotations")
    return annotations, edf_start_time(edf)


def _night_id(path: Path) -> str:
    key = _night_key(path)
    return f"{key}0" if key else path.stem


def _subject(path: Path) -> str:
    key = _night_key(path)
    return key[:5] if key else path.stem


def read_sleepedf(
    source: Path,
    channel_map: ChannelMap | None = None,
    hypnogram: Path | None = None,
    crop: bool | None = None,
) -> Recording:
    """A Sleep-EDF PSG with its hypnogram, or a hypnogram alone (label-only recording).

    ``hypnogram`` pairs explicitly. ``crop=True`` crops the hypnogram to the PSG (an excerpt);
    by default only a PSG paired by header is cropped, others follow the overrun rule.
    """
    require_file(source)
    if _is_hypnogram(source):
        return _label_only(source)
    how = "explicit"
    if hypnogram is None:
        hypnogram, how = find_hypnogram(source)
    night = hypnogram if hypnogram is not None else source
    rec = read_edf(
        source,
        channel_map,
        dataset="sleep-edf",
        recording_id=_night_id(source) if _night_key(source) else source.stem,
        subject=_subject(night),
    )
    if hypnogram is None:
        log.warning("%s: no hypnogram found; recording has no stages", source)
        return rec
    annotations, hyp_start = _read_hypnogram(hypnogram)
    annotations = _on_psg_clock(annotations, hyp_start, rec.start_time, source, hypnogram)
    n_epochs = n_epochs_for(rec.duration_s)
    if crop is None:
        crop = how == "header"
    rec.stages = _fit_stages(annotations, n_epochs, hypnogram, crop=crop)
    if crop:
        log.info(
            "%s: paired with %s (%s); hypnogram cropped to the excerpt's %d epochs",
            source, hypnogram.name, how, n_epochs,
        )
    rec.source_sha256 = sha256_files(source, hypnogram)
    return rec


def _on_psg_clock(annotations: list[Annotation], hyp_start: datetime | None,
                  psg_start: datetime | None, psg: Path, hypnogram: Path) -> list[Annotation]:
    """The hypnogram's annotations with onsets from the PSG's start.

    EDF+ onsets count from the file's own start: a hypnogram that starts later (or earlier) than
    its PSG would otherwise shift every stage. The parts before the PSG's start are dropped."""
    if hyp_start is None or psg_start is None:
        return annotations
    offset = (hyp_start - psg_start).total_seconds()
    if abs(offset) < 0.5:
        return annotations
    shifted: list[Annotation] = []
    for onset, duration, label in annotations:
        start = onset + offset
        if start < 0:
            duration, start = duration + start, 0.0
        if duration > 0:
            shifted.append((start, duration, label))
    grid = "" if offset % EPOCH_S == 0 else f"; not a whole number of {EPOCH_S:g}-s epochs, so " \
        "the scoring grid is not the PSG's and each epoch takes the stage at its midpoint"
    (log.info if not grid else log.warning)(
        "%s: %s starts %+g s from the PSG; its onsets moved onto the PSG's clock%s", psg,
        hypnogram.name, offset, grid)
    return shifted


def _fit_stages(
    annotations: list[Annotation], n_epochs: int, hypnogram: Path, *, crop: bool
) -> np.ndarray:
    end = n_epochs * EPOCH_S
    kept: list[Annotation] = []
    for onset, duration, label in annotations:
        stage = stage_of_label(label)
        if stage is None:
            continue
        if crop or stage == Stage.UNSCORED:
            if onset >= end:
                continue
            duration = min(duration, end - onset)
        kept.append((onset, duration, label))
    return stages_from_annotations(
        kept, n_epochs, source=hypnogram, allow_overrun_s=OVERRUN_ALLOWANCE_S
    )


def _label_only(hypnogram: Path) -> Recording:
    annotations, start_time = _read_hypnogram(hypnogram)
    stages = stages_from_annotations(annotations, None, source=hypnogram)
    end = max(onset + duration for onset, duration, _ in annotations)
    return Recording(
        id=_night_id(hypnogram),
        dataset="sleep-edf",
        subject=_subject(hypnogram),
        source=hypnogram,
        start_time=start_time,
        stages=stages,
        source_sha256=sha256_files(hypnogram),
        duration_hint_s=float(end),
    )

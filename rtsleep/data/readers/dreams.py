"""DREAMS Sleep Spindles database: ``excerptN.txt`` / ``excerptN.edf`` + 5-s R&K hypnograms.

- ``excerptN.txt``: first line the channel name (``[C3-A1]``), then one value per line in µV. The
  excerpts are 1800 s long, so the rate is the sample count / 1800 (50, 100 or 200 Hz); a count
  that is not a whole number of samples per second is an error.
- ``Hypnogram_excerptN.txt``: ``[Hypnogram]`` then one R&K code per 5 s: 5 = W, 4 = REM,
  3 = S1, 2 = S2, 1 = S3, 0 = S4, and the DREAMS databases' codes for the rest: -1 = movement
  time, -2 and -3 = stage unknown (not in the shared excerpts). Codes are mapped to AASM first
  (S3 and S4 -> N3; -1 to -3 -> ``UNSCORED``, left out of scoring and of the training loss), then
  each 30-s epoch takes the majority of its six 5-s stages (an unscored step votes too, so an
  epoch that is mostly movement or unknown is unscored). **Tie rule**: among the stages with the
  most votes, the one that occurs first in the epoch wins (the stage the epoch starts in). The
  shared excerpts have no ties.
- ``excerpt3.edf`` (full PSG): all channels via the EDF reader. The stages come from its 1-Hz
  ``hypnogram`` channel (the same codes, 1 s each) with the same vote over 30 values; an
  excerpt EDF without that channel takes its stages from ``Hypnogram_excerptN.txt`` beside it
  (its name in any letter case), and has none, with a warning, when that is missing too.
  ``event_pneumo`` (expert respiratory events; codes 1, 3 and 10 are undocumented, 0 = none) is
  kept as a raw 1-Hz OTHER channel, and each run of one non-zero code becomes an
  ``APNEA_HYPOPNEA`` event (disordered breathing, type unknown) labelled ``event_pneumo=<code>``.
  The header says ``MV`` for ``ECG``, but its values (99th percentile 86) would be 86 mV, far
  beyond any ECG; they are read as µV. When the folder has ``excerptN.edf``, it is preferred to
  ``excerptN.txt``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from rtsleep.data.channels import DEFAULT_CHANNEL_MAP, UV, ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.readers.common import require_file, sha256_files
from rtsleep.data.readers.edf import read_edf
from rtsleep.data.recording import Channel, Event, EventType, Recording, Stage

log = logging.getLogger(__name__)

EXCERPT_S = 1800.0
"""Length of every DREAMS excerpt in s."""

HYPNOGRAM_STEP_S = 5.0
"""DREAMS hypnograms score 5-s epochs."""

DREAMS_STAGES: dict[int, Stage] = {
    5: Stage.W,
    4: Stage.REM,
    3: Stage.N1,
    2: Stage.N2,
    1: Stage.N3,
    0: Stage.N3,
    -1: Stage.UNSCORED,
    -2: Stage.UNSCORED,
    -3: Stage.UNSCORED,
}
"""DREAMS R&K code -> AASM stage (-1 movement time, -2 and -3 unknown: ``UNSCORED``)."""

EDF_UNIT_FIXES = {"ECG": UV}
"""excerpt3.edf: ECG header unit ``MV`` is wrong by 1000x (see module docstring)."""

_EXCERPT = re.compile(r"^excerpt(\d+)\.(txt|edf)$", re.IGNORECASE)
_HYPNOGRAM = re.compile(r"^hypnogram_excerpt(\d+)\.txt$", re.IGNORECASE)


def list_dreams_sources(path: Path) -> list[Path]:
    """``excerptN.edf`` or else ``excerptN.txt`` per excerpt under ``path`` (file or folder).

    One recording per excerpt number (its id): an excerpt number found in several folders is
    read from the first folder only, and the others are named in a warning."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "not found")
    best: dict[int, Path] = {}
    others: list[Path] = []
    for f in sorted(path.rglob("*")):
        m = _EXCERPT.match(f.name)
        if not m or not f.is_file():
            continue
        n = int(m.group(1))
        if n in best and best[n].parent != f.parent:
            others.append(f)
        elif n not in best or f.suffix.lower() == ".edf":
            best[n] = f
    if others:
        log.warning("%s: excerpt numbers found in more than one folder; left out: %s", path,
                    ", ".join(str(f) for f in others))
    return [best[n] for n in sorted(best)]


def majority_stages(codes: np.ndarray, per_epoch: int, source: str | Path) -> np.ndarray:
    """Collapse AASM stages at a finer step to 30-s epochs by majority vote.

    ``codes``: int ``(n,)`` of ``Stage`` values, ``per_epoch`` of them per 30 s. Ties go to the
    tied stage that occurs first in the epoch. Returns int8 ``(n // per_epoch,)``.
    """
    if len(codes) % per_epoch:
        raise DataError(
            source, f"{len(codes)} hypnogram steps is not a whole number of 30-s epochs"
        )
    blocks = np.asarray(codes).reshape(-1, per_epoch)  # (n_epochs, per_epoch)
    out = np.empty(len(blocks), dtype=np.int8)
    for k, block in enumerate(blocks):
        votes = Counter(block.tolist())
        top = max(votes.values())
        out[k] = next(s for s in block.tolist() if votes[s] == top)
    return out


def _map_codes(raw: np.ndarray, source: str | Path) -> np.ndarray:
    bad = sorted(set(raw.tolist()) - set(DREAMS_STAGES))
    if bad:
        raise DataError(source, f"unknown DREAMS stage codes {bad} (expected -3 to 5)")
    return np.array([int(DREAMS_STAGES[int(c)]) for c in raw], dtype=np.int8)


def read_dreams_hypnogram(path: Path, duration_s: float = EXCERPT_S) -> np.ndarray:
    """30-s stages (int8) from ``Hypnogram_excerptN.txt``; it must cover exactly ``duration_s``."""
    return majority_stages(read_dreams_hypnogram_steps(path, duration_s), 6, path)


def read_dreams_hypnogram_steps(path: Path, duration_s: float = EXCERPT_S) -> np.ndarray:
    """The 5-s stages (int8 ``Stage`` values, before the 30-s vote) of ``Hypnogram_excerptN.txt``;
    it must cover exactly ``duration_s``."""
    require_file(path)
    lines = path.read_text(errors="replace").split()
    if not lines or not lines[0].startswith("["):
        raise DataError(path, "not a DREAMS hypnogram: first line is not a [header]")
    try:
        raw = np.array([int(float(x)) for x in lines[1:]], dtype=np.int64)
    except ValueError:
        raise DataError(path, "DREAMS hypnogram has a non-numeric code") from None
    expected = int(round(duration_s / HYPNOGRAM_STEP_S))
    if len(raw) != expected:
        raise DataError(
            path,
            f"hypnogram has {len(raw)} 5-s epochs ({len(raw) * HYPNOGRAM_STEP_S:.0f} s) but the "
            f"recording lasts {duration_s:.0f} s",
        )
    return _map_codes(raw, path)


def dreams_fine_stages(rec: Recording) -> tuple[np.ndarray, float]:
    """The stages of a DREAMS recording at their native step, before the 30-s vote:
    ``(codes int8 (n,), step_s)``. ``excerptN.edf``: its 1-Hz ``hypnogram`` channel (1 s);
    ``excerptN.txt``: ``Hypnogram_excerptN.txt`` (5 s). :func:`majority_stages` of them with
    ``30 / step_s`` steps per epoch gives ``rec.stages``; other offsets give shifted 30-s grids."""
    if rec.source.suffix.lower() == ".edf" and _has_channel(rec, "hypnogram"):
        hyp = rec.channel("hypnogram")
        return _map_codes(hyp.data.astype(np.int64), rec.source), 1.0 / hyp.sfreq
    hyp_txt = _hypnogram_txt(rec.source)
    return read_dreams_hypnogram_steps(hyp_txt, rec.duration_s), HYPNOGRAM_STEP_S


def _read_txt_signal(path: Path, cmap: ChannelMap) -> Channel:
    require_file(path)
    text = path.read_text(errors="replace")
    first, _, body = text.partition("\n")
    label = first.strip().strip("[]").strip()
    if not label:
        raise DataError(path, "first line should name the channel, e.g. [C3-A1]")
    try:
        data = np.array(body.split(), dtype=np.float64)
    except ValueError:
        raise DataError(path, "signal has a non-numeric value") from None
    if data.size == 0:
        raise DataError(path, "no samples")
    if not np.all(np.isfinite(data)):
        raise DataError(path, f"channel {label!r} has non-finite values")
    if np.all(data == data[0]):
        raise DataError(path, f"channel {label!r} is flat (constant {data[0]:g})")
    sfreq = data.size / EXCERPT_S
    if sfreq != round(sfreq):
        raise DataError(
            path, f"{data.size} samples is not a whole rate over the {EXCERPT_S:.0f}-s excerpt "
                  "(truncated, or extra lines?)"
        )
    modality = cmap.resolve(label)
    return Channel(label=label, modality=modality, sfreq=float(sfreq), unit=UV, data=data)


def _excerpt_name(path: Path) -> str:
    m = _EXCERPT.match(path.name)
    if not m:
        raise DataError(path, "not a DREAMS excerpt (expected excerptN.txt or excerptN.edf)")
    return f"excerpt{int(m.group(1))}"


def _hypnogram_txt(source: Path) -> Path:
    """``Hypnogram_excerptN.txt`` beside the excerpt ``source``, its name in any letter case
    (``hypnogram_Excerpt4.TXT``); the usual name when there is none."""
    name = _excerpt_name(source)
    usual = source.with_name(f"Hypnogram_{name}.txt")
    if usual.is_file():
        return usual
    for f in sorted(source.parent.iterdir()):
        m = _HYPNOGRAM.match(f.name)
        if m and f"excerpt{int(m.group(1))}" == name and f.is_file():
            return f
    return usual


def read_dreams(source: Path, channel_map: ChannelMap | None = None) -> Recording:
    """One DREAMS excerpt (``excerptN.txt`` or ``excerptN.edf``) with its stages and events."""
    cmap = channel_map or DEFAULT_CHANNEL_MAP
    name = _excerpt_name(source)
    hyp_txt = _hypnogram_txt(source)
    if source.suffix.lower() == ".edf":
        rec = read_edf(
            source, cmap, dataset="dreams", recording_id=name, subject=name,
            unit_overrides=EDF_UNIT_FIXES,
        )
        rec.events = _edf_events(rec)
        from_txt = read_dreams_hypnogram(hyp_txt, rec.duration_s) if hyp_txt.is_file() else None
        if _has_channel(rec, "hypnogram"):
            rec.stages = _edf_stages(rec)
            if from_txt is not None and not np.array_equal(from_txt, rec.stages):
                log.warning("%s: 'hypnogram' channel differs from %s", source, hyp_txt.name)
        elif from_txt is not None:
            log.info("%s: no 'hypnogram' channel; stages from %s", source, hyp_txt.name)
            rec.stages = from_txt
        else:
            log.warning("%s: no 'hypnogram' channel and no %s; recording has no stages",
                        source, hyp_txt.name)
        return rec
    channel = _read_txt_signal(source, cmap)
    if abs(channel.duration_s - EXCERPT_S) > 1e-6:
        raise DataError(source, f"lasts {channel.duration_s:.0f} s, DREAMS excerpts last 1800 s")
    stages: np.ndarray | None = None
    files = [source]
    if hyp_txt.is_file():
        stages = read_dreams_hypnogram(hyp_txt, channel.duration_s)
        files.append(hyp_txt)
    else:
        log.warning("%s: no %s; recording has no stages", source, hyp_txt.name)
    return Recording(
        id=name,
        dataset="dreams",
        subject=name,
        source=source,
        channels=[channel],
        stages=stages,
        source_sha256=sha256_files(*files),
        duration_hint_s=channel.duration_s,
    )


def _has_channel(rec: Recording, label: str) -> bool:
    return any(c.label == label for c in rec.channels)


def _edf_stages(rec: Recording) -> np.ndarray:
    """30-s stages from the EDF's 1-Hz ``hypnogram`` channel (the caller checked it exists)."""
    codes, step_s = dreams_fine_stages(rec)  # (n,) at the channel's step
    return majority_stages(codes, int(round(30.0 / step_s)), rec.source)


def _edf_events(rec: Recording) -> list[Event]:
    """Respiratory events from the EDF's ``event_pneumo`` channel (none without it)."""
    events: list[Event] = []
    try:
        pneumo = rec.channel("event_pneumo")
    except KeyError:
        return events
    codes = pneumo.data.astype(np.int64)
    change = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(codes)]])
    for a, b in zip(starts, ends, strict=True):
        if codes[a] != 0:
            events.append(
                Event(
                    onset_s=pneumo.start_s + a / pneumo.sfreq,
                    duration_s=(b - a) / pneumo.sfreq,
                    type=EventType.APNEA_HYPOPNEA,
                    label=f"event_pneumo={codes[a]}",
                )
            )
    return events

"""Staged recordings for training and evaluation: a raw dataset folder or a Parquet store ->
:class:`StageRecording` (model input epochs + per-epoch stages).

Raw folders go through exactly the readers (``rtsleep.data.readers``) and
``rtsleep.data.epochs.epochs_from_recording`` that ingest, ``rtsleep score`` and the daemon use,
with the model's preprocessing spec. A store is read as stored, after checking that its
preprocessing spec equals the model's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtsleep.data.epochs import epochs_from_recording
from rtsleep.data.errors import DataError
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.store import exg_input, open_store

log = logging.getLogger(__name__)


@dataclass
class StageRecording:
    """One recording ready for the stage model.

    Attributes:
        id: recording id; ``subject``: subject id (the unit of cross-validation splits).
        x: float32 ``(n_epochs, M, S)`` model input (``M = 4`` ExG modalities, ``S = 3000``).
        mask: bool ``(M,)``, True where the modality is present.
        stages: int64 ``(n_epochs,)`` ``Stage`` values, -1 = unscored.
    """

    id: str
    subject: str
    dataset: str
    x: np.ndarray
    mask: np.ndarray
    stages: np.ndarray

    @property
    def n_epochs(self) -> int:
        """Number of 30-s epochs."""
        return int(self.x.shape[0])


def is_store(path: Path) -> bool:
    """True when ``path`` is a store file or a folder holding store ``.parquet`` files."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and any(path.rglob("*.parquet"))


def load_raw(dataset: str, path: Path, spec: PreprocessSpec) -> list[StageRecording]:
    """Every staged recording of ``dataset`` under ``path`` (sorted by source path).

    Recordings without stages are skipped with a warning; unreadable ones raise ``DataError``.
    """
    out: list[StageRecording] = []
    for source in list_sources(dataset, Path(path)):
        rec = read_recording(dataset, source)
        if rec.stages is None:
            log.warning("%s: no sleep stages; skipped", source)
            continue
        arrays = epochs_from_recording(rec, spec)
        n = arrays.n_epochs
        stages = np.full(n, -1, dtype=np.int64)
        k = min(n, len(rec.stages))
        stages[:k] = np.asarray(rec.stages[:k], dtype=np.int64)
        out.append(
            StageRecording(
                id=rec.id,
                subject=rec.subject or rec.id,
                dataset=rec.dataset,
                x=arrays.x,
                mask=arrays.mask,
                stages=stages,
            )
        )
    if not out:
        raise DataError(path, f"no staged {dataset} recording found")
    return out


def load_store(
    path: Path, spec: PreprocessSpec, dataset: str | None = None
) -> list[StageRecording]:
    """Every staged recording in a store (optionally only ``dataset``), sorted by path.

    Raises ``DataError`` when a recording's preprocessing spec differs from ``spec``.
    """
    out: list[StageRecording] = []
    for stored in open_store(Path(path)).recordings():
        meta = stored.meta
        if dataset is not None and meta.dataset != dataset:
            continue
        if not meta.has_stages:
            log.warning("%s: no sleep stages; skipped", stored.path)
            continue
        if meta.preprocess is not None:
            diffs = spec.mismatches(PreprocessSpec.from_json(json.dumps(meta.preprocess)))
            if diffs:
                raise DataError(
                    stored.path, "preprocessing differs from the model's: " + "; ".join(diffs)
                )
        batch = stored.read(beats=False)
        x, mask = exg_input(batch, meta)
        out.append(
            StageRecording(
                id=meta.recording_id,
                subject=meta.subject or meta.recording_id,
                dataset=meta.dataset,
                x=x,
                mask=mask,
                stages=np.asarray(batch.labels["stage"], dtype=np.int64),
            )
        )
    if not out:
        raise DataError(path, "no staged recording in the store")
    return out


def load_stage_recordings(
    path: Path, dataset: str, spec: PreprocessSpec
) -> list[StageRecording]:
    """A store (detected by its ``.parquet`` files) or else a raw ``dataset`` folder."""
    if is_store(Path(path)):
        return load_store(Path(path), spec, dataset=dataset or None)
    return load_raw(dataset, Path(path), spec)


__all__ = ["StageRecording", "is_store", "load_raw", "load_stage_recordings", "load_store"]

"""Staged recordings for training and evaluation: a raw dataset folder or a Parquet store ->
:class:`StageRecording` (model input epochs + per-epoch stages).

Raw folders go through exactly the readers (``rtsleep.data.readers``) and
``rtsleep.data.epochs.epochs_from_recording`` that ingest, ``rtsleep score`` and the daemon use,
with the model's preprocessing spec. A store is read as stored, after checking that its
preprocessing spec equals the model's.

**Shifted epoch grids** (training data only): where the source scores stages finer than 30 s
(DREAMS: 5-s hypnograms), :func:`shifted_grids` cuts extra 30-s grids starting ``k * step`` s
later from the same preprocessed signal (the causal pipeline ran continuously over the whole
recording, so a shifted epoch is exactly the samples the daemon would have computed), each
labelled by the reader's own majority vote (:func:`rtsleep.data.readers.dreams.majority_stages`)
over the fine stages it covers. The evaluation grid stays offset 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline.failures import Failed, none_readable, skip_failed
from rtsleep.data.channels import eeg_views, preference_rank, rank_channels
from rtsleep.data.epochs import epochs_from_recording
from rtsleep.data.errors import DataError
from rtsleep.data.labels import sleep_period_bounds
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.dreams import dreams_fine_stages, majority_stages
from rtsleep.data.recording import EXG_MODALITIES, Modality, Recording
from rtsleep.data.store import StoredRecording, exg_input, open_store

log = logging.getLogger(__name__)

SLEEP_EDF_FEATURES = "sleep-edf-features"
"""``--dataset`` of Sleep-EDF per-epoch feature files
(:func:`load_sleep_edf_feature_recordings`)."""
FEATURE_EEG_LABELS = ("EEG Fpz-Cz", "EEG Pz-Oz")
"""The derivations of the feature files' band powers, in the order of
:data:`offline.spectral_train.SEDF_BAND_COLUMNS`."""
FEATURE_EEG_LABEL = min(FEATURE_EEG_LABELS, key=lambda lbl: preference_rank(lbl, Modality.EEG))
"""The one of :data:`FEATURE_EEG_LABELS` that evaluation scores: the one a Sleep-EDF PSG's
reader and the daemon take as the EEG (:data:`~rtsleep.data.channels.PRIMARY_PREFERENCE`)."""


@dataclass
class StageRecording:
    """One recording ready for the stage model.

    Attributes:
        id: recording id; ``subject``: subject id (the unit of cross-validation splits).
        x: float32 ``(n_epochs, M, S)`` model input (``M = 4`` ExG modalities, ``S = 3000``).
        mask: bool ``(M,)``, True where the modality is present.
        stages: int64 ``(n_epochs,)`` ``Stage`` values, -1 = unscored.
        fine_stages: the source's stages at their native step before the 30-s vote (int
            ``(k,)``, DREAMS: 5 s), or None when the source scores 30-s epochs only.
        fine_step_s: the step of ``fine_stages`` in s (0 without them).
        eeg_label: the label of the EEG channel in ``x`` (None without EEG); a grouped ensemble
            scores the recording with the members of the derivation it names.
        log_power: float32 ``(n_epochs, n_bands)`` EEG band log powers (ln µV²/Hz) for a
            recording given as per-epoch features instead of samples (then ``x`` is
            ``(n_epochs, M, 0)``); a spectral model reads them in place of its Welch step.
        view_labels: further EEG derivations scored beside ``eeg_label`` when the model
            averages them (``SleepNetConfig.eeg_views``); empty otherwise.
        view_x: float32 ``(V, n_epochs, S)``, their EEG rows as ``x`` holds the primary's
            (None for band-power recordings or without views).
        view_log_power: float32 ``(V, n_epochs, n_bands)``, their band log powers for a
            band-power recording with views.
    """

    id: str
    subject: str
    dataset: str
    x: np.ndarray
    mask: np.ndarray
    stages: np.ndarray
    fine_stages: np.ndarray | None = None
    fine_step_s: float = 0.0
    eeg_label: str | None = None
    log_power: np.ndarray | None = None
    view_labels: tuple[str, ...] = ()
    view_x: np.ndarray | None = None
    view_log_power: np.ndarray | None = None

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


def _view_rows(rec: Recording, spec: PreprocessSpec, primary: str | None, n_epochs: int,
               view_sets: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The EEG channels of ``rec`` scored beside ``primary`` (:func:`eeg_views`) and their
    model-input rows ``(V, n_epochs, S)``, each through the same preprocessing as the primary."""
    if primary is None or not view_sets:
        return (), None
    ranked = [c.label for c in rank_channels(rec.channels, Modality.EEG) if c.label != primary]
    labels, rows = [], []
    for label in eeg_views(primary, ranked, view_sets):
        alone = dataclasses.replace(rec, channels=[c for c in rec.channels if c.label == label])
        arrays = epochs_from_recording(alone, spec)
        if arrays.n_epochs < n_epochs:
            log.warning("%s: EEG %s covers %d of %d epochs; not scored beside %s", rec.source,
                        label, arrays.n_epochs, n_epochs, primary)
            continue
        labels.append(label)
        rows.append(arrays.x[:n_epochs, EXG_MODALITIES.index(Modality.EEG)])  # (T, S)
    return tuple(labels), (np.stack(rows) if rows else None)  # (V, T, S)


def load_raw(dataset: str, path: Path, spec: PreprocessSpec,
             eeg_view_sets: Sequence[Sequence[str]] = ()) -> list[StageRecording]:
    """Every staged recording of ``dataset`` under ``path`` (sorted by source path): the list
    of :func:`iter_raw`."""
    return list(iter_raw(dataset, path, spec, eeg_view_sets))


def _read_staged(dataset: str, source: Path, spec: PreprocessSpec,
                 eeg_view_sets: Sequence[Sequence[str]]) -> StageRecording | str:
    """One source as a :class:`StageRecording`, or why it has none to score (``"no-stages"``,
    ``"label-only"``, each logged). Unreadable: ``DataError``."""
    rec = read_recording(dataset, source)
    if rec.stages is None:
        log.warning("%s: no sleep stages; skipped", source)
        return "no-stages"
    if not rec.channels:
        log.warning("%s: labels only, no signal; skipped", source)
        return "label-only"
    arrays = epochs_from_recording(rec, spec)
    n = arrays.n_epochs
    stages = np.full(n, -1, dtype=np.int64)
    k = min(n, len(rec.stages))
    stages[:k] = np.asarray(rec.stages[:k], dtype=np.int64)
    fine, step = dreams_fine_stages(rec) if rec.dataset == "dreams" else (None, 0.0)
    eeg_label = next(iter(arrays.channels.get(Modality.EEG, [])), None)
    view_labels, view_x = _view_rows(rec, spec, eeg_label, n, eeg_view_sets)
    return StageRecording(
        id=rec.id, subject=rec.subject or rec.id, dataset=rec.dataset, x=arrays.x,
        mask=arrays.mask, stages=stages, fine_stages=fine, fine_step_s=step,
        eeg_label=eeg_label, view_labels=view_labels, view_x=view_x,
    )


def iter_raw(dataset: str, path: Path, spec: PreprocessSpec,
             eeg_view_sets: Sequence[Sequence[str]] = (),
             failed: Failed | None = None) -> Iterator[StageRecording]:
    """Each staged recording of ``dataset`` under ``path`` (sorted by source path), read when
    the caller asks for it, so one recording at a time is in memory (a whole-night PSG holds
    about 6 MB of model input per hour).

    ``eeg_view_sets``: the model's ``SleepNetConfig.eeg_views``; the EEG channels they pair with
    the primary one are read too (``StageRecording.view_x``). Recordings without stages are
    skipped with a warning (with a ``failed`` list, as an evaluation passes, they are listed
    there too: a signal whose hypnogram was not found). An unreadable one raises ``DataError``;
    with a ``failed`` list it (or any other error of its reader) is logged, appended as
    ``(source, error)`` and skipped instead. A folder without any staged recording raises
    ``DataError`` (after the last one).
    """
    n_out = 0
    label_only = 0
    for source in list_sources(dataset, Path(path)):
        try:
            staged = _read_staged(dataset, source, spec, eeg_view_sets)
        except Exception as err:  # noqa: BLE001 - with ``failed``, one bad file must not stop
            skip_failed(source, err, failed)
            continue
        if staged == "label-only":
            label_only += 1
        if staged == "no-stages" and failed is not None:  # evaluation: its labels are missing
            skip_failed(source, DataError(source, "no sleep stages (no hypnogram found for it)"),
                        failed)
        if isinstance(staged, StageRecording):
            n_out += 1
            yield staged
    if not n_out and failed:
        raise none_readable(path, f"{dataset} recordings", failed)
    if not n_out:
        hint = (f" (per-epoch feature files: --dataset {SLEEP_EDF_FEATURES})"
                if dataset == "sleep-edf" else "")
        raise DataError(path, f"no staged {dataset} recording with signals found{hint}")
    if label_only and dataset == "sleep-edf":
        from offline.spectral_train import sleep_edf_feature_files

        features = sleep_edf_feature_files(Path(path))
        if features:
            log.warning("%s: %d hypnogram(s) without a PSG skipped; %d night(s) there exist as "
                        "per-epoch feature files: score them with --dataset %s", path,
                        label_only, len(features), SLEEP_EDF_FEATURES)


def load_sleep_edf_feature_recordings(
    path: Path, eeg_view_sets: Sequence[Sequence[str]] = (),
    failed: Failed | None = None,
) -> list[StageRecording]:
    """The Sleep-EDF nights of the per-epoch feature files under ``path``
    (``SC4ssnE0.npz``, SOURCES.md layout), each a :class:`StageRecording` of the band log
    powers of :data:`FEATURE_EEG_LABEL` (``log_power``; ``eeg_label``), the channel a Sleep-EDF
    PSG's reader takes as its EEG, with every labelled row, in file order.

    ``eeg_view_sets``: the model's ``SleepNetConfig.eeg_views``; the other derivation of the
    files goes into ``view_log_power`` when they pair it with :data:`FEATURE_EEG_LABEL`.

    The files leave out the epochs scored ``?`` or movement time (at most 4 per night here), so
    the rows either side of such a gap follow each other in the stream. ``failed``: as for
    :func:`iter_raw`."""
    from offline.spectral_train import load_sleep_edf_features

    out = []
    others = [lbl for lbl in FEATURE_EEG_LABELS if lbl != FEATURE_EEG_LABEL]
    views = tuple(eeg_views(FEATURE_EEG_LABEL, others, eeg_view_sets))
    col = FEATURE_EEG_LABELS.index(FEATURE_EEG_LABEL)
    view_cols = [FEATURE_EEG_LABELS.index(v) for v in views]
    for night in load_sleep_edf_features(Path(path), wake_margin_epochs=None, failed=failed):
        lp = night.log_power[:, col].numpy().astype(np.float32)  # (n, n_bands)
        view_lp = (night.log_power[:, view_cols].permute(1, 0, 2).numpy().astype(np.float32)
                   if views else None)  # (V, n, n_bands)
        n = lp.shape[0]
        out.append(
            StageRecording(
                id=night.id,
                subject=night.subject,
                dataset=SLEEP_EDF_FEATURES,
                x=np.zeros((n, len(EXG_MODALITIES), 0), dtype=np.float32),  # (n, M, 0)
                mask=np.array([m == Modality.EEG for m in EXG_MODALITIES]),
                stages=night.stages.numpy().astype(np.int64),
                eeg_label=FEATURE_EEG_LABEL,
                log_power=lp,
                view_labels=views,
                view_log_power=view_lp,
            )
        )
    return out


def sleep_period(rec: StageRecording, margin_epochs: int) -> StageRecording:
    """``rec`` scored only from ``margin_epochs`` before its first to ``margin_epochs`` after its
    last expert sleep epoch (the Sleep-EDF convention: 60 epochs, 30 min); the other epochs
    become unscored (-1) but stay in the input, so the model still streams the whole recording.
    A recording without sleep keeps no scored epoch. ``rec`` itself is not changed."""
    stages = np.asarray(rec.stages, dtype=np.int64).copy()
    bounds = sleep_period_bounds(stages, margin_epochs)
    keep = np.zeros(len(stages), dtype=bool)
    if bounds is not None:
        keep[bounds[0] : bounds[1]] = True
    else:
        log.warning("%s: no sleep epoch in the expert hypnogram; nothing scored", rec.id)
    stages[~keep] = -1
    return dataclasses.replace(rec, stages=stages)


def shifted_grids(rec: StageRecording, step_s: float = 5.0,
                  epoch_s: float = 30.0) -> list[StageRecording]:
    """The recording on 30-s grids shifted by ``step_s, 2 step_s, ... < epoch_s`` (module doc).

    Each grid has one epoch less than ``rec`` (its last epoch would run past the end) and id
    ``"<id>@<shift>s"``; labels are the majority (reader's tie rule) of the fine stages the epoch
    covers. Returns ``[]`` when ``rec`` has no fine stages; ``step_s`` must be a whole multiple
    of their step and of the model's sample period, and divide ``epoch_s``.
    """
    if rec.fine_stages is None or rec.fine_step_s <= 0:
        return []
    per_step = step_s / rec.fine_step_s
    n_shifts = epoch_s / step_s
    n_times = rec.x.shape[-1]
    samples = step_s * n_times / epoch_s
    for v, what in ((per_step, "the fine-stage step"), (n_shifts, "shifts per epoch"),
                    (samples, "samples per step")):
        if v < 1 or abs(v - round(v)) > 1e-9:
            raise ValueError(f"shifted_grids: step {step_s} s gives a non-whole {what} ({v:g})")
    per_epoch = int(round(epoch_s / rec.fine_step_s))
    n_fine = rec.n_epochs * per_epoch
    if len(rec.fine_stages) < n_fine:
        raise ValueError(f"{rec.id}: {len(rec.fine_stages)} fine stages do not cover "
                         f"{rec.n_epochs} epochs")
    n, m = rec.n_epochs - 1, rec.x.shape[1]
    flat = np.ascontiguousarray(rec.x.transpose(1, 0, 2)).reshape(m, -1)  # (M, n_epochs * S)
    out = []
    for k in range(1, int(round(n_shifts))):
        off = k * int(round(samples))
        x = flat[:, off : off + n * n_times].reshape(m, n, n_times).transpose(1, 0, 2)
        f0 = k * int(round(per_step))
        fine = np.asarray(rec.fine_stages[f0 : f0 + n * per_epoch])
        stages = np.asarray(majority_stages(fine, per_epoch, rec.id), dtype=np.int64)
        out.append(StageRecording(
            id=f"{rec.id}@{k * step_s:g}s", subject=rec.subject, dataset=rec.dataset,
            x=np.ascontiguousarray(x), mask=rec.mask, stages=stages, eeg_label=rec.eeg_label,
            fine_stages=fine, fine_step_s=rec.fine_step_s,
        ))
    return out


def stage_fractions(rec: StageRecording, n_classes: int = 5) -> np.ndarray | None:
    """``(n_epochs, n_classes)`` float32: the share of each stage among the scored fine stages
    each 30-s epoch covers (a transitional epoch's mixture; rows sum to 1, or 0 where no fine
    stage is scored). None without fine stages."""
    if rec.fine_stages is None or rec.fine_step_s <= 0:
        return None
    per_epoch = int(round(30.0 / rec.fine_step_s))
    fine = np.asarray(rec.fine_stages[: rec.n_epochs * per_epoch], dtype=np.int64)
    if len(fine) < rec.n_epochs * per_epoch:
        raise ValueError(f"{rec.id}: {len(fine)} fine stages do not cover {rec.n_epochs} epochs")
    blocks = fine.reshape(rec.n_epochs, per_epoch)  # (n, per_epoch)
    counts = np.stack([(blocks == c).sum(1) for c in range(n_classes)], axis=1)  # (n, C)
    total = counts.sum(1, keepdims=True)
    return (counts / np.maximum(total, 1)).astype(np.float32)


def load_store(
    path: Path, spec: PreprocessSpec, dataset: str | None = None
) -> list[StageRecording]:
    """Every staged recording in a store (optionally only ``dataset``), sorted by path: the
    list of :func:`iter_store`."""
    return list(iter_store(path, spec, dataset))


def iter_store(
    path: Path, spec: PreprocessSpec, dataset: str | None = None,
    failed: Failed | None = None,
) -> Iterator[StageRecording]:
    """Each staged recording in a store (optionally only ``dataset``), sorted by path, read when
    the caller asks for it.

    Raises ``DataError`` when a recording's preprocessing spec differs from ``spec`` (a
    model/store mismatch, the same for every recording), and when the store has no staged
    recording (after the last one). An unreadable store file raises ``DataError``; with a
    ``failed`` list it is logged, appended as ``(file, error)`` and skipped instead.
    """
    n_out = 0
    for file in open_store(Path(path)).paths():
        try:
            stored = StoredRecording(file)
        except DataError as err:
            skip_failed(file, err, failed)
            continue
        meta = stored.meta
        if dataset is not None and meta.dataset != dataset:
            continue
        if not meta.has_stages:
            log.warning("%s: no sleep stages; skipped", file)
            continue
        if meta.preprocess is not None:
            diffs = spec.mismatches(PreprocessSpec.from_json(json.dumps(meta.preprocess)))
            if diffs:  # the model's mismatch, the same for every file: stop
                raise DataError(
                    file, "preprocessing differs from the model's: " + "; ".join(diffs)
                )
        try:
            batch = stored.read(beats=False)
        except DataError as err:
            skip_failed(file, err, failed)
            continue
        x, mask = exg_input(batch, meta)
        n_out += 1
        yield StageRecording(
            id=meta.recording_id,
            subject=meta.subject or meta.recording_id,
            dataset=meta.dataset,
            x=x,
            mask=mask,
            stages=np.asarray(batch.labels["stage"], dtype=np.int64),
            eeg_label=next((c.label for c in meta.channels
                            if c.modality == Modality.EEG.value and c.role == "primary"),
                           None),
        )
    if not n_out and failed:
        raise none_readable(path, "recordings", failed)
    if not n_out:
        raise DataError(path, "no staged recording in the store")


def load_stage_recordings(
    path: Path, dataset: str, spec: PreprocessSpec,
    eeg_view_sets: Sequence[Sequence[str]] = (),
) -> list[StageRecording]:
    """The list of :func:`iter_stage_recordings`."""
    return list(iter_stage_recordings(path, dataset, spec, eeg_view_sets))


def iter_stage_recordings(
    path: Path, dataset: str, spec: PreprocessSpec,
    eeg_view_sets: Sequence[Sequence[str]] = (),
    failed: Failed | None = None,
) -> Iterator[StageRecording]:
    """A store (detected by its ``.parquet`` files), Sleep-EDF feature files (``dataset``
    :data:`SLEEP_EDF_FEATURES`) or else a raw ``dataset`` folder; stores and raw folders one
    recording at a time (:func:`iter_store`, :func:`iter_raw`). ``eeg_view_sets``: the model's
    ``SleepNetConfig.eeg_views`` (raw folders and feature files; a store holds one EEG channel
    per recording). ``failed``: as for :func:`iter_raw`."""
    if dataset == SLEEP_EDF_FEATURES:
        return iter(load_sleep_edf_feature_recordings(Path(path), eeg_view_sets, failed))
    if is_store(Path(path)):
        return iter_store(Path(path), spec, dataset=dataset or None, failed=failed)
    return iter_raw(dataset, Path(path), spec, eeg_view_sets, failed)


def without_signals(rec: StageRecording) -> StageRecording:
    """``rec`` with its model input dropped (``x`` becomes ``(n_epochs, M, 0)``; no band powers,
    no view rows), keeping what a report needs: ids, labels, stages and ``n_epochs``."""
    return dataclasses.replace(
        rec, x=np.zeros((rec.n_epochs, rec.x.shape[1], 0), dtype=np.float32), log_power=None,
        view_x=None, view_log_power=None,
    )


__all__ = ["FEATURE_EEG_LABEL", "FEATURE_EEG_LABELS", "SLEEP_EDF_FEATURES", "StageRecording",
           "is_store", "iter_raw", "iter_stage_recordings", "iter_store", "load_raw",
           "load_sleep_edf_feature_recordings", "load_stage_recordings", "load_store",
           "shifted_grids", "sleep_period", "stage_fractions", "without_signals"]

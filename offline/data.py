"""Training data from a Parquet store: random epoch windows (SSL) and per-recording sequences.

- :class:`StoreIndex` opens a store (``rtsleep.data.store`` layout, see docs/architecture.md),
  keeps the recordings with signals that pass a :class:`DataSelection`, checks they share one
  preprocessing spec, and reads epochs on demand through a row-group LRU cache (a whole night is
  never loaded at once; consecutive reads hit the cache).
- :func:`label_fraction_subset`: the papers' limited-label setting, by **subject** (seeded), so no
  subject is half in and half out.
- :class:`WindowSampler`: random windows of ``T`` consecutive epochs for self-supervised training
  (``T = 1`` for NeuroNet/SynthSleepNet, ``T = 16`` for MC2's sequence-level loss).
- :class:`LanePlanner`: the way the temporal module must train (the way the daemon infers). Each of
  ``B`` lanes plays whole recordings from their first epoch, in consecutive chunks of a random
  length; the recurrent state is carried from one chunk to the next and reset to zero when a lane
  starts a new recording. With a look-ahead of ``k`` epochs the output at arrival ``e`` is trained
  against the label of epoch ``e - k`` (and ``k`` masked padding epochs follow each recording so
  its last epochs get trained too). The planner's state is JSON, so training resumes exactly.

Shapes: ``M = len(EXG_MODALITIES) = 4``, ``S`` samples per epoch (3000), ``T`` epochs per window.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from offline.augment import AugmentConfig, augment_windows
from rtsleep.data.errors import DataError
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.recording import EXG_MODALITIES, Modality
from rtsleep.data.store import (
    StoredRecording,
    damaged_parquet,
    fixed_list_numpy,
    open_parquet,
    open_store,
)

log = logging.getLogger(__name__)

TASKS = ("stage", "apnea", "hypopnea")
"""Downstream tasks: 5-class stage, and per-epoch apnea / hypopnea presence."""


def parse_tasks(text: str) -> tuple[str, ...]:
    """``"stage"`` or several joined by ``+`` (``"stage+apnea+hypopnea"``); ``"all"`` = every
    task. The first task is the primary one (validation, logs)."""
    names = TASKS if text == "all" else tuple(t.strip() for t in text.split("+") if t.strip())
    bad = [t for t in names if t not in TASKS]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"task must be one or more of {TASKS} joined by '+', got {text!r}")
    return names

#: Event types whose presence in a recording shows its source scores respiratory events.
RESPIRATORY_EVENTS = (
    "apnea",
    "apnea_obstructive",
    "apnea_central",
    "apnea_mixed",
    "hypopnea",
)


@dataclass
class DataSelection:
    """Which recordings of a store to use (empty tuples = no restriction).

    Subjects may be given as ``"<subject>"`` or, where ids repeat across datasets, as
    ``"<dataset>/<subject>"``.
    """

    datasets: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    exclude_subjects: tuple[str, ...] = ()
    recordings: tuple[str, ...] = ()
    exclude_recordings: tuple[str, ...] = ()

    def accepts(self, dataset: str, subject: str, recording: str) -> bool:
        """True when a recording passes every filter."""
        if self.datasets and dataset not in self.datasets:
            return False
        keys = {subject, f"{dataset}/{subject}"}
        if self.subjects and not keys & set(self.subjects):
            return False
        if keys & set(self.exclude_subjects):
            return False
        if self.recordings and recording not in self.recordings:
            return False
        return recording not in self.exclude_recordings


class RecordingSource:
    """One store recording: metadata, labels and cached epoch reads of its ExG primaries."""

    def __init__(self, stored: StoredRecording, index: StoreIndex, key: int) -> None:
        self.path = stored.path
        self.meta = stored.meta
        self.key = key
        self._index = index
        mods = set(stored.meta.modalities)
        #: ``(M,)`` bool, which ExG modalities the recording has.
        self.mask = np.array([str(m) in mods for m in EXG_MODALITIES], dtype=bool)
        self.columns = {
            j: stored.meta.channel(str(m)).column
            for j, m in enumerate(EXG_MODALITIES)
            if self.mask[j]
        }
        self.n_times = {
            j: stored.meta.channel(str(m)).n_times
            for j, m in enumerate(EXG_MODALITIES)
            if self.mask[j]
        }
        sizes = stored.row_group_sizes()
        #: First epoch of each row group, then ``n_epochs``: ``(n_row_groups + 1,)``.
        self.row_group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._labels: dict[str, np.ndarray] | None = None

    @property
    def id(self) -> str:
        return self.meta.recording_id

    @property
    def subject(self) -> str:
        return self.meta.subject

    @property
    def subject_key(self) -> str:
        """``"<dataset>/<subject>"``: the unit of subject-wise splits (ids may repeat across
        datasets)."""
        return f"{self.meta.dataset}/{self.meta.subject}"

    @property
    def n_epochs(self) -> int:
        return int(self.meta.n_epochs)

    def labels(self) -> dict[str, np.ndarray]:
        """Label columns (``stage`` int8, flags bool), each ``(n_epochs,)``; cached."""
        if self._labels is None:
            with self._parquet() as pf:
                names = [n for n in pf.schema_arrow.names if not n.startswith("x:")]
                names = [n for n in names if n not in ("beat_t", "beat_hr")]
                table = pf.read(columns=names)
            self._labels = {
                n: np.asarray(table.column(n).to_numpy(zero_copy_only=False)) for n in names
            }
        return self._labels

    def scores_respiratory_events(self) -> bool:
        """Whether the source scored apnea/hypopnea events at all (else its flags mean nothing)."""
        counts = self.meta.event_counts
        return any(int(counts.get(k, 0)) > 0 for k in RESPIRATORY_EVENTS)

    def _parquet(self) -> pq.ParquetFile:
        """A fresh handle (not kept: a store may hold more files than the open-file limit)."""
        return open_parquet(self.path)

    def read_row_group(self, rg: int, n_times: int) -> np.ndarray:
        """Row group ``rg`` as float32 ``(rows, M, S)`` (zeros for missing modalities)."""
        rows = int(self.row_group_starts[rg + 1] - self.row_group_starts[rg])
        out = np.zeros((rows, len(EXG_MODALITIES), n_times), dtype=np.float32)
        if not self.columns:
            return out
        with self._parquet() as pf, damaged_parquet(self.path):
            table = pf.read_row_group(rg, columns=list(self.columns.values()))
        for j, col in self.columns.items():
            if self.n_times[j] != n_times:
                raise DataError(
                    self.path,
                    f"{col} has {self.n_times[j]} samples per epoch, model needs {n_times}",
                )
            out[:, j, :] = fixed_list_numpy(table.column(col), n_times)  # (rows, S)
        return out

    def read_epochs(self, start: int, stop: int, n_times: int) -> np.ndarray:
        """Epochs ``[start, stop)`` as float32 ``(stop - start, M, S)``; zeros outside the night."""
        n = stop - start
        out = np.zeros((n, len(EXG_MODALITIES), n_times), dtype=np.float32)
        lo, hi = max(start, 0), min(stop, self.n_epochs)
        if lo >= hi:
            return out
        first = int(np.searchsorted(self.row_group_starts, lo, side="right") - 1)
        last = int(np.searchsorted(self.row_group_starts, hi - 1, side="right") - 1)
        for rg in range(first, last + 1):
            block = self._index.cached_row_group(self, rg, n_times)  # (rows, M, S)
            b0 = int(self.row_group_starts[rg])
            a, b = max(lo, b0), min(hi, b0 + block.shape[0])
            out[a - start : b - start] = block[a - b0 : b - b0]
        return out

    def read_signal(self, start: int, stop: int, margin: int, n_times: int) -> np.ndarray:
        """Epochs ``[start, stop)`` concatenated in time with ``margin`` samples on each side:
        ``(M, 2 * margin + (stop - start) * S)`` float32 (zeros beyond the recording)."""
        pad_epochs = math.ceil(margin / n_times) if margin > 0 else 0
        block = self.read_epochs(start - pad_epochs, stop + pad_epochs, n_times)  # (n', M, S)
        sig = block.transpose(1, 0, 2).reshape(len(EXG_MODALITIES), -1)  # (M, n'*S)
        cut = pad_epochs * n_times - margin
        return sig[:, cut : sig.shape[1] - cut]


class StoreIndex:
    """The recordings of a store usable for training, plus a shared row-group cache.

    Args:
        root: store folder or single store file.
        selection: which recordings to keep.
        cache_mb: row-group cache budget in MB.
        require_signals: drop label-only recordings (no ExG signal column).
    """

    def __init__(
        self,
        root: str | Path,
        selection: DataSelection | None = None,
        cache_mb: float = 256.0,
        require_signals: bool = True,
    ) -> None:
        self.root = Path(root)
        selection = selection or DataSelection()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = int(cache_mb * 1e6)
        self._lock = threading.Lock()
        reader = open_store(self.root)
        self.sources: list[RecordingSource] = []
        specs: dict[str, str] = {}
        for stored in reader:
            meta = stored.meta
            if not selection.accepts(meta.dataset, meta.subject, meta.recording_id):
                continue
            if require_signals and not meta.modalities:
                log.debug("%s: no signals; skipped", stored.path)
                continue
            if not any(str(m) in meta.modalities for m in EXG_MODALITIES):
                log.debug("%s: no ExG modality; skipped", stored.path)
                continue
            src = RecordingSource(stored, self, len(self.sources))
            self.sources.append(src)
            specs[str(stored.path)] = json.dumps(meta.preprocess, sort_keys=True)
        if not self.sources:
            raise DataError(self.root, "no recording with ExG signals matches the selection")
        distinct = set(specs.values())
        if len(distinct) > 1:
            raise DataError(
                self.root, "recordings were preprocessed with different specs; re-ingest them"
            )
        self.preprocess = PreprocessSpec.from_json(distinct.pop())
        self.n_times = self.preprocess.n_times(Modality.EEG)
        self.sfreq = self.preprocess.for_modality(Modality.EEG).sfreq

    def __len__(self) -> int:
        return len(self.sources)

    def cached_row_group(self, src: RecordingSource, rg: int, n_times: int) -> np.ndarray:
        """Row group ``rg`` of ``src`` through the LRU cache."""
        key = (src.key, rg)
        with self._lock:  # a prefetch thread and validation may read at the same time
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            block = src.read_row_group(rg, n_times)
            self._cache[key] = block
            self._cache_bytes += block.nbytes
            while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
            return block


def label_fraction_subset(
    sources: Sequence[RecordingSource], fraction: float, seed: int
) -> list[RecordingSource]:
    """The recordings of a seeded random ``fraction`` of the subjects (at least one subject).

    Subjects are sorted before the seeded permutation, so the subset depends only on the subject
    ids, ``fraction`` and ``seed``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return list(sources)
    subjects = sorted({s.subject_key for s in sources})
    k = max(1, math.ceil(fraction * len(subjects)))
    rng = np.random.default_rng(seed)
    chosen = {subjects[i] for i in rng.permutation(len(subjects))[:k]}
    out = [s for s in sources if s.subject_key in chosen]
    log.info(
        "label fraction %.3g: %d of %d subjects, %d recordings",
        fraction, k, len(subjects), len(out),
    )
    return out


def split_subjects(
    sources: Sequence[RecordingSource], val_fraction: float, seed: int
) -> tuple[list[RecordingSource], list[RecordingSource]]:
    """Subject-wise seeded split into ``(train, validation)`` recordings.

    ``round(val_fraction * n_subjects)`` subjects (at least one when ``val_fraction > 0``, at most
    ``n_subjects - 1``) go to validation; ``val_fraction = 0`` keeps everything for training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return list(sources), []
    subjects = sorted({s.subject_key for s in sources})
    if len(subjects) < 2:
        raise DataError(
            sources[0].path if sources else "store",
            f"a validation split needs 2 or more subjects, have {len(subjects)}",
        )
    k = min(len(subjects) - 1, max(1, round(val_fraction * len(subjects))))
    rng = np.random.default_rng([seed, 1])
    val = {subjects[i] for i in rng.permutation(len(subjects))[:k]}
    return (
        [s for s in sources if s.subject_key not in val],
        [s for s in sources if s.subject_key in val],
    )


def _margin_samples(aug: AugmentConfig, index: StoreIndex) -> int:
    if aug == AugmentConfig.off():
        return 0
    return int(math.ceil(aug.margin_s(index.preprocess.epoch_s) * index.sfreq))


# ----------------------------------------------------------------------- SSL windows


@dataclass
class WindowBatch:
    """``x (B, T, M, S)`` float32 and ``mask (B, T, M)`` bool."""

    x: Tensor
    mask: Tensor


class WindowSampler:
    """Random windows of ``n_epochs`` consecutive epochs, uniform over all epochs of ``sources``.

    ``require`` lists modality indices a recording must have (e.g. ``(0,)`` = EEG for MC2).
    ``row_groups_per_batch = G > 0`` draws each batch from ``G`` random row groups (weighted by
    their number of window starts), so a step reads at most ``2 G`` row groups from disk however
    large the store: every window is still uniform over the store in expectation, but windows of
    one batch come from few places (a shuffle buffer in all but name). ``0`` draws every window
    independently.
    """

    def __init__(
        self,
        index: StoreIndex,
        sources: Sequence[RecordingSource],
        n_epochs: int,
        augment: AugmentConfig,
        require: Sequence[int] = (),
        row_groups_per_batch: int = 0,
    ) -> None:
        if n_epochs < 1:
            raise ValueError(f"window length must be >= 1 epoch, got {n_epochs}")
        self.index = index
        self.n_epochs = n_epochs
        self.augment = augment
        self.sources = [
            s for s in sources if s.n_epochs >= n_epochs and all(s.mask[j] for j in require)
        ]
        if not self.sources:
            need = [str(EXG_MODALITIES[j]) for j in require]
            raise DataError(
                index.root,
                f"no recording has {n_epochs} epochs" + (f" and modalities {need}" if need else ""),
            )
        if row_groups_per_batch < 0:
            raise ValueError(f"row_groups_per_batch must be >= 0, got {row_groups_per_batch}")
        self.row_groups_per_batch = row_groups_per_batch
        # Blocks of window starts, one per (recording, row group): (source, first, stop).
        blocks = []
        for i, src in enumerate(self.sources):
            last = src.n_epochs - n_epochs + 1
            for a, b in zip(src.row_group_starts[:-1], src.row_group_starts[1:], strict=True):
                if a < last:
                    blocks.append((i, int(a), int(min(b, last))))
        self.blocks = np.array(blocks, dtype=np.int64)  # (n_blocks, 3)
        counts = (self.blocks[:, 2] - self.blocks[:, 1]).astype(np.float64)
        self._p = counts / counts.sum()
        self.margin = _margin_samples(augment, index)

    def _starts(self, batch: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """``(source index, start epoch)`` of each window of a batch."""
        if self.row_groups_per_batch > 0:
            chosen = rng.choice(len(self.blocks), size=self.row_groups_per_batch, p=self._p)
            sizes = self.blocks[chosen, 2] - self.blocks[chosen, 1]
            picks = chosen[rng.choice(len(chosen), size=batch, p=sizes / sizes.sum())]
        else:
            picks = rng.choice(len(self.blocks), size=batch, p=self._p)
        out = []
        for b in picks:
            src_i, a, stop = (int(v) for v in self.blocks[b])
            out.append((src_i, int(rng.integers(a, stop))))
        return out

    def sample(self, batch: int, rng: np.random.Generator, gen: torch.Generator) -> WindowBatch:
        """``batch`` random (augmented) windows."""
        t, s = self.n_epochs, self.index.n_times
        sig, masks = [], []
        for src_i, start in self._starts(batch, rng):
            src = self.sources[src_i]
            sig.append(src.read_signal(start, start + t, self.margin, s))  # (M, N)
            masks.append(np.broadcast_to(src.mask, (t, len(EXG_MODALITIES))))
        signal = torch.from_numpy(np.stack(sig))  # (B, M, N)
        mask = torch.from_numpy(np.stack(masks).copy())  # (B, T, M)
        x, mask = augment_windows(
            signal, mask, t, s, self.margin, self.index.sfreq, self.augment, gen
        )
        return WindowBatch(x=x, mask=mask)


# ----------------------------------------------------------------- sequence lanes


@dataclass
class SequenceDataConfig:
    """Sequence training: chunk lengths in epochs, label fraction, row-group cache size."""

    #: Random chunk length per step, uniform in ``[min_len, max_len]`` epochs.
    min_len: int = 20
    max_len: int = 60
    label_fraction: float = 1.0
    #: Row-group cache budget in MB.
    cache_mb: float = 256.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")


@dataclass
class SequenceBatch:
    """One training step of ``B`` lanes and ``T`` arrivals.

    ``x (B, T, M, S)``, ``mask (B, T, M)``; per task, ``target[task] (B, T)`` (int64 class or
    float 0/1) and ``valid[task] (B, T)`` bool (False = no label for that arrival); ``reset (B,)``
    bool (the lane starts a recording: zero its state first).
    """

    x: Tensor
    mask: Tensor
    target: dict[str, Tensor]
    valid: dict[str, Tensor]
    reset: Tensor


@dataclass
class _Lane:
    source: int = -1
    pos: int = 0


@dataclass
class LanePlanner:
    """Deterministic plan of which recording chunk each lane reads at each step (see module doc).

    ``lengths`` are recording lengths in epochs (plus the look-ahead padding).
    """

    lengths: list[int]
    n_lanes: int
    min_len: int
    max_len: int
    seed: int
    lanes: list[_Lane] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)
    rng_state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ValueError("lane planner needs at least one recording")
        if not self.lanes:
            self.lanes = [_Lane() for _ in range(self.n_lanes)]
        self._rng = np.random.default_rng(self.seed)
        if self.rng_state:
            self._rng.bit_generator.state = self.rng_state

    def _next_source(self) -> int:
        if not self.queue:
            self.queue = [int(i) for i in self._rng.permutation(len(self.lengths))]
        return self.queue.pop(0)

    def step(self) -> tuple[int, list[tuple[int, int, bool]]]:
        """Chunk length ``T`` and per lane ``(source index, start epoch, reset)``."""
        t = int(self._rng.integers(self.min_len, self.max_len + 1))
        plan = []
        for lane in self.lanes:
            reset = False
            if lane.source < 0 or lane.pos >= self.lengths[lane.source]:
                lane.source, lane.pos, reset = self._next_source(), 0, True
            plan.append((lane.source, lane.pos, reset))
            lane.pos += t
        self.rng_state = dict(self._rng.bit_generator.state)
        return t, plan

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (lanes, queue, rng)."""
        return {
            "lanes": [[ln.source, ln.pos] for ln in self.lanes],
            "queue": list(self.queue),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        lanes = state["lanes"]
        if len(lanes) != self.n_lanes:
            raise ValueError(f"lane state has {len(lanes)} lanes, planner has {self.n_lanes}")
        self.lanes = [_Lane(int(a), int(b)) for a, b in lanes]
        self.queue = [int(i) for i in state["queue"]]
        self._rng.bit_generator.state = state["rng"]
        self.rng_state = dict(state["rng"])


def task_targets(src: RecordingSource, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch targets and validity of ``src`` for ``task``: ``(n,)`` each.

    stage: int64 class, valid where scored; apnea / hypopnea: float 0/1, valid only when the
    source scored respiratory events at all (:meth:`RecordingSource.scores_respiratory_events`).
    """
    labels = src.labels()
    if task == "stage":
        stage = labels["stage"].astype(np.int64)
        return np.where(stage >= 0, stage, 0), stage >= 0
    if task in ("apnea", "hypopnea"):
        flags = labels[task].astype(np.float32)
        ok = src.scores_respiratory_events()
        return flags, np.full(flags.shape, ok, dtype=bool)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


class SequenceStream:
    """Batches for sequence training: a :class:`LanePlanner` over ``sources`` plus reads.

    Args:
        index: the store.
        sources: training recordings (already label-fraction filtered); those without a label
            for any of the tasks are dropped.
        task: one of :data:`TASKS` or several joined by ``+`` (:func:`parse_tasks`).
        n_lanes: batch size (lanes) on this process.
        cfg: chunk lengths.
        lookahead: the model's ``lookahead_epochs``.
        augment: augmentation (per chunk; time shift and rate jitter per chunk and epoch).
        seed: planner seed (combine with the rank under DDP).
    """

    def __init__(
        self,
        index: StoreIndex,
        sources: Sequence[RecordingSource],
        task: str,
        n_lanes: int,
        cfg: SequenceDataConfig,
        lookahead: int,
        augment: AugmentConfig,
        seed: int,
    ) -> None:
        self.tasks = parse_tasks(task)
        self.index = index
        self.lookahead = lookahead
        self.augment = augment
        self.sources = list(sources)
        #: Per recording: task -> (target, valid), each ``(n_epochs,)``.
        self.targets = [{t: task_targets(s, t) for t in self.tasks} for s in self.sources]
        usable = [
            i for i, per in enumerate(self.targets) if any(v.any() for _, v in per.values())
        ]
        if not usable:
            raise DataError(index.root, f"no training recording has labels for task {task!r}")
        self.sources = [self.sources[i] for i in usable]
        self.targets = [self.targets[i] for i in usable]
        self.planner = LanePlanner(
            lengths=[s.n_epochs + lookahead for s in self.sources],
            n_lanes=n_lanes,
            min_len=cfg.min_len,
            max_len=cfg.max_len,
            seed=seed,
        )
        self.margin = _margin_samples(augment, index)

    def next_batch(self, gen: torch.Generator) -> SequenceBatch:
        """The next chunk of every lane."""
        t, plan = self.planner.step()
        s, k = self.index.n_times, self.lookahead
        sig, masks, resets = [], [], []
        tgts: dict[str, list[np.ndarray]] = {task: [] for task in self.tasks}
        valids: dict[str, list[np.ndarray]] = {task: [] for task in self.tasks}
        for src_i, start, reset in plan:
            src = self.sources[src_i]
            sig.append(src.read_signal(start, start + t, self.margin, s))  # (M, N)
            arrivals = np.arange(start, start + t)  # (T,)
            inside = arrivals < src.n_epochs
            masks.append(inside[:, None] & src.mask[None, :])  # (T, M)
            lab = arrivals - k
            ok = (lab >= 0) & (lab < src.n_epochs)
            lab_c = np.clip(lab, 0, src.n_epochs - 1)
            for task, (target, valid) in self.targets[src_i].items():
                tgts[task].append(target[lab_c])
                valids[task].append(ok & valid[lab_c])
            resets.append(reset)
        signal = torch.from_numpy(np.stack(sig))  # (B, M, N)
        mask = torch.from_numpy(np.stack(masks))  # (B, T, M)
        x, mask = augment_windows(
            signal, mask, t, s, self.margin, self.index.sfreq, self.augment, gen
        )
        return SequenceBatch(
            x=x,
            mask=mask,
            target={task: torch.from_numpy(np.stack(v)) for task, v in tgts.items()},
            valid={task: torch.from_numpy(np.stack(v)) for task, v in valids.items()},
            reset=torch.tensor(resets, dtype=torch.bool),
        )

    def class_counts(self, task: str) -> np.ndarray:
        """Labelled epochs per class of ``task`` over the training recordings: ``(5,)`` for
        stage, ``(2,)`` (absent, present) for apnea / hypopnea."""
        n_cls = 5 if task == "stage" else 2
        counts = np.zeros(n_cls, dtype=np.int64)
        for per in self.targets:
            target, valid = per[task]
            counts += np.bincount(target[valid].astype(np.int64), minlength=n_cls)[:n_cls]
        return counts

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for resuming."""
        return {"planner": self.planner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.planner.load_state_dict(state["planner"])

"""Scorer: raw epochs of many beds -> causal preprocessing -> one batched model step -> results.

Per bed it keeps what carries context from epoch to epoch:

- one :class:`~rtsleep.data.preprocessing.ChannelPipeline` per primary channel (EEG, EOG, EMG,
  ECG; chosen once per bed and modality, when the modality's channels first appear, from the
  labels by the alias table's preference order), fed the raw samples of every epoch in order,
  scorable or not, so that filters never see a time jump, from the first epoch in which the
  channel received a sample (the epocher's fill before it would be a step for the filters);
- the EEG views: when the model declares sets of EEG derivations it averages
  (``cfg.eeg_views``) and the primary EEG is in one, the set's other derivations the bed has
  (chosen with the primary EEG, by label), each with its own pipeline and state row;
- the model's recurrent state (one row, plus one per EEG view, on the model's device; the
  published probabilities are the mean over the rows whose EEG is usable), which only a
  **scorable** epoch advances: an unscorable epoch is reported with its reason and leaves the
  state untouched (with an output delay, see below, it may be fed as an absent epoch);
- the next epoch index: an epoch already consumed is skipped (restart dedupe), a skipped index is
  reported as unscorable "no data", so indices never repeat and never jump.

**A new recording.** The model's context (its recurrent state, with the running band-power mean
of a running-normalised encoder) describes the night so far. After ``context_reset_s`` (default
:data:`CONTEXT_RESET_S`, one hour) of consecutive unscorable epochs (streams gone, electrodes
off, the daemon down) the next scorable epoch starts from a fresh state, as a restart does when
the saved state is older than ``daemon.state_max_age_s``: the bed is taken to hold a new
recording, possibly of another sleeper. Shorter gaps keep the context. A new sleeper hooked up
sooner is announced with ``rtsleep new-recording`` (:meth:`Scorer.new_recording`).

**Output delay.** A model with ``cfg.lookahead_epochs = k > 0`` gives, when epoch ``i`` arrives,
the output for the epoch fed ``k`` steps earlier (``SleepNet`` module doc). The scorer keeps the
fed epochs of each bed in a delay line and releases results strictly in index order: a scored
epoch's result ``k`` epochs after it ends. An unscorable epoch is fed as an *absent* epoch (all
modalities masked, as training pads the end of a recording) while a scorable epoch still waits
in the line, so a gap or a vanished stream flushes the line on time; otherwise it leaves the state
untouched. :meth:`Scorer.flush` feeds absent epochs until nothing waits (the end of a file, a
shutdown). The line is persisted with the bed (:meth:`Scorer.bed_state`), so a restart publishes
what was waiting. With ``k = 0`` the line is empty between calls and nothing of this shows.

:meth:`Scorer.score` takes the ready epochs of all beds at once and runs the model on one batch per
round (round ``r`` holds the ``r``-th pending epoch of every bed, so a bed's epochs stay in
order). ``rtsleep score`` drives the very same code with batch 1, which is why its output equals
what the daemon publishes.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtsleep.daemon.epocher import EpochBlock, EpochChannel
from rtsleep.daemon.messages import ChannelQuality, stage_message
from rtsleep.daemon.quality import EpochQuality
from rtsleep.daemon.state import BedState
from rtsleep.data.channels import eeg_views, preference_rank, too_slow_for_model
from rtsleep.data.preprocessing import ChannelPipeline, PreprocessSpec
from rtsleep.data.recording import EPOCH_S, EXG_MODALITIES, Modality
from rtsleep.models.ensemble import route_derivation

log = logging.getLogger(__name__)

CONTEXT_RESET_S = 3600.0
"""Default ``context_reset_s``: unscorable time after which a bed's model context starts afresh."""


@dataclass
class EpochResult:
    """The outcome for one epoch of one bed; ``probs`` is ``None`` when unscorable.

    ``probs``: W, N1, N2, N3, R. ``used``: the modalities fed to the model (others masked).
    """

    bed: str
    index: int
    start: float | None
    end: float | None
    probs: list[float] | None
    apnea_prob: float | None
    hypopnea_prob: float | None
    reason: str | None
    quality: EpochQuality | None
    used: tuple[Modality, ...] = ()
    ready_at: float = 0.0

    @property
    def scored(self) -> bool:
        return self.probs is not None and self.reason is None

    @property
    def stage_index(self) -> int | None:
        if self.probs is None or self.reason is not None:
            return None
        return int(max(range(len(self.probs)), key=lambda i: self.probs[i]))  # type: ignore[index]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given.

    Raises ``ValueError`` when CUDA is asked for and not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device is {device!r} but CUDA is not available")
    return torch.device(device)


def ranked_by_label(channels: Sequence[EpochChannel], modality: Modality) -> list[EpochChannel]:
    """The channels of ``modality``, preferred first by label (alias-table order, then stream
    order). Label-only (no data checks), so that a choice made from them is the same live and
    offline, and stays fixed for the night. ExG channels slower than ``MIN_EXG_SFREQ`` are left
    out."""
    cands = [
        (preference_rank(c.label, modality), i, c)
        for i, c in enumerate(channels)
        if c.modality == modality and not too_slow_for_model(modality, c.sfreq)
    ]
    return [c for _, _, c in sorted(cands, key=lambda t: (t[0], t[1]))]


def choose_primary(channels: Sequence[EpochChannel], modality: Modality) -> EpochChannel | None:
    """The preferred channel of ``modality`` (:func:`ranked_by_label`), or None."""
    ranked = ranked_by_label(channels, modality)
    return ranked[0] if ranked else None


def fill_nonfinite(x: np.ndarray) -> np.ndarray:
    """Replace NaN/inf by the last finite value before (else the first after, else 0); copy.

    The filters must never see NaN; those samples are already flagged by the quality check.
    """
    x = np.array(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    good = np.flatnonzero(~bad)
    if good.size == 0:
        return np.zeros_like(x)
    idx = np.maximum.accumulate(np.where(bad, 0, np.arange(x.size)))  # last good index so far
    idx = np.where(bad & (np.arange(x.size) < good[0]), good[0], idx)
    return x[idx]


class _Bed:
    """Per-bed context: primary channels, their pipelines, recurrent state, counters."""

    def __init__(self, bed: str, state: dict[str, torch.Tensor],
                 derivation: str | None = None) -> None:
        self.bed = bed
        self.state = state
        #: The bed's EEG derivation kind when configured (None: read from the EEG label).
        self.derivation = derivation
        self.primary: dict[Modality, str] | None = None
        #: EEG channels scored beside the primary one (the model's ``eeg_views``), one state row
        #: each after the primary's; chosen with the primary EEG channel.
        self.views: list[str] = []
        self.pipelines: dict[str, ChannelPipeline] = {}
        self.pending_pipeline_states: dict[str, dict[str, Any]] = {}
        self.next_epoch = 0
        self.anchor: float | None = None
        self.n_scored = 0
        self.n_unscorable = 0
        #: Unscorable epochs since the last scorable one (the new-recording rule).
        self.unscorable_run = 0
        #: The scorable epoch of a new recording: the context is reset just before it is fed.
        self.reset_at: EpochResult | None = None
        #: Results not yet released, in index order (the output delay).
        self.pending: deque[EpochResult] = deque()
        #: What each model step of the delay line fed: the result awaiting that step's output, or
        #: ``None`` for an absent epoch (its output is dropped). At most ``k`` between calls.
        self.line: deque[EpochResult | None] = deque()

    @property
    def rows(self) -> int:
        """Model rows (batch entries) of this bed: the primary EEG and each view."""
        return 1 + len(self.views)

    def waiting(self) -> bool:
        """Whether a scorable epoch waits in the delay line for its output."""
        return any(r is not None for r in self.line)

    def count_unscorable(self) -> None:
        """One more unscorable epoch: the total and the current run (the new-recording rule)."""
        self.n_unscorable += 1
        self.unscorable_run += 1


class Scorer:
    """Scores ready epochs of many beds with one model; see the module docstring.

    ``model`` must provide ``step(x (B, M, S), mask (B, M), state) -> output`` with
    ``stage_probs (B, 5)``, ``apnea_prob (B,)``, ``hypopnea_prob (B,)`` and
    ``init_state(batch) -> dict[str, Tensor]`` (``rtsleep.models.SleepNet`` or
    ``SleepNetEnsemble``). ``heads``: the
    heads to report (see :func:`trained_heads`); the others' probabilities are ``None``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec: PreprocessSpec,
        model_id: str,
        device: torch.device | str = "cpu",
        max_batch: int = 256,
        heads: Collection[str] = ("stage", "apnea", "hypopnea"),
        context_reset_s: float = CONTEXT_RESET_S,
    ) -> None:
        if not context_reset_s >= 0:
            raise ValueError(f"context_reset_s must be >= 0, got {context_reset_s}")
        #: Consecutive unscorable epochs after which a bed's context starts afresh (0: never).
        self.context_reset_epochs = math.ceil(context_reset_s / EPOCH_S)
        self.device = torch.device(device)
        #: Heads whose outputs are reported; an untrained head's output is ``None``.
        self.heads = frozenset(heads)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.model_id = model_id
        self.max_batch = int(max_batch)
        self.n_times = spec.n_times(Modality.EEG)
        for m in EXG_MODALITIES:
            if spec.n_times(m) != self.n_times:
                raise ValueError(f"preprocess spec: {m} gives {spec.n_times(m)} samples per epoch,"
                                 f" EEG {self.n_times}; the model needs one length")
        self.beds: dict[str, _Bed] = {}

    # ------------------------------------------------------------------ beds
    def _fresh_state(self, rows: int = 1) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            state = self.model.init_state(rows)  # type: ignore[operator]
        return {k: v.to(self.device) for k, v in state.items()}

    def add_bed(self, bed: str, restored: BedState | None = None,
                derivation: str | None = None) -> None:
        """Register a bed, optionally continuing from a persisted :class:`BedState`.
        ``derivation``: the kind of the bed's EEG derivation
        (:data:`~rtsleep.data.channels.DERIVATION_KINDS`) when its label does not say; None
        reads it from the label."""
        b = _Bed(bed, self._fresh_state(), derivation)
        if restored is not None:
            if restored.model_id != self.model_id:
                raise ValueError(f"bed {bed}: state from model {restored.model_id[:12]}, "
                                 f"running {self.model_id[:12]}")
            views = restored.extra.get("eeg_views", [])
            if not isinstance(views, list) or not all(isinstance(v, str) for v in views):
                raise ValueError(f"bed {bed}: saved eeg_views must be a list of labels")
            b.views = list(views)
            b.state = self._fresh_state(b.rows)
            fresh = b.state
            for k, v in fresh.items():
                if k not in restored.recurrent or restored.recurrent[k].shape != v.shape:
                    raise ValueError(f"bed {bed}: saved recurrent state {k!r} missing or of "
                                     "another shape")
            b.state = {k: restored.recurrent[k].to(self.device, v.dtype) for k, v in fresh.items()}
            b.next_epoch = restored.next_epoch
            b.anchor = restored.anchor_lsl
            prim = restored.extra.get("primary")
            if isinstance(prim, dict):
                b.primary = {Modality(m): str(lbl) for m, lbl in prim.items()}
            b.pending_pipeline_states = {k: dict(v) for k, v in restored.pipelines.items()}
            b.n_scored = int(restored.extra.get("epochs_scored", 0))
            b.n_unscorable = int(restored.extra.get("epochs_unscorable", 0))
            b.unscorable_run = int(restored.extra.get("unscorable_run", 0))
            self._restore_line(b, restored.extra.get("delay_line"))
        # the configured derivation (or, restored, the saved EEG label's) from the first epoch;
        # a changed config takes effect on restart
        self._route(b)
        self.beds[bed] = b

    @property
    def delay(self) -> int:
        """The model's output delay ``k``, epochs."""
        return int(getattr(getattr(self.model, "cfg", None), "lookahead_epochs", 0))

    def _restore_line(self, b: _Bed, saved: Any) -> None:
        """Rebuild the delay line persisted by :meth:`bed_state` (``None``: an empty line)."""
        if saved is None:
            return
        try:
            pending = {int(r["index"]): EpochResult(
                bed=b.bed, index=int(r["index"]), start=r["start"], end=r["end"], probs=None,
                apnea_prob=None, hypopnea_prob=None, reason=r["reason"], quality=None,
                used=tuple(Modality(m) for m in r["used"]), ready_at=time.perf_counter(),
            ) for r in saved["pending"]}
            line = [None if i is None else pending[int(i)] for i in saved["line"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bed {b.bed}: saved delay line is malformed ({err})") from None
        if len(line) > self.delay:
            raise ValueError(f"bed {b.bed}: saved delay line of {len(line)} steps, the model "
                             f"delays {self.delay}")
        b.pending = deque(sorted(pending.values(), key=lambda r: r.index))
        b.line = deque(line)

    def next_epoch(self, bed: str) -> int:
        """Index of the next epoch ``bed`` will consume (results of earlier ones are published
        or wait in the delay line)."""
        return self.beds[bed].next_epoch

    def anchor(self, bed: str) -> float | None:
        """The bed's anchor time (epoch 0 start), once known."""
        return self.beds[bed].anchor

    def counters(self, bed: str) -> tuple[int, int]:
        """``(epochs scored, epochs unscorable)`` of ``bed`` (across restarts)."""
        b = self.beds[bed]
        return b.n_scored, b.n_unscorable

    def bed_state(self, bed: str) -> BedState:
        """A snapshot of ``bed`` to persist (tensors copied to CPU)."""
        b = self.beds[bed]
        pipelines: dict[str, dict[str, Any]] = dict(b.pending_pipeline_states)
        pipelines.update({label: p.state_dict() for label, p in b.pipelines.items()})
        return BedState(
            bed=bed,
            model_id=self.model_id,
            next_epoch=b.next_epoch,
            anchor_lsl=b.anchor,
            recurrent={k: v.detach().to("cpu", copy=True) for k, v in b.state.items()},
            pipelines=pipelines,
            extra={
                "primary": {str(m): lbl for m, lbl in (b.primary or {}).items()},
                "epochs_scored": b.n_scored,
                "epochs_unscorable": b.n_unscorable,
                "unscorable_run": b.unscorable_run,
                "eeg_views": list(b.views),
                "delay_line": {
                    "pending": [{"index": r.index, "start": r.start, "end": r.end,
                                 "used": [str(m) for m in r.used], "reason": r.reason}
                                for r in b.pending],
                    "line": [None if r is None else r.index for r in b.line],
                },
            },
        )

    # ------------------------------------------------------------------ preprocessing
    def _pipeline(self, b: _Bed, ch: EpochChannel) -> ChannelPipeline:
        p = b.pipelines.get(ch.label)
        if p is None:
            p = ChannelPipeline(self.spec.for_modality(ch.modality), ch.sfreq)
            saved = b.pending_pipeline_states.pop(ch.label, None)
            if saved is not None:
                try:
                    p.load_state_dict(saved)  # type: ignore[arg-type]
                except ValueError as err:
                    log.warning("bed %s: %s; channel %s starts fresh", b.bed, err, ch.label)
            b.pipelines[ch.label] = p
        elif p.sfreq_in != ch.sfreq:
            log.warning("bed %s: %s changed rate %.6g -> %.6g Hz; its filters restart",
                        b.bed, ch.label, p.sfreq_in, ch.sfreq)
            p = ChannelPipeline(self.spec.for_modality(ch.modality), ch.sfreq)
            b.pipelines[ch.label] = p
        return p

    @staticmethod
    def _started(b: _Bed, ch: EpochChannel) -> bool:
        """Whether ``ch`` is fed to its pipeline: once it has received a sample (or has a pipeline
        or a saved pipeline state), so its filters start at its first sample, not at a fill."""
        return (ch.label in b.pipelines or ch.label in b.pending_pipeline_states
                or bool(ch.received.any()))

    def _choose_views(self, b: _Bed, channels: Sequence[EpochChannel]) -> None:
        """With the primary EEG channel: the EEG channels the model scores beside it
        (``cfg.eeg_views``; label-only, like the primary), each given a copy of the bed's state
        rows so far."""
        sets = getattr(getattr(self.model, "cfg", None), "eeg_views", ())
        primary = (b.primary or {}).get(Modality.EEG)
        if not sets or primary is None:
            return
        others = [c.label for c in ranked_by_label(channels, Modality.EEG) if c.label != primary]
        views = eeg_views(primary, others, sets)
        if not views:
            return
        b.views = views
        b.state = {k: torch.cat([v] * b.rows, dim=0) for k, v in b.state.items()}  # (R, ...)
        log.info("bed %s: EEG view(s) %s scored beside %s, stage probabilities averaged",
                 b.bed, ", ".join(views), primary)

    def _preprocess(self, b: _Bed, ep: EpochBlock) -> tuple[np.ndarray, np.ndarray, str | None]:
        """``x (R, M, S)`` float32, ``mask (R, M)`` bool (row 0 the primary channels, row
        ``r > 0`` the same with view ``r - 1`` as the EEG) and an unscorable reason (or
        ``None``)."""
        if b.primary is None:
            b.primary = {}
        for m in EXG_MODALITIES:  # chosen once per modality, when its channels first appear
            if m not in b.primary:
                ch = choose_primary(ep.channels, m)
                if ch is not None:
                    b.primary[m] = ch.label
                    log.info("bed %s: primary %s channel %s", b.bed, m, ch.label)
                    if m == Modality.EEG:
                        self._choose_views(b, ep.channels)
                        self._route(b, announce=True)
        by_label = {c.label: c for c in ep.channels}
        usable = {c.label for c in ep.quality.channels if c.usable}
        x = np.zeros((len(EXG_MODALITIES), self.n_times), dtype=np.float32)
        mask = np.zeros(len(EXG_MODALITIES), dtype=bool)
        problems: list[str] = []
        for i, m in enumerate(EXG_MODALITIES):
            label = b.primary.get(m)
            ch = by_label.get(label) if label is not None else None
            if ch is None or not self._started(b, ch):
                continue
            out = self._pipeline(b, ch).process(fill_nonfinite(ch.data))  # (S,)
            if out.shape[0] != self.n_times:
                problems.append(f"{label}: {ch.data.shape[0]} samples at {ch.sfreq:g} Hz gave "
                                f"{out.shape[0]} model samples, expected {self.n_times}")
                continue
            x[i] = out
            mask[i] = label in usable
        xs, masks = [x], [mask]
        eeg = EXG_MODALITIES.index(Modality.EEG)
        for label in b.views:  # the primary row with this view as its EEG
            xv, mv = x.copy(), mask.copy()
            xv[eeg], mv[eeg] = 0.0, False
            ch = by_label.get(label)
            if ch is not None and self._started(b, ch):
                out = self._pipeline(b, ch).process(fill_nonfinite(ch.data))  # (S,)
                if out.shape[0] == self.n_times:
                    xv[eeg], mv[eeg] = out, label in usable
                else:
                    log.debug("bed %s: EEG view %s gave %d samples; masked", b.bed, label,
                              out.shape[0])
            xs.append(xv)
            masks.append(mv)
        x_rows, m_rows = np.stack(xs), np.stack(masks)  # (R, M, S), (R, M)
        reason: str | None = None
        if ep.quality.unscorable:
            reason = ep.quality.reason or "unscorable"
        elif problems:
            reason = "; ".join(problems)
        elif not m_rows.any():
            reason = "no usable ExG channel"
        return x_rows, m_rows, reason

    # ------------------------------------------------------------------ scoring
    def _gap_results(self, b: _Bed, upto: int) -> list[EpochResult]:
        out = []
        while b.next_epoch < upto:
            k = b.next_epoch
            start = None if b.anchor is None else b.anchor + k * EPOCH_S
            out.append(EpochResult(
                bed=b.bed, index=k, start=start, end=None if start is None else start + EPOCH_S,
                probs=None, apnea_prob=None, hypopnea_prob=None,
                reason="no data (daemon not running or all streams absent)", quality=None,
                ready_at=time.perf_counter(),
            ))
            b.count_unscorable()
            b.next_epoch += 1
        return out

    @torch.no_grad()
    def _step(self, beds: list[_Bed], x: np.ndarray, mask: np.ndarray) -> list[
            tuple[list[float], float, float]]:
        """One model step for ``beds`` with ``x (N, M, S)`` and ``mask (N, M)``, ``N`` the sum of
        the beds' rows. A bed's outputs are the mean over its rows that have their EEG (all its
        rows when none has)."""
        keys = list(beds[0].state)
        rows = [b.rows for b in beds]
        state = {k: torch.cat([b.state[k] for b in beds], dim=0) for k in keys}  # (N, ...)
        xt = torch.from_numpy(x).to(self.device)
        mt = torch.from_numpy(mask).to(self.device)
        out = self.model.step(xt, mt, state)  # type: ignore[operator]
        for k in keys:
            parts = state[k].split(rows, dim=0)  # per bed (R, ...)
            for b, part in zip(beds, parts, strict=True):
                b.state[k] = part.clone()
        probs = out.stage_probs.detach().double().cpu().numpy()  # (N, 5)
        apnea = out.apnea_prob.detach().double().cpu().numpy().reshape(-1)  # (N,)
        hypo = out.hypopnea_prob.detach().double().cpu().numpy().reshape(-1)  # (N,)
        eeg = mask[:, EXG_MODALITIES.index(Modality.EEG)]  # (N,)
        res = []
        lo = 0
        for r in rows:
            sel = np.arange(lo, lo + r)
            if r > 1 and eeg[sel].any():
                sel = sel[eeg[sel]]
            res.append((probs[sel].mean(axis=0).tolist(), float(apnea[sel].mean()),
                        float(hypo[sel].mean())))
            lo += r
        return res

    @staticmethod
    def _as_rows(b: _Bed, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x (R, M, S)`` and ``mask (R, M)`` for the bed's current rows: an absent epoch queued
        before the bed's EEG views were chosen is repeated for each."""
        if x.shape[0] == b.rows:
            return x, mask
        if x.shape[0] != 1:
            raise ValueError(f"bed {b.bed}: {x.shape[0]} input rows for {b.rows} model rows")
        return np.repeat(x, b.rows, axis=0), np.repeat(mask, b.rows, axis=0)

    def _absent(self, b: _Bed) -> tuple[np.ndarray, np.ndarray]:
        """An absent epoch: ``x (R, M, S)`` zeros, ``mask (R, M)`` all False."""
        return (np.zeros((b.rows, len(EXG_MODALITIES), self.n_times), dtype=np.float32),
                np.zeros((b.rows, len(EXG_MODALITIES)), dtype=bool))

    def _feed(self, batch: list[tuple[_Bed, np.ndarray, np.ndarray, EpochResult | None]]) -> None:
        """One batched step per chunk; each bed's delay line takes the fed entry and hands the
        step's output to the entry ``k`` steps back (``None`` entries: absent epochs)."""
        k = self.delay
        for b, _, _, res in batch:
            if res is not None and res is b.reset_at:
                self._reset_context(b, f"no scorable epoch for {self.context_reset_epochs} "
                                       "epochs or more; a new recording")
        for lo in range(0, len(batch), self.max_batch):
            chunk = batch[lo : lo + self.max_batch]
            try:
                fed = [self._as_rows(b, x, m) for b, x, m, _ in chunk]
                xs = np.concatenate([f[0] for f in fed])  # (N, M, S), N = the beds' rows
                ms = np.concatenate([f[1] for f in fed])  # (N, M)
                outs = self._step([c[0] for c in chunk], xs, ms)
            except (RuntimeError, ValueError) as err:  # state untouched: not written back
                log.error("model step failed for %d bed(s): %s", len(chunk), err)
                for b, _, _, res in chunk:
                    if res is not None:
                        res.reason = f"model error: {err}"
                        b.n_scored -= 1
                        b.n_unscorable += 1
                continue
            for (b, _, _, res), (p, a, h) in zip(chunk, outs, strict=True):
                b.line.append(res)
                if len(b.line) <= k:
                    continue  # the output refers to an epoch before the stream (nothing yet)
                head = b.line.popleft()
                if head is None:
                    continue
                head.probs = p
                head.apnea_prob = a if "apnea" in self.heads and math.isfinite(a) else None
                head.hypopnea_prob = (h if "hypopnea" in self.heads and math.isfinite(h)
                                      else None)

    def _reset_context(self, b: _Bed, why: str) -> None:
        """A new recording on ``b`` (module doc): results still waiting in the delay line get
        their outputs first, then the recurrent state and the line start afresh."""
        self._drain([b])
        b.reset_at = None
        b.unscorable_run = 0
        b.state = self._fresh_state(b.rows)
        self._route(b)
        b.line.clear()
        log.info("bed %s: %s, the model context starts fresh", b.bed, why)

    def _route(self, b: _Bed, announce: bool = False) -> None:
        """Point the bed's state at the ensemble members for its EEG derivation (a grouped
        ensemble; nothing otherwise): the configured kind, else the one the bed's primary EEG
        label names."""
        label = (b.primary or {}).get(Modality.EEG)
        group = route_derivation(self.model, b.state, label, b.derivation)
        if group is not None and announce:
            how = "configured" if b.derivation else "from its label"
            log.info("bed %s: EEG %s (%s) scored by the model's %r members", b.bed, label,
                     how, group)

    def new_recording(self, bed: str) -> list[EpochResult]:
        """A new sleeper on ``bed`` (``rtsleep new-recording``): the results waiting in the delay
        line get their outputs (the epochs after them treated as missing), then the model
        context starts afresh. Returns the results released; epoch indices continue."""
        b = self.beds[bed]
        self._reset_context(b, "a new recording was requested")
        return self._release(b)

    @staticmethod
    def _release(b: _Bed) -> list[EpochResult]:
        """Pop the bed's finished results in index order (up to the first one still waiting)."""
        out = []
        while b.pending and (b.pending[0].reason is not None or b.pending[0].probs is not None):
            out.append(b.pending.popleft())
        return out

    def score(self, epochs: Sequence[EpochBlock],
              ready_at: Sequence[float] | None = None) -> list[EpochResult]:
        """Score the ready epochs of any beds; the results released, in per-bed epoch order.

        ``ready_at``: per epoch, the ``time.perf_counter()`` when it became complete (default:
        now), carried into the results as the latency origin. Epochs of unknown beds raise
        ``KeyError``. An epoch whose index is below the bed's next index is dropped (already
        consumed); a jump forward first yields "no data" results. With an output delay the
        results of the last epochs wait in the delay line (module doc).
        """
        now = time.perf_counter()
        times = list(ready_at) if ready_at is not None else [now] * len(epochs)
        if len(times) != len(epochs):
            raise ValueError(f"{len(epochs)} epochs but {len(times)} ready times")
        queues: dict[str, list[tuple[EpochBlock, float]]] = {}
        for ep, t in zip(epochs, times, strict=True):
            if ep.bed not in self.beds:
                raise KeyError(f"unknown bed {ep.bed!r}")
            queues.setdefault(ep.bed, []).append((ep, t))
        for q in queues.values():
            q.sort(key=lambda e: e[0].index)
        touched: dict[str, _Bed] = {}
        while any(queues.values()):
            round_eps = [q.pop(0) for q in queues.values() if q]
            # one bed may need several steps in a round (gap epochs fed as absent): sub-rounds
            feeds: dict[str, list[tuple[np.ndarray, np.ndarray, EpochResult | None]]] = {}
            for ep, t_ready in round_eps:
                b = self.beds[ep.bed]
                if ep.index < b.next_epoch:
                    log.debug("bed %s: epoch %d already consumed, skipped", b.bed, ep.index)
                    continue
                touched[b.bed] = b
                if b.anchor is None:
                    b.anchor = ep.start_lsl - ep.index * EPOCH_S
                fed = feeds.setdefault(b.bed, [])
                for gap in self._gap_results(b, ep.index):
                    self._queue_unscorable(b, gap, fed)
                try:
                    x, mask, reason = self._preprocess(b, ep)
                except (ValueError, KeyError) as err:
                    log.error("bed %s epoch %d: %s", b.bed, ep.index, err)
                    x, mask = self._absent(b)
                    reason = f"preprocessing error: {err}"
                res = EpochResult(
                    bed=b.bed, index=ep.index, start=ep.start_lsl, end=ep.end_lsl, probs=None,
                    apnea_prob=None, hypopnea_prob=None, reason=reason, quality=ep.quality,
                    used=tuple(m for i, m in enumerate(EXG_MODALITIES) if mask[:, i].any()),
                    ready_at=t_ready,
                )
                b.next_epoch = ep.index + 1
                if reason is None:
                    if 0 < self.context_reset_epochs <= b.unscorable_run:
                        b.reset_at = res  # _feed starts a fresh context before feeding it
                    b.unscorable_run = 0
                    b.pending.append(res)
                    fed.append((x, mask, res))
                    b.n_scored += 1
                else:
                    b.count_unscorable()
                    self._queue_unscorable(b, res, fed)
            depth = max((len(f) for f in feeds.values()), default=0)
            for j in range(depth):
                self._feed([(self.beds[bed], *f[j]) for bed, f in feeds.items() if j < len(f)])
        return [r for b in touched.values() for r in self._release(b)]

    def _queue_unscorable(
        self, b: _Bed, res: EpochResult,
        fed: list[tuple[np.ndarray, np.ndarray, EpochResult | None]],
    ) -> None:
        """Queue an unscorable result; feed it as an absent epoch if a scorable epoch will still
        wait in the delay line when it is fed (the line then holds the last ``k`` entries of what
        it holds now and of this round's feeds), so the line keeps moving."""
        b.pending.append(res)
        k = self.delay
        if k == 0:
            return
        line_then = [*b.line, *(r for _, _, r in fed)][-k:]
        if any(r is not None for r in line_then):
            fed.append((*self._absent(b), None))

    def flush(self, beds: Collection[str] | None = None) -> list[EpochResult]:
        """Feed absent epochs until no scorable epoch of ``beds`` (default all) waits in the delay
        line; returns the released results (nothing with ``k = 0``). The end of a recording, or a
        shutdown: the following epochs are treated as missing."""
        chosen = [self.beds[bed] for bed in (beds if beds is not None else list(self.beds))]
        self._drain(chosen)
        return [r for b in chosen for r in self._release(b)]

    def _drain(self, beds: list[_Bed]) -> None:
        """Feed absent epochs, batched, until no scorable epoch of ``beds`` waits in the line."""
        while True:
            active = [b for b in beds if b.waiting()]
            if not active:
                break
            self._feed([(b, *self._absent(b), None) for b in active])

    def fail(self, block: EpochBlock, reason: str, ready_at: float) -> list[EpochResult]:
        """Report ``block`` unscorable with ``reason`` (after an internal error), keeping the
        bed's index bookkeeping; the recurrent state is not touched."""
        b = self.beds[block.bed]
        if block.index < b.next_epoch:
            return []
        b.pending.extend(self._gap_results(b, block.index))
        b.pending.append(EpochResult(
            bed=b.bed, index=block.index, start=block.start_lsl, end=block.end_lsl, probs=None,
            apnea_prob=None, hypopnea_prob=None, reason=reason, quality=block.quality,
            ready_at=ready_at,
        ))
        b.next_epoch = block.index + 1
        b.count_unscorable()
        return self._release(b)

    def known_beds(self) -> Mapping[str, int]:
        """Bed -> next epoch index."""
        return {bed: b.next_epoch for bed, b in self.beds.items()}


def default_model_path() -> Path:
    """The bundled model: ``rtsleep/assets/default.safetensors``."""
    return Path(__file__).resolve().parents[1] / "assets" / "default.safetensors"


def load_scoring_model(
    path: str | Path, device: str = "auto"
) -> tuple[torch.nn.Module, PreprocessSpec, str, torch.device]:
    """Load a checkpoint for streaming: ``(model, preprocess spec, model id, device)``.

    ``path`` empty means the bundled model. Raises ``ValueError`` naming the file on any problem
    (missing file, bad checkpoint). A model with an output delay is streamed with its delay line
    (module doc).
    """
    from rtsleep.models.checkpoint import load_checkpoint_meta, load_predictor

    p = Path(path) if path else default_model_path()
    if not p.is_file():
        if p.exists():
            raise ValueError(f"{p}: not a regular file (a model is one .safetensors file)")
        hint = " (no bundled model is installed; set model.path)" if not path else ""
        raise ValueError(f"{p}: model file not found{hint}")
    dev = resolve_device(device)
    meta = load_checkpoint_meta(p)
    model = load_predictor(p)
    return model, meta.preprocess, meta.model_id, dev


def trained_heads(path: str | Path) -> frozenset[str]:
    """The heads a checkpoint's card says were trained (``card.training.trained_heads``).

    A checkpoint that does not say (the interim default model, hand-made ones) counts as a stage
    model: its apnea/hypopnea heads keep their initialisation and are not reported.
    """
    from rtsleep.models.checkpoint import load_checkpoint_meta

    p = Path(path) if path else default_model_path()
    card = load_checkpoint_meta(p).card or {}
    training = card.get("training") if isinstance(card, dict) else None
    heads = training.get("trained_heads") if isinstance(training, dict) else None
    if not isinstance(heads, list):
        return frozenset({"stage"})
    return frozenset(str(h) for h in heads) | {"stage"}


def result_message(res: EpochResult, model_id: str, utc_offset: float | None,
                   latency_ms: float | None) -> dict[str, Any]:
    """The stage message of one result (without ``seq``/``run``, which the publisher adds).

    ``utc_offset``: POSIX seconds minus the result's time base (LSL clock live; the recording's
    start time offline), or ``None`` when unknown.
    """
    quality: dict[str, ChannelQuality] = {}
    if res.quality is not None:
        for c in res.quality.channels:
            quality[c.label] = ChannelQuality(str(c.modality), c.clean_fraction,
                                              list(c.reasons))

    def utc(t: float | None) -> float | None:
        return None if (t is None or utc_offset is None) else t + utc_offset

    return stage_message(
        bed=res.bed, epoch=res.index, start_lsl=res.start, end_lsl=res.end,
        start_utc=utc(res.start), end_utc=utc(res.end), probs=res.probs,
        apnea_prob=res.apnea_prob, hypopnea_prob=res.hypopnea_prob, quality=quality,
        model_id=model_id, reason=res.reason, latency_ms=latency_ms,
    )

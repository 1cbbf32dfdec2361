"""Downstream training: ``finetune`` (whole model) and ``probe`` (frozen encoder, linear readout).

**The temporal module trains the way the daemon infers.** Batches come from
:class:`offline.data.SequenceStream`: each lane plays whole recordings from their first epoch in
consecutive chunks of random length; the Mamba state is carried from chunk to chunk (detached:
truncated backpropagation through time) and zeroed when a lane starts a recording; the model is
causal, and with ``lookahead_epochs = k`` the output at arrival ``e`` is trained on the label of
epoch ``e - k``. So ``SleepNet.step`` epoch by epoch over a night gives the same outputs as the
offline ``forward`` the model was trained with.

**Tasks.** ``stage`` (5-class cross-entropy, unscored epochs ignored), ``apnea`` and ``hypopnea``
(binary cross-entropy on the per-epoch flags; only recordings whose source scored respiratory
events count as labelled). Several at once (``"stage+apnea+hypopnea"`` or ``"all"``): the loss is
the sum of the tasks' losses, each over its own labelled epochs, so one checkpoint carries every
head the daemon publishes; the first task is the primary one (validation). The card's
``trained_heads`` says which heads were trained (the others keep their initialisation).

**Class imbalance** is handled by loss weighting, computed from the training labels:
``w_c = (N / (C * n_c)) ** class_weight_power`` for the ``C`` classes present (absent classes get
0), rescaled so that the average weight over the training epochs is 1; ``power = 0`` is plain
cross-entropy, ``1`` full inverse-frequency. Binary tasks use
``pos_weight = (n_negative / n_positive) ** class_weight_power``.

**Probe.** The encoder is frozen (eval mode, no gradients), the temporal module is made the
identity (every Mamba block's ``out_proj`` is zeroed and frozen, so a block returns its input),
and the heads are single linear layers; only the per-epoch LayerNorm + projection and the heads
train: a linear readout of the frozen epoch embedding, still a valid streaming ``SleepNet``.

**Validation.** ``val_fraction`` holds out a seeded fraction of the selected subjects; every
``eval_every`` steps their whole recordings are scored as the daemon would
(:mod:`offline.validation`) and the weights with the best ``select_metric`` are exported (the
selection never sees subjects outside the selection, e.g. a CV test fold).

**Limited labels.** ``data.label_fraction`` keeps a seeded random fraction of the training
*subjects* (:func:`offline.data.label_fraction_subset`).

Outputs in ``OUT``: ``model.safetensors`` (``save_model``, loadable by ``load_model`` and the
daemon), ``history.jsonl``, ``config.json``, ``train/`` (for ``--resume``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offline.augment import AugmentConfig
from offline.config import ModelSection, config_to_json
from offline.data import (
    DataSelection,
    SequenceDataConfig,
    SequenceStream,
    StoreIndex,
    label_fraction_subset,
    parse_tasks,
    split_subjects,
    task_targets,
)
from offline.train_loop import (
    DistInfo,
    LoopConfig,
    StepHook,
    export_model,
    init_distributed,
    refuse_earlier_run,
    seeded,
    train_loop,
)
from offline.validation import validation_metrics
from rtsleep.data.errors import DataError
from rtsleep.models import SleepNet, SleepNetConfig, load_model
from rtsleep.models.sleepnet import N_EPOCHS_KEY, SleepNetOutput

log = logging.getLogger(__name__)

MODES = ("finetune", "probe")


def _finetune_loop() -> LoopConfig:
    return LoopConfig(steps=300, batch_size=4, lr=1e-3)


@dataclass
class FinetuneConfig:
    """Everything ``rtsleep-train finetune`` / ``probe`` needs; TOML tables map to sub-configs."""

    task: str = "stage"
    model: ModelSection = field(default_factory=ModelSection)
    #: Pretrained checkpoint to start from (its model config wins over ``model``).
    init: str = ""
    #: Output delay in epochs; -1 keeps the model's.
    lookahead_epochs: int = -1
    loop: LoopConfig = field(default_factory=_finetune_loop)
    data: SequenceDataConfig = field(default_factory=SequenceDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    select: DataSelection = field(default_factory=DataSelection)
    class_weight_power: float = 0.5
    #: Learning-rate multiplier of the epoch encoder when fine-tuning (0 = frozen).
    encoder_lr_scale: float = 0.3
    #: Fraction of the selected *subjects* held out for validation (0 = none: the last weights
    #: are exported). With validation, the weights with the best ``select_metric`` are exported.
    val_fraction: float = 0.0
    #: Validate every this many steps (and at the end).
    eval_every: int = 50
    #: ``macro_f1`` or ``accuracy`` (pooled over the validation recordings).
    select_metric: str = "macro_f1"

    def __post_init__(self) -> None:
        parse_tasks(self.task)
        if self.class_weight_power < 0 or self.encoder_lr_scale < 0:
            raise ValueError("class_weight_power and encoder_lr_scale must be >= 0")
        if self.select_metric not in ("macro_f1", "accuracy") or self.eval_every < 1:
            raise ValueError("select_metric must be macro_f1 or accuracy, eval_every >= 1")


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Per-class loss weights from labelled-epoch ``counts (C,)`` (see the module doc)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("no labelled epoch to weight")
    n, c = counts.sum(), int(present.sum())
    w = np.zeros_like(counts)
    w[present] = (n / (c * counts[present])) ** power
    w *= n / float((w * counts).sum())  # mean weight over training epochs = 1
    return w


def positive_weight(counts: np.ndarray, power: float) -> float:
    """``pos_weight`` of a binary task from ``counts = (n_negative, n_positive)``."""
    neg, pos = float(counts[0]), float(counts[1])
    if pos == 0 or neg == 0:
        return 1.0
    return (neg / pos) ** power


class SequenceObjective(nn.Module):
    """Sequence loss of one or more tasks with the recurrent state carried across steps (see
    the module doc). The loss is the sum of the tasks' losses, each a mean over its labelled
    epochs of the batch.

    Args:
        net: the model.
        task: one task or several joined by ``+`` (:func:`offline.data.parse_tasks`).
        weights: ``{"stage": (5,) class weights}`` and/or ``{"apnea": pos_weight, ...}``;
            missing entries weigh 1.
        frozen_encoder: keep the encoder in eval mode.
    """

    class_weight: Tensor

    def __init__(
        self,
        net: SleepNet,
        task: str,
        weights: dict[str, Any] | None = None,
        frozen_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.tasks = parse_tasks(task)
        self.net = net
        weights = weights or {}
        self.pos_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks if t != "stage"}
        self.frozen_encoder = frozen_encoder
        stage_w = weights.get("stage")
        w = torch.ones(net.cfg.heads.n_outputs) if stage_w is None else torch.as_tensor(stage_w)
        self.register_buffer("class_weight", w.float(), persistent=False)
        self._carry: dict[str, Tensor] | None = None

    def train(self, mode: bool = True) -> SequenceObjective:
        """Like ``nn.Module.train``; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.frozen_encoder:
            self.net.encoder.eval()
        return self

    def carry_state(self) -> dict[str, Tensor]:
        """The recurrent state carried into the next step (empty before the first)."""
        return dict(self._carry) if self._carry is not None else {}

    def load_carry_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`carry_state` output."""
        self._carry = dict(state) if state else None

    def _state(self, b: int, reset: Tensor, ref: Tensor) -> dict[str, Tensor]:
        carry = self._carry
        if carry is None or carry[N_EPOCHS_KEY].shape[0] != b:
            return self.net.init_state(b, device=ref.device, dtype=ref.dtype)
        out = {}
        for k, v in carry.items():
            keep = ~reset.view(-1, *([1] * (v.dim() - 1)))  # (B, 1, ...)
            out[k] = torch.where(keep, v, torch.zeros_like(v))
        return out

    def _task_loss(
        self, out: SleepNetOutput, task: str, target: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(loss, accuracy)`` of one task over its labelled arrivals ``valid (B, T)``."""
        if task == "stage":
            logits = out.stage_logits[valid]  # (n, C)
            y = target[valid].long()  # (n,)
            if y.numel() == 0:
                return out.stage_logits.sum() * 0.0, valid.sum().float() * 0
            loss = F.cross_entropy(logits, y, weight=self.class_weight.to(logits.dtype))
            return loss, (logits.argmax(dim=-1) == y).float().mean()
        logit_all = out.apnea_logit if task == "apnea" else out.hypopnea_logit  # (B, T)
        logit = logit_all[valid]  # (n,)
        y_f = target[valid].to(logit.dtype)
        if y_f.numel() == 0:
            return logit_all.sum() * 0.0, valid.sum().float() * 0
        pos_weight = torch.tensor(self.pos_weights[task], dtype=logit.dtype, device=logit.device)
        loss = F.binary_cross_entropy_with_logits(logit, y_f, pos_weight=pos_weight)
        return loss, ((logit > 0).to(y_f.dtype) == y_f).float().mean()

    def forward(
        self, x: Tensor, mask: Tensor, reset: Tensor, **labels: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``x (B, T, M, S)``, ``mask (B, T, M)``, ``reset (B,)``; per task ``target_<task>``
        and ``valid_<task>`` ``(B, T)``."""
        state = self._state(x.shape[0], reset, x)
        out, new_state = self.net(x, mask, state)
        self._carry = {k: v.detach() for k, v in new_state.items()}
        total = x.new_zeros(())
        metrics: dict[str, Tensor] = {}
        for task in self.tasks:
            loss, acc = self._task_loss(
                out, task, labels[f"target_{task}"], labels[f"valid_{task}"]
            )
            total = total + loss
            key = "accuracy" if len(self.tasks) == 1 else f"{task}_accuracy"
            metrics[key] = acc.detach()
            if len(self.tasks) > 1:
                metrics[f"{task}_loss"] = loss.detach()
        return total, metrics


class SequenceBatches:
    """Adapter: :class:`SequenceStream` -> the training loop's batch-stream protocol."""

    def __init__(self, stream: SequenceStream) -> None:
        self.stream = stream

    def next(self, rng: np.random.Generator, gen: torch.Generator) -> dict[str, Tensor]:
        b = self.stream.next_batch(gen)
        out = {"x": b.x, "mask": b.mask, "reset": b.reset}
        for task in self.stream.tasks:
            out[f"target_{task}"] = b.target[task]
            out[f"valid_{task}"] = b.valid[task]
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


def _probe_config(cfg: SleepNetConfig) -> SleepNetConfig:
    return dataclasses.replace(cfg, heads=dataclasses.replace(cfg.heads, hidden=0, dropout=0.0))


def build_net(cfg: FinetuneConfig, index: StoreIndex, mode: str) -> SleepNet:
    """The model to train: ``cfg.init`` (checked against the store's preprocessing) or a fresh
    ``cfg.model``; for a probe, linear heads and an identity temporal module."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if cfg.init:
        init = load_model(cfg.init, expected_preprocess=index.preprocess)
        mcfg = init.cfg
        weights = init.state_dict()
    else:
        if mode == "probe":
            raise ValueError("probe needs a pretrained encoder (give --init)")
        mcfg = cfg.model.build()
        weights = None
    if cfg.lookahead_epochs >= 0:
        mcfg = dataclasses.replace(mcfg, lookahead_epochs=cfg.lookahead_epochs)
    if mode == "probe":
        mcfg = _probe_config(mcfg)
    net = SleepNet(mcfg)
    if weights is not None:
        if mode == "probe":
            weights = {k: v for k, v in weights.items() if not k.startswith("heads.")}
        missing, unexpected = net.load_state_dict(weights, strict=False)
        bad = [k for k in missing if not k.startswith("heads.")] + list(unexpected)
        if bad:
            raise ValueError(f"{cfg.init}: weights do not fit the model ({bad[:5]})")
    if mode == "probe":
        for p in net.encoder.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            for block in net.temporal.blocks():
                block.mixer.out_proj.weight.zero_()
                if block.mixer.out_proj.bias is not None:
                    block.mixer.out_proj.bias.zero_()
        for p in net.temporal.parameters():
            p.requires_grad_(False)
    return net.float().train()


def finetune(
    cfg: FinetuneConfig,
    store: str | Path,
    out: str | Path,
    *,
    mode: str = "finetune",
    resume: bool = False,
    hooks: Sequence[StepHook] = (),
    dist: DistInfo | None = None,
) -> Path:
    """Fine-tune (or ``mode="probe"``) on ``store`` for ``cfg.task``; returns the checkpoint path.

    Works in one process or under ``torchrun`` (DDP). ``resume`` continues ``out/train``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    refuse_earlier_run(Path(out), resume)  # before reading the store, which can take long
    dist = dist or init_distributed(cfg.loop.device)
    with seeded(cfg.loop.seed, cfg.loop.threads):
        return _finetune(cfg, Path(store), Path(out), mode, resume, hooks, dist)


def _finetune(
    cfg: FinetuneConfig,
    store: Path,
    out: Path,
    mode: str,
    resume: bool,
    hooks: Sequence[StepHook],
    dist: DistInfo,
) -> Path:
    index = StoreIndex(store, cfg.select, cache_mb=cfg.data.cache_mb)
    tasks = parse_tasks(cfg.task)
    primary = tasks[0]
    train_sources, val_sources = split_subjects(index.sources, cfg.val_fraction, cfg.loop.seed)
    val_sources = [s for s in val_sources if task_targets(s, primary)[1].any()]
    if cfg.val_fraction > 0 and not val_sources:
        raise DataError(index.root, f"no validation recording has labels for {primary!r}")
    sources = label_fraction_subset(train_sources, cfg.data.label_fraction, cfg.loop.seed)
    net = build_net(cfg, index, mode)
    stream = SequenceStream(
        index,
        sources,
        cfg.task,
        cfg.loop.batch_size,
        cfg.data,
        net.cfg.lookahead_epochs,
        cfg.augment,
        seed=cfg.loop.seed * 1000 + dist.rank,
    )
    counts = {t: stream.class_counts(t) for t in tasks}
    weights: dict[str, Any] = {}
    for t in tasks:
        if counts[t].sum() == 0:
            log.warning("%s: no labelled epoch in the training recordings; its loss is 0", t)
        elif t == "stage":
            weights[t] = class_weights(counts[t], cfg.class_weight_power)
            log.info("stage counts %s -> class weights %s", counts[t].tolist(),
                     np.round(weights[t], 3).tolist())
        else:
            weights[t] = positive_weight(counts[t], cfg.class_weight_power)
            log.info("%s counts %s -> pos_weight %.3g", t, counts[t].tolist(), weights[t])
    frozen = mode == "probe" or cfg.encoder_lr_scale == 0
    if frozen:
        for p in net.encoder.parameters():
            p.requires_grad_(False)
    objective = SequenceObjective(net, cfg.task, weights, frozen_encoder=frozen)
    enc_ids = {id(p) for p in net.encoder.parameters()}
    trainable = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    groups = [([p for _, p in trainable if id(p) not in enc_ids], 1.0)]
    enc = [p for _, p in trainable if id(p) in enc_ids]
    if enc:
        groups.append((enc, cfg.encoder_lr_scale))
    log.info(
        "%s %s on %d recordings (%d labelled epochs), %d trainable parameters",
        mode, cfg.task, len(stream.sources), int(counts[primary].sum()),
        sum(p.numel() for _, p in trainable),
    )
    config_json = config_to_json(cfg) + json.dumps({"mode": mode})
    evaluator = None
    if val_sources:
        log.info("validation on %d recordings of subjects %s", len(val_sources),
                 sorted({s.subject_key for s in val_sources}))

        def evaluator(obj: nn.Module) -> dict[str, float]:
            return validation_metrics(net, val_sources, primary, index.n_times)

    result = train_loop(
        objective,
        SequenceBatches(stream),
        cfg.loop,
        out,
        dist,
        param_groups=groups,
        resume=resume,
        config_json=config_json,
        hooks=list(hooks),
        desc=f"{mode} {cfg.task}",
        evaluator=evaluator,
        eval_every=cfg.eval_every,
        select_key=cfg.select_metric,
    )
    if result.best_state is not None:
        objective.load_state_dict(result.best_state)
        log.info("exporting the weights after %d steps (validation %s)", result.best_step,
                 result.best_metrics)
    config = json.loads(config_to_json(cfg))
    card = {
        "training": {
            "stage": mode,
            "task": cfg.task,
            "trained_heads": list(tasks),
            "steps": result.steps,
            "store": str(store),
            "init": cfg.init or None,
            "recordings": [s.id for s in stream.sources],
            "subjects": sorted({s.subject_key for s in stream.sources}),
            "class_counts": {t: c.tolist() for t, c in counts.items()},
            "validation_recordings": [s.id for s in val_sources],
            "selected_step": result.best_step,
            "validation": result.best_metrics,
            "final_loss": result.final_loss,
            "config": config,
        }
    }
    return export_model(net, out, index.preprocess, card, {"mode": mode, **config}, dist)

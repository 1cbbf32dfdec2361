"""``pretrain()``: train one self-supervised method on a store and export an rtsleep checkpoint.

Outputs in ``OUT``: ``model.safetensors`` (``save_model``; the encoder is pretrained, the temporal
module and heads keep their initialisation), ``history.jsonl`` (one line per step: loss, its
terms, lr, grad norm), ``config.json`` (the resolved config) and ``train/`` (training checkpoint for
``--resume``).
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
from torch import Tensor, nn

from offline.augment import AugmentConfig
from offline.config import ModelSection, config_to_json
from offline.data import DataSelection, StoreIndex, WindowSampler
from offline.pretrain.lora import merge_lora
from offline.pretrain.mc2 import MC2Config, MC2Objective
from offline.pretrain.neuronet import NeuroNetConfig, NeuroNetObjective
from offline.pretrain.synthsleepnet import SynthSleepNetConfig, SynthSleepNetObjective
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
from rtsleep.models import SleepNet, load_model

log = logging.getLogger(__name__)

METHODS = ("neuronet", "synthsleepnet", "mc2")


def _pretrain_loop() -> LoopConfig:
    return LoopConfig(steps=400, batch_size=16, lr=1e-3)


@dataclass
class PretrainConfig:
    """Everything ``rtsleep-train pretrain`` needs; TOML tables map to the sub-configs."""

    method: str = "neuronet"
    model: ModelSection = field(default_factory=ModelSection)
    #: Checkpoint to start from (synthsleepnet: a neuronet output). Its model config wins over
    #: ``model``.
    init: str = ""
    loop: LoopConfig = field(default_factory=_pretrain_loop)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    select: DataSelection = field(default_factory=DataSelection)
    cache_mb: float = 256.0
    #: Draw each batch from this many random row groups (0 = every window independently); see
    #: ``offline.data.WindowSampler``. Large stores on GPU: 8-32.
    row_groups_per_batch: int = 0
    neuronet: NeuroNetConfig = field(default_factory=NeuroNetConfig)
    synthsleepnet: SynthSleepNetConfig = field(default_factory=SynthSleepNetConfig)
    mc2: MC2Config = field(default_factory=MC2Config)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


class WindowStream:
    """Batch stream of random epoch windows (stateless: every draw comes from the step's RNGs)."""

    def __init__(self, sampler: WindowSampler, batch: int) -> None:
        self.sampler = sampler
        self.batch = batch

    def next(self, rng: np.random.Generator, gen: torch.Generator) -> dict[str, Tensor]:
        """``{"x": (B, T, M, S), "mask": (B, T, M)}``."""
        wb = self.sampler.sample(self.batch, rng, gen)
        return {"x": wb.x, "mask": wb.mask}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def build_net(cfg: PretrainConfig, index: StoreIndex) -> SleepNet:
    """The model to pretrain: from ``cfg.init`` when given, else ``cfg.model`` (mc2 forces the
    dual-branch encoder)."""
    if cfg.init:
        net = load_model(cfg.init, expected_preprocess=index.preprocess)
        net.train()
    else:
        if cfg.method == "synthsleepnet":
            log.warning("synthsleepnet without --init: the frame encoders start untrained "
                        "(the method expects neuronet-pretrained encoders)")
        mcfg = cfg.model.build()
        if cfg.method == "mc2" and mcfg.encoder != "dual_branch":
            mcfg = dataclasses.replace(mcfg, encoder="dual_branch")
        net = SleepNet(mcfg)
    want = "dual_branch" if cfg.method == "mc2" else "fusion"
    if net.cfg.encoder != want:
        raise ValueError(f"{cfg.method} needs the {want!r} encoder, model has {net.cfg.encoder!r}")
    return net


def build_objective(cfg: PretrainConfig, net: SleepNet) -> nn.Module:
    """The method's objective module around ``net``."""
    if cfg.method == "neuronet":
        return NeuroNetObjective(net, cfg.neuronet)
    if cfg.method == "synthsleepnet":
        return SynthSleepNetObjective(net, cfg.synthsleepnet)
    return MC2Objective(net, cfg.mc2)


def param_groups(
    cfg: PretrainConfig, objective: nn.Module
) -> list[tuple[list[nn.Parameter], float]]:
    """Trainable parameters with their lr scale: the encoder and the method's own modules (the
    temporal module and heads are not pretrained)."""
    enc_ids: set[int] = set()
    enc_scale = 1.0
    if isinstance(objective, SynthSleepNetObjective):
        enc_scale = cfg.synthsleepnet.encoder_lr_scale
        enc_ids = {id(p) for p in objective.encoder_parameters()}
    main: list[nn.Parameter] = []
    enc: list[nn.Parameter] = []
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("net.") and not name.startswith("net.encoder."):
            continue
        (enc if id(p) in enc_ids else main).append(p)
    groups = [(main, 1.0)]
    if enc:
        groups.append((enc, enc_scale))
    return groups


def pretrain(
    cfg: PretrainConfig,
    store: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    hooks: Sequence[StepHook] = (),
    dist: DistInfo | None = None,
) -> Path:
    """Pretrain ``cfg.method`` on ``store``; returns the path of the exported checkpoint.

    Works in one process or under ``torchrun`` (DDP). ``resume`` continues ``out/train``.
    """
    refuse_earlier_run(Path(out), resume)  # before reading the store, which can take long
    dist = dist or init_distributed(cfg.loop.device)
    with seeded(cfg.loop.seed, cfg.loop.threads):
        return _pretrain(cfg, Path(store), Path(out), resume, hooks, dist)


def _pretrain(
    cfg: PretrainConfig,
    store: Path,
    out: Path,
    resume: bool,
    hooks: Sequence[StepHook],
    dist: DistInfo,
) -> Path:
    index = StoreIndex(store, cfg.select, cache_mb=cfg.cache_mb)
    net = build_net(cfg, index)
    objective = build_objective(cfg, net)
    groups = param_groups(cfg, objective)
    t = cfg.mc2.seq_len if cfg.method == "mc2" else 1
    augment = cfg.augment
    if cfg.method != "synthsleepnet":
        # Modality masking only means something to the multimodal fusion; the per-modality
        # (neuronet) and EEG-only (mc2) objectives would just lose data.
        augment = dataclasses.replace(augment, drop_modality_p=0.0)
    sampler = WindowSampler(
        index,
        index.sources,
        t,
        augment,
        require=(0,) if cfg.method == "mc2" else (),
        row_groups_per_batch=cfg.row_groups_per_batch,
    )
    log.info(
        "pretrain %s on %d recordings (%d epochs), %d trainable parameters",
        cfg.method, len(sampler.sources), sum(s.n_epochs for s in sampler.sources),
        sum(p.numel() for g, _ in groups for p in g),
    )
    config_json = config_to_json(cfg)
    result = train_loop(
        objective,
        WindowStream(sampler, cfg.loop.batch_size),
        cfg.loop,
        out,
        dist,
        param_groups=groups,
        resume=resume,
        config_json=config_json,
        hooks=list(hooks),
        desc=f"pretrain {cfg.method}",
    )
    n_merged = merge_lora(net)
    if n_merged:
        log.info("merged %d LoRA adapters into the encoder weights", n_merged)
    config = json.loads(config_json)
    card = {
        "training": {
            "stage": "pretrain",
            "method": cfg.method,
            "steps": result.steps,
            "store": str(store),
            "recordings": [s.id for s in sampler.sources],
            "final_loss": result.final_loss,
            "config": config,
        }
    }
    return export_model(net, out, index.preprocess, card, config, dist)

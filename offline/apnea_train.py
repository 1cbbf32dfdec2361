"""``rtsleep-train apnea-train``: train the ECG apnea model (both variants) and its CV.

Each variant is two models trained independently on the same nights and averaged
(:class:`rtsleep.apnea.ecg_model.EcgApneaModel`):

* the feature GRU: full-night sequences with random crops, AdamW, binary cross-entropy, cosine
  learning rate (about 15 s per variant on one CPU thread for 34 nights);
* the trace CNN: shuffled minutes, AdamW with a one-cycle learning rate, binary cross-entropy, a
  random gain per trace (log-normal, sigma 0.2) as augmentation (about 35 s per variant).

The classes are left unweighted: apnea minutes are 38 % of the training minutes, and the
per-minute accuracy the task is judged on is best served by the plain likelihood.
Cross-validation is a fixed subject-wise K-fold (record ``i`` of the sorted ids goes to fold
``i mod K``); with K equal to the number of records it is leave-one-out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from torch import nn

from offline.apnea_data import ApneaNight, read_apnea_ecg_dir
from rtsleep.apnea.ecg_model import (
    DEFAULT_MODEL_PATH,
    VARIANTS,
    EcgApneaConfig,
    EcgApneaModel,
    EcgApneaNet,
    save_ecg_model,
)
from rtsleep.apnea.trace_model import EcgTraceConfig, EcgTraceNet
from rtsleep.data.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (per variant)."""

    epochs: int = 80
    lr: float = 5e-3
    weight_decay: float = 1e-3
    crop_minutes: int = 300
    batch: int = 8
    seed: int = 0


@dataclass(frozen=True)
class TraceTrainConfig:
    """Optimisation settings of the trace CNN (per variant)."""

    epochs: int = 12
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch: int = 128
    gain_log_std: float = 0.2
    seed: int = 0


def _stats(feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over all windows, NaN skipped (an all-NaN feature: 0 and 1)."""
    allf = np.concatenate(feats)  # (N, F)
    seen = np.isfinite(allf).any(axis=0)  # (F,)
    mean, std = np.zeros(allf.shape[1]), np.ones(allf.shape[1])
    mean[seen] = np.nanmean(allf[:, seen], axis=0)
    std[seen] = np.nanstd(allf[:, seen], axis=0)
    return mean, std


def train_variant(
    feats: list[np.ndarray], labels: list[np.ndarray], net_cfg: EcgApneaConfig, cfg: TrainConfig
) -> EcgApneaNet:
    """Train one variant on nights ``feats[i] (T_i, F)`` with labels ``(T_i,)``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = EcgApneaNet(net_cfg)
    net.set_normalisation(*_stats(feats))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    n = len(feats)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    for _ in range(cfg.epochs):
        net.train()
        order = torch.randperm(n, generator=gen).tolist()
        for b0 in range(0, n, cfg.batch):
            idx = order[b0 : b0 + cfg.batch]
            L = cfg.crop_minutes
            x = np.full((len(idx), L, feats[0].shape[1]), np.nan, dtype=np.float32)
            y = np.zeros((len(idx), L), dtype=np.float32)
            m = np.zeros((len(idx), L), dtype=np.float32)
            for j, i in enumerate(idx):
                T = len(labels[i])
                s = int(rng.integers(0, max(1, T - L + 1)))
                seg = slice(s, min(T, s + L))
                k = seg.stop - seg.start
                x[j, :k], y[j, :k], m[j, :k] = feats[i][seg], labels[i][seg], 1.0
            logits, _ = net(torch.from_numpy(x))  # (b, L)
            loss = (loss_fn(logits, torch.from_numpy(y)) * torch.from_numpy(m)).sum() / m.sum()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        sched.step()
    return net.eval()


def train_trace_net(
    traces: list[np.ndarray], labels: list[np.ndarray], net_cfg: EcgTraceConfig,
    cfg: TraceTrainConfig,
) -> EcgTraceNet:
    """Train the trace CNN on the minutes of all nights: ``traces[i] (T_i, TRACE_LEN)``, labels
    ``(T_i,)``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x = torch.as_tensor(np.concatenate(traces), dtype=torch.float32)  # (N, S)
    y = torch.as_tensor(np.concatenate(labels), dtype=torch.float32)  # (N,)
    net = EcgTraceNet(net_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = (len(x) + cfg.batch - 1) // cfg.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr,
                                                total_steps=cfg.epochs * n_batches)
    for _ in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for b0 in range(0, len(x), cfg.batch):
            idx = perm[b0 : b0 + cfg.batch]
            gain = torch.exp(cfg.gain_log_std * torch.randn(len(idx), 1, generator=gen))  # (b, 1)
            loss = nn.functional.binary_cross_entropy_with_logits(net(x[idx] * gain), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@dataclass
class NightInputs:
    """What both variants read of one night: features ``(T, F)``, traces per variant
    ``{variant: (T, TRACE_LEN)}`` and labels ``(T,)``."""

    features: np.ndarray
    traces: dict[str, np.ndarray]
    labels: np.ndarray


def train_variant_pair(
    nights: list[NightInputs], variant: str, cfg: TrainConfig, trace_cfg: TraceTrainConfig
) -> tuple[EcgApneaNet, EcgTraceNet]:
    """The feature GRU and the trace CNN of one variant, on the same nights."""
    labels = [n.labels for n in nights]
    gru = train_variant(
        [n.features for n in nights], labels,
        EcgApneaConfig(n_features=nights[0].features.shape[1],
                       bidirectional=variant == "noncausal"),
        cfg,
    )
    cnn = train_trace_net([n.traces[variant] for n in nights], labels, EcgTraceConfig(), trace_cfg)
    return gru, cnn


def train_model(
    nights: list[NightInputs], cfg: TrainConfig, trace_cfg: TraceTrainConfig,
    card: dict[str, object],
) -> EcgApneaModel:
    """Both variants on the same nights."""
    causal, causal_trace = train_variant_pair(nights, "causal", cfg, trace_cfg)
    noncausal, noncausal_trace = train_variant_pair(nights, "noncausal", cfg, trace_cfg)
    return EcgApneaModel(causal, noncausal, causal_trace, noncausal_trace, card)


def cross_validate(
    nights: list[NightInputs],
    k: int,
    cfg: TrainConfig,
    trace_cfg: TraceTrainConfig,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Out-of-fold probabilities: ``{variant: {"features"|"trace"|"model": [probs (T_i,)]}}``,
    ``"model"`` being the two averaged as the shipped model does."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    n = len(nights)
    k = min(k, n)
    folds = np.arange(n) % k
    parts = ("features", "trace", "model")
    out = {v: {p: [np.zeros(0)] * n for p in parts} for v in variants}
    for f in range(k):
        tr = [nights[i] for i in range(n) if folds[i] != f]
        te = [i for i in range(n) if folds[i] == f]
        for v in variants:
            gru, cnn = train_variant_pair(tr, v, cfg, trace_cfg)
            model = EcgApneaModel(gru, gru, cnn, cnn, {})  # this fold's nets under either name
            for i in te:
                p_feat = model.feature_proba(nights[i].features, v)
                p_trace = model.trace_proba(nights[i].traces[v], v)
                out[v]["features"][i] = p_feat
                out[v]["trace"][i] = p_trace
                out[v]["model"][i] = model.combine(p_feat, p_trace)
        log.info("fold %d/%d done", f + 1, k)
    return out


def night_inputs(night: ApneaNight) -> NightInputs:
    """Features, both variants' traces and labels of one night."""
    return NightInputs(
        night.features(), {v: night.traces(v) for v in VARIANTS}, night.labels.astype(np.float32)
    )


def register(app: typer.Typer) -> None:
    """Add ``apnea-train`` to the offline CLI."""

    @app.command("apnea-train")
    def apnea_train(
        data: Annotated[
            Path, typer.Option(help="Folder of Apnea-ECG nights (npz or WFDB layout).")
        ],
        out: Annotated[Path, typer.Option(help="Output .safetensors.")] = DEFAULT_MODEL_PATH,
        epochs: Annotated[
            int, typer.Option(help="Training epochs per variant.")
        ] = TrainConfig.epochs,
        trace_epochs: Annotated[
            int, typer.Option(help="Training epochs of each trace CNN.")
        ] = TraceTrainConfig.epochs,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
    ) -> None:
        """Train the causal and non-causal ECG apnea models (feature GRU + trace CNN each) on all
        nights in DATA."""
        torch.set_num_threads(threads)
        try:
            nights = read_apnea_ecg_dir(data)
        except DataError as err:  # training needs every night: name the bad one, no traceback
            typer.echo(f"apnea-train: {err}", err=True)
            raise typer.Exit(1) from err
        inputs = [night_inputs(n) for n in nights]
        cfg = TrainConfig(epochs=epochs, seed=seed)
        trace_cfg = TraceTrainConfig(epochs=trace_epochs, seed=seed)
        card: dict[str, object] = {
            "task": "per-minute apnea/hypopnea from heart rate",
            "trained_on": sorted(n.id for n in nights),
            "n_minutes": int(sum(len(n.labels) for n in nights)),
            "train_config": asdict(cfg),
            "trace_train_config": asdict(trace_cfg),
        }
        model = train_model(inputs, cfg, trace_cfg, card)
        save_ecg_model(model, out)
        typer.echo(f"wrote {out} ({out.stat().st_size} bytes): {json.dumps(card['trained_on'])}")

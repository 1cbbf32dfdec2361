"""``rtsleep-train apnea-train``: train the ECG apnea model (both variants) and its CV.

Training is full-night sequences with random crops, AdamW, binary cross-entropy; a few seconds
per variant on one CPU thread. Cross-validation is a fixed subject-wise K-fold (record ``i`` of the
sorted ids goes to fold ``i mod K``); with K equal to the number of records it is leave-one-out.
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

from offline.apnea_data import read_apnea_ecg_dir
from rtsleep.apnea.ecg_model import (
    DEFAULT_MODEL_PATH,
    VARIANTS,
    EcgApneaConfig,
    EcgApneaModel,
    EcgApneaNet,
    save_ecg_model,
)

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


def train_model(
    feats: list[np.ndarray], labels: list[np.ndarray], cfg: TrainConfig, card: dict[str, object]
) -> EcgApneaModel:
    """Both variants on the same nights."""
    causal = train_variant(feats, labels, EcgApneaConfig(bidirectional=False), cfg)
    noncausal = train_variant(feats, labels, EcgApneaConfig(bidirectional=True), cfg)
    return EcgApneaModel(causal, noncausal, card)


def cross_validate(
    ids: list[str], feats: list[np.ndarray], labels: list[np.ndarray], k: int, cfg: TrainConfig
) -> dict[str, list[np.ndarray]]:
    """Out-of-fold probabilities per variant: ``{variant: [probs (T_i,) per night]}``."""
    n = len(ids)
    k = min(k, n)
    folds = np.arange(n) % k
    out: dict[str, list[np.ndarray]] = {v: [np.zeros(0)] * n for v in VARIANTS}
    for f in range(k):
        tr = [i for i in range(n) if folds[i] != f]
        te = [i for i in range(n) if folds[i] == f]
        for v in VARIANTS:
            net = train_variant(
                [feats[i] for i in tr],
                [labels[i] for i in tr],
                EcgApneaConfig(n_features=feats[0].shape[1], bidirectional=v == "noncausal"),
                cfg,
            )
            with torch.no_grad():
                for i in te:
                    logits, _ = net(torch.as_tensor(feats[i], dtype=torch.float32)[None])
                    out[v][i] = torch.sigmoid(logits[0]).numpy().astype(np.float64)
        log.info("fold %d/%d done", f + 1, k)
    return out


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
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
    ) -> None:
        """Train the causal and non-causal ECG apnea models on all nights in DATA."""
        torch.set_num_threads(threads)
        nights = read_apnea_ecg_dir(data)
        feats = [n.features() for n in nights]
        labels = [n.labels for n in nights]
        cfg = TrainConfig(epochs=epochs, seed=seed)
        card: dict[str, object] = {
            "task": "per-minute apnea/hypopnea from heart rate",
            "trained_on": sorted(n.id for n in nights),
            "n_minutes": int(sum(len(y) for y in labels)),
            "train_config": asdict(cfg),
        }
        model = train_model(feats, labels, cfg, card)
        save_ecg_model(model, out)
        typer.echo(f"wrote {out} ({out.stat().st_size} bytes): {json.dumps(card['trained_on'])}")

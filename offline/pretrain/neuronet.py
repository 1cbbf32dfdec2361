"""NeuroNet pretraining, one modality at a time (each modality has its own frame encoder).

For every modality present in the batch's epochs:

1. ``frame_features``: the frame backbone's features per frame, ``(n, F, C)``; the detached,
   layer-normalised features are the reconstruction target (:func:`feature_target`).
2. Two views, each hiding an independent ``mask_ratio`` (80 %) of the frames. The frame
   Transformer runs on the visible frames only (:func:`encode_visible`, MAE-style).
3. Masked frame prediction: a decoder (mask tokens at hidden frames) predicts the target
   features; MSE on the hidden frames of both views.
4. NT-Xent (``tau`` 0.05) between the two views' CLS tokens through a projector.

Loss = mean over modalities of (reconstruction + contrastive). Only the encoders end up in the
exported checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offline.pretrain.common import (
    MaskedDecoder,
    Projector,
    feature_target,
    masked_mean,
    mean_modality_loss,
    nt_xent,
    random_token_mask,
)
from rtsleep.models.frame_encoder import FrameEncoder
from rtsleep.models.fusion import MultimodalFusion
from rtsleep.models.sleepnet import SleepNet


@dataclass
class NeuroNetConfig:
    """NeuroNet objective; the paper uses decoder 256 wide, 3 layers, projector 1024 -> 512."""

    mask_ratio: float = 0.8
    tau: float = 0.05
    decoder_dim: int = 64
    decoder_layers: int = 1
    decoder_heads: int = 4
    proj_hidden: int = 128
    proj_dim: int = 64
    #: Weight of the contrastive term.
    contrastive_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0 or self.tau <= 0:
            raise ValueError("mask_ratio must be in (0, 1) and tau > 0")


def encode_visible(enc: FrameEncoder, features: Tensor, hide: Tensor) -> Tensor:
    """``enc.encode_features(features, hide)`` computed on the visible tokens only (MAE-style).

    With a key padding mask the visible tokens attend to visible tokens (and CLS) only, so
    dropping the hidden ones from the sequence gives the same outputs at every visible position
    for ``1 / (1 - ratio)`` times fewer tokens (5x at 80 % masking). Every row must hide the same
    number of tokens (``random_token_mask`` does). Hidden positions of the result are zeros (the
    decoder replaces them with its mask token).

    ``features (n, F, C)``, ``hide (n, F)`` bool -> ``(n, 1 + F, D)``.
    """
    n, f, _ = features.shape
    n_vis = int((~hide[0]).sum()) if n else 0
    if n == 0 or bool(((~hide).sum(dim=1) != n_vis).any()):
        raise ValueError("encode_visible needs the same number of visible tokens in every row")
    tok = enc.token_proj(features) + enc.positions[1:].to(features.dtype)  # (n, F, D)
    cls = enc.cls_token.expand(n, -1, -1) + enc.positions[:1].to(features.dtype)  # (n, 1, D)
    vis_idx = (~hide).nonzero()[:, 1].view(n, n_vis)  # (n, k), ascending positions
    d = tok.shape[-1]
    vis = tok.gather(1, vis_idx[:, :, None].expand(n, n_vis, d))  # (n, k, D)
    out = enc.transformer(torch.cat([cls, vis], dim=1))  # (n, 1+k, D)
    full = out.new_zeros(n, f, d).scatter(1, vis_idx[:, :, None].expand(n, n_vis, d), out[:, 1:])
    return torch.cat([out[:, :1], full], dim=1)  # (n, 1+F, D)


class NeuroNetObjective(nn.Module):
    """Masked frame prediction + two-view NT-Xent per modality around ``net``'s frame encoders."""

    def __init__(self, net: SleepNet, cfg: NeuroNetConfig) -> None:
        super().__init__()
        if not isinstance(net.encoder, MultimodalFusion):
            raise ValueError("neuronet pretraining needs a model with the 'fusion' encoder")
        self.net = net
        self.cfg = cfg
        fcfg = net.encoder.cfg.frame
        names = list(net.encoder.cfg.modalities)
        self.modalities = names
        self.decoders = nn.ModuleDict(
            {
                m: MaskedDecoder(
                    fcfg.d_model,
                    cfg.decoder_dim,
                    cfg.decoder_layers,
                    cfg.decoder_heads,
                    fcfg.n_frames,
                    fcfg.n_features,
                )
                for m in names
            }
        )
        self.projectors = nn.ModuleDict(
            {m: Projector(fcfg.d_model, cfg.proj_hidden, cfg.proj_dim) for m in names}
        )

    def encoder(self, name: str) -> FrameEncoder:
        """The frame encoder of modality ``name``."""
        fusion = cast(MultimodalFusion, self.net.encoder)  # checked in __init__
        return cast(FrameEncoder, fusion.encoders[name])

    def modality_loss(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (n, S)`` epochs of one modality -> (reconstruction, contrastive) losses."""
        enc = self.encoder(name)
        feats = enc.frame_features(x)  # (n, F, C)
        target = feature_target(feats)  # (n, F, C)
        n, f, _ = feats.shape
        recon = feats.new_zeros(())
        cls = []
        for _ in range(2):
            hide = random_token_mask(n, f, self.cfg.mask_ratio, x.device)  # (n, F)
            tok = encode_visible(enc, feats, hide)  # (n, 1+F, D)
            pred = self.decoders[name](tok[:, 1:], hide)  # (n, F, C)
            err = F.mse_loss(pred, target, reduction="none").mean(dim=-1)  # (n, F)
            recon = recon + masked_mean(err, hide)
            cls.append(self.projectors[name](tok[:, 0]))  # (n, P)
        return recon / 2, nt_xent(cls[0], cls[1], self.cfg.tau)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``x (B, T, M, S)``, ``mask (B, T, M)`` -> ``(loss, metrics)``."""
        b, t, m, s = x.shape
        flat = x.reshape(b * t, m, s)  # (N, M, S)
        present = mask.reshape(b * t, m)  # (N, M)
        terms = []
        for j, name in enumerate(self.modalities):
            rows = present[:, j].nonzero().squeeze(1)  # (n,)
            if rows.numel() < 2:
                continue
            terms.append(self.modality_loss(name, flat.index_select(0, rows)[:, j]))
        return mean_modality_loss(self, terms, self.cfg.contrastive_weight, x, "neuronet")

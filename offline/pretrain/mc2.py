"""MC2SleepNet pretraining of the dual-branch EEG encoder (raw CNN + spectrogram Transformer).

On windows of ``T`` consecutive EEG epochs (16 in the paper):

1. **Epoch-level InfoNCE** between the raw-branch and spectral-branch embeddings of the same epoch
   (symmetric, ``tau``), through projectors.
2. **Sequence-level cross-masking**: a random ``mask_ratio`` (25 %) of the epochs of the raw-view
   sequence is replaced by a mask token and a cross-encoder (self-attention over the masked
   sequence, cross-attention to the **other** view's full sequence) reconstructs the hidden raw
   embeddings; the same from spectral to raw. L1 on the hidden epochs against the detached,
   layer-normalised embeddings (so shrinking the embeddings cannot lower the loss). The
   cross-encoders are discarded after pretraining (attention is bidirectional; they never run in
   the daemon).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offline.pretrain.common import (
    Projector,
    feature_target,
    info_nce,
    masked_mean,
    random_token_mask,
)
from rtsleep.models.dual_branch import DualBranchEncoder
from rtsleep.models.sleepnet import SleepNet
from rtsleep.models.transformer import sincos_positions


@dataclass
class MC2Config:
    """MC2 objective; the released fragments use d 128, 4 cross layers, FFN 1024, 8 heads, T 16."""

    seq_len: int = 8
    mask_ratio: float = 0.25
    tau: float = 0.1
    cross_layers: int = 1
    cross_heads: int = 4
    cross_ffn: int = 128
    proj_hidden: int = 128
    proj_dim: int = 64
    #: Weight of the cross-masking (L1) term.
    recon_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.seq_len < 2 or not 0.0 < self.mask_ratio < 1.0 or self.tau <= 0:
            raise ValueError("seq_len >= 2, mask_ratio in (0, 1) and tau > 0 required")


class CrossReconstructor(nn.Module):
    """Masked sequence of one view + full sequence of the other -> reconstructed sequence."""

    positions: Tensor

    def __init__(self, d: int, n_layers: int, n_heads: int, ffn: int, max_len: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(d))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("positions", sincos_positions(max_len, d), persistent=False)
        layer = nn.TransformerDecoderLayer(
            d, n_heads, ffn, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerDecoder(layer, n_layers, norm=nn.LayerNorm(d))
        self.out = nn.Linear(d, d)

    def forward(self, seq: Tensor, hide: Tensor, other: Tensor) -> Tensor:
        """``seq, other (B, T, D)``, ``hide (B, T)`` -> ``(B, T, D)``."""
        t = seq.shape[1]
        pos = self.positions[:t].to(seq.dtype)  # (T, D)
        q = torch.where(hide[..., None], self.mask_token.to(seq.dtype), seq) + pos
        return self.out(self.layers(q, other + pos))


class MC2Objective(nn.Module):
    """See the module doc; ``net`` must use the ``dual_branch`` encoder."""

    def __init__(self, net: SleepNet, cfg: MC2Config) -> None:
        super().__init__()
        if not isinstance(net.encoder, DualBranchEncoder):
            raise ValueError("mc2 pretraining needs a model with the 'dual_branch' encoder")
        self.net = net
        self.cfg = cfg
        d = net.encoder.cfg.d_model
        self.raw_projector = Projector(d, cfg.proj_hidden, cfg.proj_dim)
        self.spec_projector = Projector(d, cfg.proj_hidden, cfg.proj_dim)
        self.raw_from_spec = CrossReconstructor(
            d, cfg.cross_layers, cfg.cross_heads, cfg.cross_ffn, cfg.seq_len
        )
        self.spec_from_raw = CrossReconstructor(
            d, cfg.cross_layers, cfg.cross_heads, cfg.cross_ffn, cfg.seq_len
        )

    @property
    def encoder(self) -> DualBranchEncoder:
        return cast(DualBranchEncoder, self.net.encoder)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``x (B, T, M, S)`` (EEG = modality 0 present throughout), ``mask (B, T, M)``."""
        b, t, _, s = x.shape
        if not bool(mask[:, :, 0].all()):
            raise ValueError("mc2: every epoch of a window must have EEG")
        out = self.encoder(x[:, :, 0].reshape(b * t, s))  # each (B*T, D)
        nce = info_nce(
            self.raw_projector(out.raw_embedding), self.spec_projector(out.spec_embedding),
            self.cfg.tau,
        )
        raw = out.raw_embedding.view(b, t, -1)  # (B, T, D)
        spec = out.spec_embedding.view(b, t, -1)  # (B, T, D)
        hide_r = random_token_mask(b, t, self.cfg.mask_ratio, x.device)  # (B, T)
        hide_s = random_token_mask(b, t, self.cfg.mask_ratio, x.device)
        rec_r = self.raw_from_spec(raw, hide_r, spec)  # (B, T, D)
        rec_s = self.spec_from_raw(spec, hide_s, raw)
        err_r = F.l1_loss(rec_r, feature_target(raw), reduction="none").mean(dim=-1)  # (B, T)
        err_s = F.l1_loss(rec_s, feature_target(spec), reduction="none").mean(dim=-1)
        recon = 0.5 * (masked_mean(err_r, hide_r) + masked_mean(err_s, hide_s))
        loss = nce + self.cfg.recon_weight * recon
        return loss, {"infonce": nce.detach(), "cross_recon": recon.detach()}

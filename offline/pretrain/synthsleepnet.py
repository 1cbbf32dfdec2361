"""SynthSleepNet multimodal pretraining: per-modality token masking through the shared fusion
Transformer, one decoder per modality, and a fused-versus-modality contrastive loss.

Starts from NeuroNet-pretrained frame encoders (``--init`` a neuronet checkpoint). The paper keeps
them frozen apart from LoRA adapters (``lora_rank`` 4, ``lora_alpha`` 16, with
``encoder_lr_scale`` 0; merged into the weights on export); by default they instead train at
``encoder_lr_scale`` times the learning rate.

1. Every modality's frame encoder encodes the whole epoch; ``MultimodalFusion`` hides a random
   ``mask_ratio`` (40 %) of each present modality's frame tokens from the shared Transformer.
2. Modality ``m``'s decoder reads **modality m's own** fused tokens (``modality_tokens[:, m]``;
   the released code's slicing fed every decoder nearly the first modality's tokens) with mask
   tokens at its hidden positions, and predicts modality ``m``'s encoder tokens (detached,
   layer-normalised): MSE on the hidden positions.
3. NT-Xent (``tau`` 0.1) between the fused embedding and each present modality's mean-pooled
   tokens, both through projectors.

Missing modalities (``mask`` False) take part in nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

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
from offline.pretrain.lora import add_lora
from rtsleep.models.fusion import MultimodalFusion
from rtsleep.models.sleepnet import SleepNet


@dataclass
class SynthSleepNetConfig:
    """SynthSleepNet objective; the paper: decoders 256 wide, 3 layers; tau 0.1."""

    mask_ratio: float = 0.4
    tau: float = 0.1
    decoder_dim: int = 64
    decoder_layers: int = 1
    decoder_heads: int = 4
    proj_hidden: int = 128
    proj_dim: int = 64
    contrastive_weight: float = 1.0
    #: Learning-rate multiplier of the per-modality frame encoders (0 = frozen).
    encoder_lr_scale: float = 0.1
    #: LoRA rank on the frame encoders' attention projections (0 = none; the paper: 4). Needs
    #: ``encoder_lr_scale = 0``: the base weights stay frozen, the adapters train and are merged
    #: into the exported weights.
    lora_rank: int = 0
    lora_alpha: float = 16.0

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0 or self.tau <= 0 or self.encoder_lr_scale < 0:
            raise ValueError("mask_ratio in (0, 1), tau > 0 and encoder_lr_scale >= 0 required")
        if self.lora_rank < 0 or (self.lora_rank > 0 and self.encoder_lr_scale != 0):
            raise ValueError("lora_rank must be >= 0, and LoRA needs encoder_lr_scale = 0")


class SynthSleepNetObjective(nn.Module):
    """See the module doc; ``net`` must use the ``fusion`` encoder."""

    def __init__(self, net: SleepNet, cfg: SynthSleepNetConfig) -> None:
        super().__init__()
        if not isinstance(net.encoder, MultimodalFusion):
            raise ValueError("synthsleepnet pretraining needs a model with the 'fusion' encoder")
        self.net = net
        self.cfg = cfg
        fc = net.encoder.cfg
        self.modalities = list(fc.modalities)
        self.decoders = nn.ModuleDict(
            {
                m: MaskedDecoder(
                    fc.d_model,
                    cfg.decoder_dim,
                    cfg.decoder_layers,
                    cfg.decoder_heads,
                    fc.n_tokens,
                    fc.frame.d_model,
                )
                for m in self.modalities
            }
        )
        self.fused_projector = Projector(fc.d_model, cfg.proj_hidden, cfg.proj_dim)
        self.modality_projectors = nn.ModuleDict(
            {m: Projector(fc.d_model, cfg.proj_hidden, cfg.proj_dim) for m in self.modalities}
        )

        if cfg.encoder_lr_scale == 0:
            for p in net.encoder.encoders.parameters():
                p.requires_grad_(False)
        if cfg.lora_rank > 0:
            add_lora(net.encoder.encoders, cfg.lora_rank, cfg.lora_alpha)

    def train(self, mode: bool = True) -> SynthSleepNetObjective:
        """Like ``nn.Module.train``, but frozen encoders stay in eval mode (BatchNorm stats)."""
        super().train(mode)
        if self.cfg.encoder_lr_scale == 0:
            self.fusion.encoders.eval()
        return self

    @property
    def fusion(self) -> MultimodalFusion:
        return cast(MultimodalFusion, self.net.encoder)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The per-modality frame encoders' own parameters (trained at ``encoder_lr_scale``;
        LoRA adapters are not among them, they train at the full rate)."""
        return [p for n, p in self.fusion.encoders.named_parameters() if "lora_" not in n]

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``x (B, T, M, S)``, ``mask (B, T, M)`` -> ``(loss, metrics)``."""
        b, t, m, s = x.shape
        flat = x.reshape(b * t, m, s)  # (N, M, S)
        present = mask.reshape(b * t, m).bool()  # (N, M)
        n = flat.shape[0]
        n_tok = self.fusion.cfg.n_tokens
        hide = random_token_mask(n * m, n_tok, self.cfg.mask_ratio, x.device, skip_first=True)
        hide = hide.view(n, m, n_tok) & present[:, :, None]  # (N, M, L)
        out = self.fusion(flat, present, hide)
        target = feature_target(out.encoder_tokens)  # (N, M, L, Df)
        z_fused = self.fused_projector(out.embedding)  # (N, P)
        terms = []
        for j, name in enumerate(self.modalities):
            rows = present[:, j].nonzero().squeeze(1)  # (r,)
            if rows.numel() < 2:
                continue
            tokens = out.modality_tokens[rows, j]  # (r, L, D): this modality's own tokens
            h = hide[rows, j]  # (r, L)
            pred = self.decoders[name](tokens, h)  # (r, L, Df)
            err = F.mse_loss(pred, target[rows, j], reduction="none").mean(dim=-1)  # (r, L)
            z_mod = self.modality_projectors[name](out.modality_pooled[rows, j])  # (r, P)
            terms.append((masked_mean(err, h), nt_xent(z_fused[rows], z_mod, self.cfg.tau)))
        return mean_modality_loss(self, terms, self.cfg.contrastive_weight, x, "synthsleepnet")

"""SynthSleepNet-style multimodal fusion: one frame encoder per modality, a shared Transformer.

Each modality ``m`` present in a bed's epoch is encoded by its own :class:`FrameEncoder` into
``1 + n_frames`` tokens (CLS first). A per-modality MLP maps them to the fusion width, and a learned
modality token plus fixed sin-cos positions are added. A fusion CLS token and the tokens of all
modalities go through a shared Transformer in which **missing modalities are masked**: their
tokens are never computed from the input and are dropped from attention as keys (a key padding
mask), so the output does not depend on their values at all, NaN included. The fusion CLS token is
always present, so an epoch with no modality at all still gets a (learned, input-free) embedding.
A bed that streams only EEG and a bed that streams all four run the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rtsleep.data.recording import EXG_MODALITIES
from rtsleep.models.frame_encoder import FrameEncoder, FrameEncoderConfig
from rtsleep.models.transformer import TransformerStack, sincos_positions


@dataclass
class FusionConfig:
    """Sizes of :class:`MultimodalFusion`; ``frame`` is used for every modality's encoder."""

    modalities: tuple[str, ...] = tuple(str(m) for m in EXG_MODALITIES)
    frame: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    #: Hidden width of the per-modality token MLP (frame.d_model -> hidden -> d_model).
    token_mlp_hidden: int = 64

    def __post_init__(self) -> None:
        self.modalities = tuple(str(m) for m in self.modalities)
        if isinstance(self.frame, dict):
            self.frame = FrameEncoderConfig(**self.frame)
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct and non-empty, got {self.modalities}")

    @property
    def n_tokens(self) -> int:
        """Tokens per modality (CLS + frames)."""
        return 1 + self.frame.n_frames


@dataclass
class FusionOutput:
    """Outputs of :class:`MultimodalFusion` for ``B`` epochs, ``M`` modalities, ``L`` tokens each.

    Entries of a modality whose ``mask`` is False are not meaningful (zeros or input-free values).
    """

    #: Fused epoch embedding, the fusion CLS output: ``(B, d_model)``.
    embedding: Tensor
    #: Each modality's mean-pooled projected tokens before fusion (the modality-only view of the
    #: fused-vs-modality contrastive loss): ``(B, M, d_model)``.
    modality_pooled: Tensor
    #: The shared Transformer's output tokens of each modality (input to that modality's
    #: decoder): ``(B, M, L, d_model)``.
    modality_tokens: Tensor
    #: Each modality encoder's own output tokens (CLS + frames): ``(B, M, L, frame.d_model)``.
    encoder_tokens: Tensor
    #: Which modalities were present: ``(B, M)`` bool.
    mask: Tensor


class MultimodalFusion(nn.Module):
    """``x (B, M, n_times)``, ``mask (B, M)`` -> :class:`FusionOutput`."""

    positions: Tensor

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        fd, d = cfg.frame.d_model, cfg.d_model
        self.encoders = nn.ModuleDict({m: FrameEncoder(cfg.frame) for m in cfg.modalities})
        self.token_mlps = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(fd, cfg.token_mlp_hidden),
                    nn.GELU(),
                    nn.Linear(cfg.token_mlp_hidden, d),
                )
                for m in cfg.modalities
            }
        )
        self.modality_tokens = nn.Parameter(torch.zeros(len(cfg.modalities), d))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.modality_tokens, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        self.register_buffer("positions", sincos_positions(cfg.n_tokens, d), persistent=False)
        self.transformer = TransformerStack(
            d, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, cfg.dropout
        )

    def forward(self, x: Tensor, mask: Tensor, token_mask: Tensor | None = None) -> FusionOutput:
        """Fuse the present modalities of ``B`` epochs.

        Args:
            x: ``(B, M, n_times)`` in ``cfg.modalities`` order; masked rows may hold anything.
            mask: ``(B, M)`` bool, True = the modality is present.
            token_mask: optional ``(B, M, L)`` bool, True = hide that token from the shared
                Transformer (pretraining's token masking); ``L = 1 + n_frames``.
        """
        cfg = self.cfg
        n_mod, n_tok = len(cfg.modalities), cfg.n_tokens
        if x.dim() != 3 or x.shape[1] != n_mod or x.shape[2] != cfg.frame.n_times:
            raise ValueError(
                f"MultimodalFusion expects x of shape (B, {n_mod}, {cfg.frame.n_times}), "
                f"got {tuple(x.shape)}"
            )
        b = x.shape[0]
        if mask.shape != (b, n_mod):
            raise ValueError(f"mask must have shape {(b, n_mod)}, got {tuple(mask.shape)}")
        if token_mask is not None and token_mask.shape != (b, n_mod, n_tok):
            raise ValueError(
                f"token_mask must have shape {(b, n_mod, n_tok)}, got {tuple(token_mask.shape)}"
            )
        mask = mask.bool()
        enc_tokens: list[Tensor] = []
        proj_tokens: list[Tensor] = []
        for j, name in enumerate(cfg.modalities):
            enc = self._encode_present(name, x[:, j], mask[:, j])  # (B, L, Df)
            enc_tokens.append(enc)
            tok = self.token_mlps[name](enc)  # (B, L, D)
            proj_tokens.append(tok)
        enc_all = torch.stack(enc_tokens, dim=1)  # (B, M, L, Df)
        proj = torch.stack(proj_tokens, dim=1)  # (B, M, L, D)
        pooled = proj.mean(dim=2)  # (B, M, D)
        tok = proj + self.modality_tokens[None, :, None, :] + self.positions.to(proj.dtype)
        tok = tok.reshape(b, n_mod * n_tok, -1)  # (B, M*L, D)
        cls = self.cls_token.expand(b, -1, -1)  # (B, 1, D)
        keep = mask[:, :, None].expand(b, n_mod, n_tok)  # (B, M, L)
        if token_mask is not None:
            keep = keep & ~token_mask.bool()
        keep_cls = torch.ones(b, 1, dtype=torch.bool, device=x.device)  # (B, 1)
        keep = torch.cat([keep_cls, keep.reshape(b, n_mod * n_tok)], dim=1)  # (B, 1+M*L)
        out = self.transformer(torch.cat([cls, tok], dim=1), keep)  # (B, 1+M*L, D)
        return FusionOutput(
            embedding=out[:, 0],
            modality_pooled=pooled,
            modality_tokens=out[:, 1:].reshape(b, n_mod, n_tok, -1),  # (B, M, L, D)
            encoder_tokens=enc_all,
            mask=mask,
        )

    def _encode_present(self, name: str, xm: Tensor, present: Tensor) -> Tensor:
        """Encode the rows where ``present``; the other rows get zeros (masked downstream).

        ``xm (B, n_times)``, ``present (B,)`` -> ``(B, L, frame.d_model)``.
        """
        encoder = self.encoders[name]
        if bool(present.all()):
            return encoder(xm)  # (B, L, Df)
        b = xm.shape[0]
        out = xm.new_zeros(b, self.cfg.n_tokens, self.cfg.frame.d_model)
        idx = present.nonzero().squeeze(1)  # (n,)
        if idx.numel() == 0:
            return out
        return out.index_copy(0, idx, encoder(xm.index_select(0, idx)))  # (B, L, Df)

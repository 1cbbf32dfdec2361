"""Per-epoch task heads on the temporal output: sleep stage (5 classes), apnea, hypopnea.

Optional auxiliary per-epoch features (heart-rate / respiratory features from the apnea pathway)
enter as ``aux (..., n_aux)`` with ``aux_mask (..., n_aux)`` (True = present). A missing feature is
replaced by a learned per-feature "missing" value and the mask bits are fed alongside, so missing
is never confused with a measured zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class HeadsConfig:
    """Head sizes. ``hidden=0`` makes each head a single linear layer."""

    #: Stage classes, in ``STAGE_NAMES`` order (W, N1, N2, N3, R).
    n_outputs: int = 5
    hidden: int = 0
    dropout: float = 0.0
    #: Auxiliary per-epoch features; 0 disables the auxiliary input.
    n_aux: int = 0
    #: Width of the auxiliary-feature projection.
    aux_dim: int = 16

    def __post_init__(self) -> None:
        if self.n_outputs < 2:
            raise ValueError(f"n_outputs must be >= 2, got {self.n_outputs}")
        if self.n_aux < 0:
            raise ValueError(f"n_aux must be >= 0, got {self.n_aux}")


@dataclass
class HeadOutputs:
    """Raw head outputs for inputs of shape ``(..., d_in)``."""

    #: ``(..., n_outputs)``.
    stage_logits: Tensor
    #: ``(...)``.
    apnea_logit: Tensor
    #: ``(...)``.
    hypopnea_logit: Tensor


def _head(d_in: int, hidden: int, n_out: int, dropout: float) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(d_in, n_out)
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
    )


class SleepHeads(nn.Module):
    """``h (..., d_in)`` (+ optional ``aux``) -> :class:`HeadOutputs`."""

    def __init__(self, cfg: HeadsConfig, d_in: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = d_in
        if cfg.n_aux > 0:
            self.aux_missing = nn.Parameter(torch.zeros(cfg.n_aux))
            self.aux_proj = nn.Sequential(nn.Linear(2 * cfg.n_aux, cfg.aux_dim), nn.GELU())
            d += cfg.aux_dim
        self.stage = _head(d, cfg.hidden, cfg.n_outputs, cfg.dropout)
        self.apnea = _head(d, cfg.hidden, 1, cfg.dropout)
        self.hypopnea = _head(d, cfg.hidden, 1, cfg.dropout)

    def forward(
        self, h: Tensor, aux: Tensor | None = None, aux_mask: Tensor | None = None
    ) -> HeadOutputs:
        """Heads for ``h (..., d_in)``.

        ``aux (..., n_aux)`` float and ``aux_mask (..., n_aux)`` bool (True = present; None = all
        present when ``aux`` is given). ``aux=None`` with ``n_aux > 0`` treats every feature as
        missing. Masked values are never read, so they may be NaN.
        """
        n_aux = self.cfg.n_aux
        if n_aux == 0:
            if aux is not None:
                raise ValueError("aux features given but the heads were built with n_aux=0")
        else:
            lead = h.shape[:-1]
            if aux is None:
                aux = h.new_zeros(*lead, n_aux)
                aux_mask = torch.zeros(*lead, n_aux, dtype=torch.bool, device=h.device)
            if aux.shape != (*lead, n_aux):
                raise ValueError(f"aux must have shape {(*lead, n_aux)}, got {tuple(aux.shape)}")
            if aux_mask is None:
                aux_mask = torch.ones(aux.shape, dtype=torch.bool, device=h.device)
            if aux_mask.shape != aux.shape:
                raise ValueError(
                    f"aux_mask must have shape {tuple(aux.shape)}, got {tuple(aux_mask.shape)}"
                )
            present = aux_mask.bool()
            filled = torch.where(present, aux.to(h.dtype), self.aux_missing.to(h.dtype))
            a = self.aux_proj(torch.cat([filled, present.to(h.dtype)], dim=-1))  # (..., aux_dim)
            h = torch.cat([h, a], dim=-1)  # (..., d_in + aux_dim)
        return HeadOutputs(
            stage_logits=self.stage(h),
            apnea_logit=self.apnea(h).squeeze(-1),
            hypopnea_logit=self.hypopnea(h).squeeze(-1),
        )

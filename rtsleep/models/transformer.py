"""Pre-norm Transformer encoder stack shared by the epoch encoders (ViT-style blocks).

Written out instead of ``nn.TransformerEncoderLayer`` so that masking is explicit (a key padding
mask never produces zero-filled or nested outputs) and results do not depend on a fast path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_positions(n_positions: int, dim: int) -> Tensor:
    """Fixed 1-D sin-cos position table, ``(n_positions, dim)`` (``dim`` even)."""
    if dim % 2 != 0:
        raise ValueError(f"position dim must be even, got {dim}")
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    omega = torch.exp(
        -math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim
    )  # (dim/2,)
    angles = pos * omega[None, :]  # (P, dim/2)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.float()


class Attention(nn.Module):
    """Multi-head self-attention with an optional key padding mask."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"width {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_keep: Tensor | None = None) -> Tensor:
        """``x (B, L, D)``; ``key_keep (B, L)`` bool, True = the token may be attended to."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, hd)
        attn_mask = None if key_keep is None else key_keep[:, None, None, :]  # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, hd)
        y = y.transpose(1, 2).reshape(b, n, d)  # (B, L, D)
        return self.proj(y)


class TransformerBlock(nn.Module):
    """``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_keep: Tensor | None = None) -> Tensor:
        """``x (B, L, D) -> (B, L, D)``; see ``Attention`` for ``key_keep``."""
        x = x + self.drop(self.attn(self.norm1(x), key_keep))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerStack(nn.Module):
    """``n_layers`` pre-norm blocks and a final LayerNorm."""

    def __init__(
        self, dim: int, n_layers: int, n_heads: int, mlp_ratio: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, n_heads, mlp_ratio, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, key_keep: Tensor | None = None) -> Tensor:
        """``x (B, L, D) -> (B, L, D)``. Every row of ``key_keep`` must keep at least one token."""
        for block in self.blocks:
            x = block(x, key_keep)
        return self.norm(x)

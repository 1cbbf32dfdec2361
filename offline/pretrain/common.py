"""Pieces shared by the pretraining objectives: contrastive losses, token masking, decoders.

Shapes: ``N`` samples, ``L`` tokens, ``D`` widths.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtsleep.models.transformer import TransformerStack, sincos_positions

log = logging.getLogger(__name__)


def nt_xent(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """SimCLR NT-Xent over ``2N`` views: ``a[i]`` and ``b[i]`` are positives, every other sample
    of both views a negative. ``a, b (N, D)``; needs ``N >= 2`` (returns 0 otherwise)."""
    n = a.shape[0]
    if n < 2:
        return (a.sum() + b.sum()) * 0.0
    z = F.normalize(torch.cat([a, b], dim=0), dim=-1)  # (2N, D)
    sim = z @ z.T / tau  # (2N, 2N)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])  # (2N,)
    return F.cross_entropy(sim, targets)


def info_nce(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Symmetric (CLIP-style) InfoNCE between paired views ``a, b (N, D)``: ``a[i]`` must pick
    ``b[i]`` among all ``b`` and vice versa. Returns 0 for ``N < 2``."""
    n = a.shape[0]
    if n < 2:
        return (a.sum() + b.sum()) * 0.0
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau  # (N, N)
    idx = torch.arange(n, device=a.device)
    return 0.5 * (F.cross_entropy(logits, idx) + F.cross_entropy(logits.T, idx))


def random_token_mask(
    n: int, length: int, ratio: float, device: torch.device, skip_first: bool = False
) -> Tensor:
    """``(n, length)`` bool, True = hidden: exactly ``round(ratio * k)`` of the ``k`` maskable
    tokens per row (at least one stays visible). ``skip_first`` never hides token 0 (a CLS).

    Draws from the global torch RNG (re-seeded every step by the training loop).
    """
    offset = 1 if skip_first else 0
    k = length - offset
    n_hide = min(k - 1, max(0, int(round(ratio * k))))
    noise = torch.rand(n, k, device=device)  # (n, k)
    order = noise.argsort(dim=1)
    hide = torch.zeros(n, k, dtype=torch.bool, device=device)
    hide.scatter_(1, order[:, :n_hide], True)
    if offset:
        hide = torch.cat([torch.zeros(n, 1, dtype=torch.bool, device=device), hide], dim=1)
    return hide


def masked_mean(values: Tensor, hide: Tensor) -> Tensor:
    """Mean of ``values (n, L)`` over the positions where ``hide (n, L)`` is True (0 if none)."""
    w = hide.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)


class Projector(nn.Module):
    """Contrastive projection head ``d_in -> hidden -> d_out`` (BatchNorm-free, so any batch)."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, d_out)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(N, d_in) -> (N, d_out)``."""
        return self.net(x)


class MaskedDecoder(nn.Module):
    """MAE decoder: hidden positions get a learned mask token (never their encoder output, which
    may have seen its own input), positions are added, a small Transformer predicts targets.

    ``tokens (n, L, d_in)``, ``hide (n, L)`` -> ``(n, L, d_out)``.
    """

    positions: Tensor

    def __init__(
        self, d_in: int, d_dec: int, n_layers: int, n_heads: int, n_tokens: int, d_out: int
    ) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_in, d_dec)
        self.mask_token = nn.Parameter(torch.zeros(d_dec))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("positions", sincos_positions(n_tokens, d_dec), persistent=False)
        self.transformer = TransformerStack(d_dec, n_layers, n_heads, 2.0)
        self.out = nn.Linear(d_dec, d_out)

    def forward(self, tokens: Tensor, hide: Tensor) -> Tensor:
        """See the class doc."""
        h = self.in_proj(tokens)  # (n, L, d_dec)
        h = torch.where(hide[..., None], self.mask_token.to(h.dtype), h)
        h = h + self.positions.to(h.dtype)
        return self.out(self.transformer(h))  # (n, L, d_out)


def mean_modality_loss(
    objective: nn.Module,
    terms: list[tuple[Tensor, Tensor]],
    contrastive_weight: float,
    like: Tensor,
    method: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(loss, metrics)`` of a per-modality objective from its ``(reconstruction, contrastive)``
    scalar losses, one pair per modality that took part: loss = mean reconstruction +
    ``contrastive_weight`` x mean contrastive.

    With no modality taking part (``terms`` empty: none had 2 or more epochs in the batch) the
    loss is a zero that still reaches every trainable parameter of ``objective``, so DDP ranks
    stay in step; ``like`` gives its dtype and device, ``method`` names it in the warning.
    """
    if not terms:
        log.warning("%s: no modality has 2 or more epochs in this batch; skipped", method)
        zero = sum((p.sum() for p in objective.parameters() if p.requires_grad), like.new_zeros(()))
        return zero * 0.0, {"recon": like.new_zeros(()), "contrastive": like.new_zeros(())}
    recon_mean = sum((r for r, _ in terms), like.new_zeros(())) / len(terms)
    con_mean = sum((c for _, c in terms), like.new_zeros(())) / len(terms)
    loss = recon_mean + contrastive_weight * con_mean
    return loss, {"recon": recon_mean.detach(), "contrastive": con_mean.detach()}


def feature_target(features: Tensor) -> Tensor:
    """Reconstruction target: detached, per-token layer-normalised features ``(..., C)``.

    Detaching stops the trivial solution where the backbone shrinks its own targets; the
    normalisation (MAE's ``norm_pix_loss``) makes the loss scale-free.
    """
    f = features.detach()
    return F.layer_norm(f, f.shape[-1:])

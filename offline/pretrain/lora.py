"""Low-rank adapters (LoRA) for frozen linear layers, merged back into plain ``nn.Linear``.

SynthSleepNet keeps its NeuroNet encoders frozen apart from LoRA adapters (rank 4, alpha 16) on
the attention projections. ``add_lora`` wraps the chosen ``nn.Linear`` layers of a module in
:class:`LoRALinear` (base frozen, ``y = W x + b + (alpha / r) B A x`` with ``B`` starting at zero,
so training starts from the pretrained function); ``merge_lora`` folds ``W + (alpha / r) B A`` back
into plain ``nn.Linear`` layers, so the exported model has the usual parameter names and costs
nothing extra at inference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update scaled by ``alpha / r``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)``."""
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function."""
        base = self.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        out = out.to(device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(base.weight + self.scale * (self.lora_b @ self.lora_a))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


def add_lora(
    module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = ("qkv", "proj")
) -> list[nn.Parameter]:
    """Wrap every ``nn.Linear`` of ``module`` whose attribute name is in ``targets``; returns the
    new trainable parameters."""
    params: list[nn.Parameter] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                lora = LoRALinear(child, rank, alpha)
                setattr(parent, name, lora)
                params.extend([lora.lora_a, lora.lora_b])
    if not params:
        raise ValueError(f"no nn.Linear named {targets} to adapt")
    return params


def merge_lora(module: nn.Module) -> int:
    """Replace every :class:`LoRALinear` inside ``module`` by its merged ``nn.Linear``; returns
    how many were merged."""
    n = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                n += 1
    return n

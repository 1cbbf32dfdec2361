"""Temporal context module: a stack of pre-norm residual Mamba blocks over per-epoch embeddings.

Block ``i``: ``u = u + layers[i].mixer(layers[i].norm(u))``; after the stack, ``norm_f``. Names
follow mamba_ssm (``layers.{i}.norm.weight``, ``layers.{i}.mixer.*``, ``norm_f.weight``), so the
state dict of a mamba_ssm ``Block`` loads into ``layers.{i}``.

The recurrent state is a flat ``dict[str, Tensor]`` (safetensors-friendly), per layer ``i``:

- ``"layers.{i}.conv_state"``: ``(B, d_inner, d_conv)``, the last ``d_conv`` conv inputs
  (mamba_ssm layout; see :mod:`rtsleep.models.mamba`);
- ``"layers.{i}.ssm_state"``: ``(B, d_inner, d_state)``.

``forward`` over a sequence and ``step`` token by token give the same outputs (the tests bound the
difference over 2000 steps); both are causal: output ``t`` depends on inputs ``<= t`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from rtsleep.models.mamba import Mamba, MambaConfig


@dataclass
class TemporalConfig:
    """Temporal module size: ``n_layers`` Mamba blocks of width ``d_model`` (embedding size).

    ``d_state``, ``d_conv``, ``expand`` as in :class:`MambaConfig`; ``norm_eps`` for RMSNorm;
    ``scan`` picks the CPU selective scan (``"sequential"`` or ``"chunked"``).
    """

    d_model: int
    n_layers: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm_eps: float = 1e-5
    scan: str = "sequential"

    def __post_init__(self) -> None:
        if not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise ValueError(
                f"TemporalConfig.n_layers must be a positive int, got {self.n_layers!r}"
            )
        if self.norm_eps <= 0:
            raise ValueError(f"TemporalConfig.norm_eps must be > 0, got {self.norm_eps}")
        self.mamba_config()  # validates the layer fields

    def mamba_config(self) -> MambaConfig:
        """The per-layer :class:`MambaConfig`."""
        return MambaConfig(
            d_model=self.d_model,
            d_state=self.d_state,
            d_conv=self.d_conv,
            expand=self.expand,
            scan=self.scan,
        )


class MambaBlock(nn.Module):
    """``u + mixer(norm(u))`` with mamba_ssm's ``Block`` names (``norm``, ``mixer``)."""

    def __init__(self, cfg: TemporalConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = Mamba(cfg.mamba_config())


class MambaTemporal(nn.Module):
    """Causal temporal context over epoch embeddings ``(B, T, d_model) -> (B, T, d_model)``."""

    def __init__(self, cfg: TemporalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([MambaBlock(cfg) for _ in range(cfg.n_layers)])
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self._rescale_out_proj()

    def blocks(self) -> list[MambaBlock]:
        """The residual blocks, in order."""
        return [cast(MambaBlock, block) for block in self.layers]

    @torch.no_grad()
    def _rescale_out_proj(self) -> None:
        """mamba_ssm's prenorm-residual init: ``out_proj`` kaiming-uniform / sqrt(n_layers)."""
        for block in self.blocks():
            weight = block.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            weight /= math.sqrt(self.cfg.n_layers)

    # ------------------------------------------------------------------ state
    def init_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """Zero state for ``batch`` streams: ``layers.{i}.conv_state`` ``(B, d_inner, d_conv)``
        and ``layers.{i}.ssm_state`` ``(B, d_inner, d_state)``; device/dtype default to the
        parameters'."""
        if batch < 1:
            raise ValueError(f"MambaTemporal.init_state: batch must be >= 1, got {batch}")
        state: dict[str, Tensor] = {}
        for i, block in enumerate(self.blocks()):
            conv, ssm = block.mixer.allocate_inference_cache(batch, dtype=dtype, device=device)
            state[f"layers.{i}.conv_state"] = conv
            state[f"layers.{i}.ssm_state"] = ssm
        return state

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the recurrent state for ``batch`` streams at the parameter dtype."""
        itemsize = self.norm_f.weight.element_size()
        mcfg = self.cfg.mamba_config()
        per_layer = mcfg.d_inner * (mcfg.d_conv + mcfg.d_state)
        return batch * self.cfg.n_layers * per_layer * itemsize

    def _layer_state(self, state: dict[str, Tensor], i: int) -> tuple[Tensor, Tensor]:
        try:
            return state[f"layers.{i}.conv_state"], state[f"layers.{i}.ssm_state"]
        except KeyError as err:
            raise ValueError(f"MambaTemporal: state has no entry {err.args[0]!r}") from None

    # ---------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, state: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run a sequence of epoch embeddings.

        Args:
            x: ``(B, T, d_model)``.
            state: carried state (see module doc), or None to start from zeros. Not modified.

        Returns:
            ``y (B, T, d_model)`` and the new state (new tensors in the autograd graph; detach
            them for truncated backpropagation through time).
        """
        if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"MambaTemporal.forward: x must be (B, T, {self.cfg.d_model}), got {tuple(x.shape)}"
            )
        new_state: dict[str, Tensor] = {}
        u = x
        for i, block in enumerate(self.blocks()):
            layer_state = None if state is None else self._layer_state(state, i)
            y, (conv, ssm) = block.mixer(block.norm(u), layer_state)  # (B, T, d_model)
            u = u + y
            new_state[f"layers.{i}.conv_state"] = conv
            new_state[f"layers.{i}.ssm_state"] = ssm
        return self.norm_f(u), new_state

    def step(self, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One epoch embedding per stream, ``x (B, d_model) -> y (B, d_model)``; ``state`` is
        updated in place (inference only)."""
        if x.dim() != 2 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"MambaTemporal.step: x must be (B, {self.cfg.d_model}), got {tuple(x.shape)}"
            )
        u = x
        for i, block in enumerate(self.blocks()):
            conv, ssm = self._layer_state(state, i)
            u = u + block.mixer.step(block.norm(u), conv, ssm)  # (B, d_model)
        return self.norm_f(u)

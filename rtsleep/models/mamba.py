"""Mamba v1 selective state-space layer in pure PyTorch, with mamba_ssm's parameter names.

One layer maps ``u (B, L, d_model)`` to ``(B, L, d_model)``; ``d_inner = expand * d_model``:

1. ``x, z = in_proj(u)``                                    (B, L, d_inner) each
2. ``x = SiLU(causal depthwise conv1d(x))``                  kernel ``d_conv``, left history carried
3. ``delta_low, B, C = x_proj(x)``                           (dt_rank, d_state, d_state)
4. ``delta = softplus(dt_proj(delta_low))``                  dt_proj's bias is the dt bias
5. ``A = -exp(A_log)``; ``h_t = exp(delta_t A) h_{t-1} + (delta_t x_t) B_t``
6. ``y_t = h_t . C_t + D x_t``; ``y = y * SiLU(z)``; ``out = out_proj(y)``

Parameter names and shapes equal mamba_ssm v1 ``Mamba`` (``in_proj``, ``conv1d``, ``x_proj``,
``dt_proj``, ``A_log``, ``D``, ``out_proj``), so a state dict loads either way.

Recurrent state per stream (mamba_ssm layout):

- ``conv_state (B, d_inner, d_conv)``: the last ``d_conv`` conv inputs, oldest first. Like
  mamba_ssm, ``step`` shifts it left and writes the new input into the last column, then convolves
  all ``d_conv`` columns, so column 0 is never read again; only ``d_conv - 1`` columns carry
  information. ``forward`` with a carried state convolves ``conv_state[..., 1:]`` followed by the
  new inputs, and leaves the last ``d_conv`` inputs in the returned state, so prefill-then-step
  and chunked forwards equal one pass.
- ``ssm_state (B, d_inner, d_state)``: ``h`` after the last processed step.

The scan is causal by construction: output ``t`` reads inputs ``<= t`` only.

Selective scans (inputs in ``(B, L, ...)`` layout, unlike mamba_ssm's ``(B, D, L)``):

- :func:`selective_scan_sequential`: one loop over time that calls ``unbind`` once (indexing the
  time axis inside the loop makes backward quadratic).
- :func:`selective_scan_chunked`: time cut into chunks of ``K``; a chunk-local scan runs over the
  ``K`` positions for all chunks at once, then a loop over chunks carries the boundary states, and
  a decay ``exp(cumsum(delta A))`` (always ``<= 1``, so stable) adds each chunk's incoming state.
  ``K + L / K`` Python steps instead of ``L``, but more full-size passes over memory: on 2 CPU
  cores it measured 2.5-3x slower than the sequential scan (``docs/benchmarks.md``), so
  ``"sequential"`` is the default and ``"chunked"`` an option.

On CUDA with mamba_ssm installed, a forward that starts from a zero state may use
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (imported only in that branch).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

SCANS = ("sequential", "chunked")


@dataclass
class MambaConfig:
    """Hyper-parameters of one Mamba v1 layer (names and defaults of mamba_ssm's ``Mamba``).

    ``dt_rank="auto"`` means ``ceil(d_model / 16)``. ``dt_min``/``dt_max``/``dt_init_floor`` bound
    the initial step size ``softplus(dt_proj.bias)`` (dimensionless, per token). ``scan`` picks the
    pure-PyTorch selective scan (``"sequential"`` or ``"chunked"``, with ``chunk_size`` steps per
    chunk, None: ``ceil(sqrt(L))``); ``use_fast_path`` lets a CUDA
    forward from a zero state use mamba_ssm's kernel when it imports.
    """

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    scan: str = "sequential"
    chunk_size: int | None = None
    use_fast_path: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.dt_rank, str):
            if self.dt_rank != "auto":
                raise ValueError(
                    f"MambaConfig.dt_rank must be an int or 'auto', got {self.dt_rank!r}"
                )
        elif self.dt_rank < 1:
            raise ValueError(f"MambaConfig.dt_rank must be >= 1, got {self.dt_rank}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}"
            )
        if self.dt_init not in ("random", "constant"):
            raise ValueError(
                f"MambaConfig.dt_init must be 'random' or 'constant', got {self.dt_init!r}"
            )
        if self.scan not in SCANS:
            raise ValueError(f"MambaConfig.scan must be one of {SCANS}, got {self.scan!r}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"MambaConfig.chunk_size must be >= 1 or None, got {self.chunk_size}")

    @property
    def d_inner(self) -> int:
        """Inner width ``expand * d_model``."""
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        """``dt_rank`` with ``"auto"`` resolved to ``ceil(d_model / 16)``."""
        if isinstance(self.dt_rank, str):
            return math.ceil(self.d_model / 16)
        return int(self.dt_rank)


def _scan_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Tensor | None, delta_softplus: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Discretise: returns ``delta A`` (log decay), ``exp(delta A)`` and ``(delta u) B``.

    Shapes: u, delta (B, L, d); A (d, N); B (B, L, N) -> three tensors (B, L, d, N).
    """
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = F.softplus(delta)
    log_decay = delta.unsqueeze(-1) * A  # (B, L, d, 1) * (d, N) -> (B, L, d, N)
    decay = torch.exp(log_decay)  # (B, L, d, N)
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(
        2
    )  # (B, L, d, 1) * (B, L, 1, N) -> (B, L, d, N)
    return log_decay, decay, drive


def _scan_output(h: Tensor, u: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """``y = h . C + D u``, gated by ``SiLU(z)``. h (B, L, d, N), C (B, L, N) -> (B, L, d)."""
    y = torch.matmul(h, C.unsqueeze(-1)).squeeze(-1)  # (B, L, d, N) @ (B, L, N, 1) -> (B, L, d)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


def _check_scan_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"selective scan: u and delta must be (B, L, d), got {u.shape}, {delta.shape}"
        )
    n_batch, n_steps, d_inner = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective scan: A must be ({d_inner}, N), got {tuple(A.shape)}")
    expected = (n_batch, n_steps, A.shape[1])
    if tuple(B.shape) != expected or tuple(C.shape) != expected:
        raise ValueError(
            f"selective scan: B and C must be {expected}, got {tuple(B.shape)}, {tuple(C.shape)}"
        )


def selective_scan_sequential(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference selective scan: a loop over time that calls ``unbind`` once.

    Args:
        u: input ``(B, L, d)``; delta: step sizes before bias/softplus ``(B, L, d)``;
        A: ``(d, N)`` (negative); B, C: ``(B, L, N)``; D: skip ``(d,)``; z: gate ``(B, L, d)``;
        delta_bias: ``(d,)``; initial_state: ``h`` before the first step ``(B, d, N)`` (zeros if
        None).

    Returns:
        ``y (B, L, d)`` and the last state ``h (B, d, N)``.
    """
    _check_scan_shapes(u, delta, A, B, C)
    _, decay, drive = _scan_inputs(u, delta, A, B, delta_bias, delta_softplus)
    h = initial_state if initial_state is not None else decay.new_zeros(decay[:, 0].shape)
    states = []
    for decay_t, drive_t in zip(decay.unbind(1), drive.unbind(1), strict=True):
        h = torch.addcmul(drive_t, decay_t, h)  # (B, d, N): drive + decay * h
        states.append(h)
    hs = torch.stack(states, dim=1)  # L x (B, d, N) -> (B, L, d, N)
    return _scan_output(hs, u, C, D, z), h


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked selective scan, same arguments and results as :func:`selective_scan_sequential`.

    Time is cut into ``n_chunks`` chunks of ``chunk_size`` steps (default ``ceil(sqrt(L))``; the
    tail is padded with identity steps). A chunk-local scan from ``h = 0`` runs over the chunk
    positions for all chunks at once; a loop over chunks then carries the boundary states, and
    ``h_t = h_local_t + exp(cumsum(delta A))_t * h_in`` adds each chunk's incoming state.
    """
    _check_scan_shapes(u, delta, A, B, C)
    n_batch, n_steps, d_inner = u.shape
    d_state = A.shape[1]
    size = chunk_size if chunk_size is not None else max(1, math.isqrt(n_steps - 1) + 1)
    if size < 1:
        raise ValueError(f"selective_scan_chunked: chunk_size must be >= 1, got {size}")
    n_chunks = -(-n_steps // size)
    log_decay, decay, drive = _scan_inputs(u, delta, A, B, delta_bias, delta_softplus)
    pad = n_chunks * size - n_steps
    if pad:
        # identity steps at the end: log decay 0 (decay 1), drive 0
        log_decay = F.pad(log_decay, (0, 0, 0, 0, 0, pad))  # (B, L + pad, d, N)
        decay = F.pad(decay, (0, 0, 0, 0, 0, pad), value=1.0)
        drive = F.pad(drive, (0, 0, 0, 0, 0, pad))
    grid = (n_batch, n_chunks, size, d_inner, d_state)
    log_decay = log_decay.reshape(grid)  # (B, L', d, N) -> (B, nc, K, d, N)
    decay = decay.reshape(grid)
    drive = drive.reshape(grid)

    h = drive.new_zeros(n_batch, n_chunks, d_inner, d_state)  # local state of every chunk
    local = []
    for decay_k, drive_k in zip(decay.unbind(2), drive.unbind(2), strict=True):
        h = torch.addcmul(drive_k, decay_k, h)  # (B, nc, d, N)
        local.append(h)
    h_local = torch.stack(local, dim=2)  # K x (B, nc, d, N) -> (B, nc, K, d, N)
    cum_decay = torch.exp(torch.cumsum(log_decay, dim=2))  # (B, nc, K, d, N), each <= 1

    carry = (
        initial_state if initial_state is not None else drive.new_zeros(n_batch, d_inner, d_state)
    )
    incoming = []
    for chunk_decay, chunk_end in zip(
        cum_decay[:, :, -1].unbind(1), h_local[:, :, -1].unbind(1), strict=True
    ):
        incoming.append(carry)
        carry = torch.addcmul(chunk_end, chunk_decay, carry)  # (B, d, N)
    h_in = torch.stack(incoming, dim=1)  # nc x (B, d, N) -> (B, nc, d, N)
    hs = torch.addcmul(h_local, cum_decay, h_in.unsqueeze(2))  # (B, nc, K, d, N)
    hs = hs.reshape(n_batch, n_chunks * size, d_inner, d_state)[:, :n_steps]  # (B, L, d, N)
    return _scan_output(hs, u, C, D, z), carry


@functools.cache
def _mamba_ssm_scan() -> Callable[..., Any] | None:
    """mamba_ssm's CUDA selective scan, or None when it does not import (CUDA branch only)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # noqa: BLE001 - any import failure means "no fast path"
        log.info("mamba_ssm fast path unavailable: %s", err)
        return None
    return selective_scan_fn  # type: ignore[no-any-return]


class Mamba(nn.Module):
    """Mamba v1 layer: ``forward`` over a sequence, ``step`` for one token per stream.

    Parameter names/shapes (``d_inner = expand * d_model``, ``R = dt_rank``, ``N = d_state``):
    ``in_proj.weight (2 d_inner, d_model)``, ``conv1d.weight (d_inner, 1, d_conv)``,
    ``conv1d.bias (d_inner,)``, ``x_proj.weight (R + 2N, d_inner)``,
    ``dt_proj.weight (d_inner, R)``, ``dt_proj.bias (d_inner,)``, ``A_log (d_inner, N)``,
    ``D (d_inner,)``, ``out_proj.weight (d_model, d_inner)`` (plus ``in_proj.bias`` and
    ``out_proj.bias`` when ``bias``).
    """

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_model = cfg.d_model
        self.d_state = cfg.d_state
        self.d_conv = cfg.d_conv
        self.d_inner = cfg.d_inner
        self.dt_rank = cfg.dt_rank_value
        self.in_proj = nn.Linear(self.d_model, 2 * self.d_inner, bias=cfg.bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=cfg.d_conv,
            groups=self.d_inner,
            padding=cfg.d_conv - 1,
            bias=cfg.conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=cfg.bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's init: dt_proj weight U(+-R^-0.5 * dt_scale) (or constant), dt bias the
        inverse softplus of a log-uniform step in [dt_min, dt_max], S4D-real ``A_log = log(1..N)``,
        ``D = 1``."""
        cfg = self.cfg
        std = self.dt_rank**-0.5 * cfg.dt_scale
        if cfg.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_span = math.log(cfg.dt_max) - math.log(cfg.dt_min)
        dt = torch.exp(torch.rand(self.d_inner) * log_span + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus(inv_dt) == dt
        self.dt_proj.bias.copy_(inv_dt)
        arange = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(arange).expand(self.d_inner, self.d_state))  # (d_inner, N)
        self.D.fill_(1.0)

    # ------------------------------------------------------------------ state
    def allocate_inference_cache(
        self,
        batch_size: int,
        max_seqlen: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        """Zero states: ``conv_state (B, d_inner, d_conv)``, ``ssm_state (B, d_inner, d_state)``.

        ``max_seqlen`` is accepted for mamba_ssm compatibility and unused.
        """
        weight = self.out_proj.weight
        device = weight.device if device is None else device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(
            batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype
        )
        ssm_state = torch.zeros(
            batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype
        )
        return conv_state, ssm_state

    def _check_state(self, conv_state: Tensor, ssm_state: Tensor, batch: int) -> None:
        conv_shape = (batch, self.d_inner, self.d_conv)
        ssm_shape = (batch, self.d_inner, self.d_state)
        if tuple(conv_state.shape) != conv_shape:
            raise ValueError(
                f"Mamba: conv_state must be {conv_shape}, got {tuple(conv_state.shape)}"
            )
        if tuple(ssm_state.shape) != ssm_shape:
            raise ValueError(f"Mamba: ssm_state must be {ssm_shape}, got {tuple(ssm_state.shape)}")

    # ---------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run a sequence.

        Args:
            x: ``(B, L, d_model)``.
            state: ``(conv_state, ssm_state)`` carried from earlier tokens, or None for zeros.
                Not modified.

        Returns:
            ``y (B, L, d_model)`` and the new ``(conv_state, ssm_state)`` (new tensors, part of
            the autograd graph; detach them for truncated backpropagation).
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba.forward: x must be (B, L, {self.d_model}), got {tuple(x.shape)}"
            )
        n_batch, n_steps, _ = x.shape
        if n_steps == 0:
            raise ValueError("Mamba.forward: empty sequence (L = 0)")
        if state is None:
            conv_state, ssm_state = self.allocate_inference_cache(
                n_batch, dtype=x.dtype, device=x.device
            )
            fresh = True
        else:
            conv_state, ssm_state = state
            self._check_state(conv_state, ssm_state, n_batch)
            fresh = False

        xz = self.in_proj(x)  # (B, L, 2 d_inner)
        xs, z = xz.chunk(2, dim=-1)  # (B, L, d_inner) each
        xs_t = xs.transpose(1, 2)  # (B, L, d_inner) -> (B, d_inner, L)
        # the conv reads the last d_conv - 1 carried inputs, then the new ones
        history = torch.cat(
            [conv_state[..., 1:].to(xs_t.dtype), xs_t], dim=-1
        )  # (B, d_inner, d_conv-1+L)
        # the new state keeps the last d_conv inputs (mamba_ssm layout; column 0 is never read)
        new_conv_state = torch.cat(
            [conv_state, xs_t.to(conv_state.dtype)], dim=-1
        )  # (B, d_inner, d_conv+L)
        new_conv_state = new_conv_state[..., -self.d_conv :]  # (B, d_inner, d_conv)
        conv = F.conv1d(
            history, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner
        )  # (B, d_inner, L)
        u = F.silu(conv).transpose(1, 2)  # (B, d_inner, L) -> (B, L, d_inner)

        x_dbl = self.x_proj(u)  # (B, L, R + 2N)
        delta_low, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(delta_low, self.dt_proj.weight)  # (B, L, d_inner), bias added in the scan
        A = -torch.exp(self.A_log)  # (d_inner, N)

        if fresh and self.cfg.use_fast_path and x.is_cuda:
            scan_fn = _mamba_ssm_scan()
            if scan_fn is not None:
                y_t, last = scan_fn(
                    u.transpose(1, 2).contiguous(),  # (B, d_inner, L)
                    delta.transpose(1, 2).contiguous(),  # (B, d_inner, L)
                    A.float(),
                    B.transpose(1, 2).contiguous(),  # (B, N, L)
                    C.transpose(1, 2).contiguous(),  # (B, N, L)
                    self.D.float(),
                    z=z.transpose(1, 2).contiguous(),  # (B, d_inner, L)
                    delta_bias=self.dt_proj.bias.float(),
                    delta_softplus=True,
                    return_last_state=True,
                )
                y = y_t.transpose(1, 2)  # (B, d_inner, L) -> (B, L, d_inner)
                return self.out_proj(y), (new_conv_state, last.to(ssm_state.dtype))

        if self.cfg.scan == "chunked":
            y, last = selective_scan_chunked(
                u,
                delta,
                A,
                B,
                C,
                self.D,
                z=z,
                delta_bias=self.dt_proj.bias,
                initial_state=ssm_state.to(u.dtype),
                chunk_size=self.cfg.chunk_size,
            )
        else:
            y, last = selective_scan_sequential(
                u,
                delta,
                A,
                B,
                C,
                self.D,
                z=z,
                delta_bias=self.dt_proj.bias,
                initial_state=ssm_state.to(u.dtype),
            )
        return self.out_proj(y), (new_conv_state, last.to(ssm_state.dtype))

    # ------------------------------------------------------------------- step
    def step(self, x: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One token per stream; updates ``conv_state`` and ``ssm_state`` in place (mamba_ssm).

        Args:
            x: ``(B, d_model)`` or ``(B, 1, d_model)``.
            conv_state: ``(B, d_inner, d_conv)``; ssm_state: ``(B, d_inner, d_state)``.

        Returns:
            ``y`` with the shape of ``x``. For inference: the in-place update is not
            differentiable.
        """
        squeeze = x.dim() == 3
        if squeeze:
            if x.shape[1] != 1:
                raise ValueError(f"Mamba.step: x must be (B, 1, D), got {tuple(x.shape)}")
            x = x[:, 0]  # (B, 1, D) -> (B, D)
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"Mamba.step: x must be (B, {self.d_model}), got {tuple(x.shape)}")
        self._check_state(conv_state, ssm_state, x.shape[0])

        xz = self.in_proj(x)  # (B, 2 d_inner)
        xs, z = xz.chunk(2, dim=-1)  # (B, d_inner) each
        conv_state.copy_(
            torch.roll(conv_state, shifts=-1, dims=-1)
        )  # shift left, (B, d_inner, d_conv)
        conv_state[:, :, -1] = xs
        weight = self.conv1d.weight[:, 0, :]  # (d_inner, 1, d_conv) -> (d_inner, d_conv)
        conv = torch.sum(conv_state.to(xs.dtype) * weight, dim=-1)  # (B, d_inner)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        u = F.silu(conv)  # (B, d_inner)

        x_db = self.x_proj(u)  # (B, R + 2N)
        delta_low, B, C = torch.split(x_db, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(
            F.linear(delta_low, self.dt_proj.weight) + self.dt_proj.bias
        )  # (B, d_inner)
        A = -torch.exp(self.A_log)  # (d_inner, N)
        decay = torch.exp(delta.unsqueeze(-1) * A)  # (B, d_inner, N)
        drive = (delta * u).unsqueeze(-1) * B.unsqueeze(
            1
        )  # (B, d_inner, 1) * (B, 1, N) -> (B, d_inner, N)
        h = torch.addcmul(drive, decay, ssm_state.to(u.dtype))  # (B, d_inner, N)
        ssm_state.copy_(h)
        y = torch.matmul(h, C.unsqueeze(-1)).squeeze(
            -1
        )  # (B, d_inner, N) @ (B, N, 1) -> (B, d_inner)
        y = (y + u * self.D) * F.silu(z)  # (B, d_inner)
        out = self.out_proj(y)  # (B, d_model)
        return out.unsqueeze(1) if squeeze else out

"""Training-time augmentation of model-input epochs (after preprocessing, at the model rate).

All augmentations act on a window of ``T`` consecutive epochs read with a margin of signal on each
side (:meth:`offline.data.RecordingSource.read_signal`), so that shifting and stretching never
invent signal at epoch borders inside a recording:

- **time shift**: the window is read ``delta`` samples later or earlier (uniform in
  ``±max_shift_s``), one value per window;
- **sampling-rate jitter**: each epoch is resampled (linear interpolation) about its centre by a
  factor ``f`` (log-uniform in ``[1/(1+j), 1+j]``), i.e. the signal looks as if it had been recorded
  at ``f`` times the rate; per epoch, so labels never drift along a long sequence;
- **amplitude scaling**: one log-uniform factor per window and modality;
- **additive noise**: Gaussian, ``noise_std`` in units of the normalised signal;
- **channel dropout** (modality masking): each present modality is masked with probability
  ``drop_modality_p`` for the whole window, never all of them.

Random draws come from the ``torch.Generator`` passed in, so a seeded run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AugmentConfig:
    """Augmentation strengths; all zero = identity."""

    max_shift_s: float = 0.5
    rate_jitter: float = 0.05
    amplitude_log_std: float = 0.2
    noise_std: float = 0.05
    drop_modality_p: float = 0.15

    def __post_init__(self) -> None:
        if self.max_shift_s < 0 or self.rate_jitter < 0 or self.noise_std < 0:
            raise ValueError("augmentation strengths must be >= 0")
        if not 0.0 <= self.drop_modality_p < 1.0:
            raise ValueError(f"drop_modality_p must be in [0, 1), got {self.drop_modality_p}")
        if self.rate_jitter >= 0.5:
            raise ValueError(f"rate_jitter must be < 0.5, got {self.rate_jitter}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)

    def margin_s(self, epoch_s: float) -> float:
        """Signal needed on each side of a window, in s."""
        return self.max_shift_s + self.rate_jitter * epoch_s / 2 + 0.05


def sample_positions(
    n_windows: int,
    n_epochs: int,
    n_times: int,
    margin: int,
    sfreq: float,
    cfg: AugmentConfig,
    gen: torch.Generator,
) -> Tensor:
    """Fractional sample positions into margin-padded signals: ``(n_windows, n_epochs * n_times)``.

    Position 0 of the padded signal is ``margin`` samples before the window start. Without
    augmentation the positions are ``margin + arange(n_epochs * n_times)`` exactly.
    """
    j = torch.arange(n_times, dtype=torch.float64)  # (S,)
    centre = (n_times - 1) / 2
    starts = margin + torch.arange(n_epochs, dtype=torch.float64) * n_times  # (T,)
    if cfg.rate_jitter > 0:
        lim = math.log1p(cfg.rate_jitter)
        u = torch.rand(n_windows, n_epochs, 1, generator=gen, dtype=torch.float64)  # (W, T, 1)
        logf = (u * 2 - 1) * lim
        f = torch.exp(logf)  # (W, T, 1)
    else:
        f = torch.ones(n_windows, n_epochs, 1, dtype=torch.float64)
    pos = starts[None, :, None] + centre + (j[None, None, :] - centre) * f  # (W, T, S)
    if cfg.max_shift_s > 0:
        shift = (torch.rand(n_windows, 1, 1, generator=gen, dtype=torch.float64) * 2 - 1)
        pos = pos + shift * cfg.max_shift_s * sfreq  # (W, T, S)
    lo, hi = 0.0, float(2 * margin + n_epochs * n_times - 1)
    return pos.clamp(lo, hi).reshape(n_windows, n_epochs * n_times)  # (W, T*S)


def gather_linear(signal: Tensor, pos: Tensor) -> Tensor:
    """Linear interpolation of ``signal (W, M, N)`` at ``pos (W, P)`` -> ``(W, M, P)``."""
    lo = pos.floor()
    frac = (pos - lo).to(signal.dtype)  # (W, P)
    i0 = lo.long().clamp(0, signal.shape[-1] - 1)
    i1 = (i0 + 1).clamp(max=signal.shape[-1] - 1)
    m = signal.shape[1]
    idx0 = i0[:, None, :].expand(-1, m, -1)  # (W, M, P)
    idx1 = i1[:, None, :].expand(-1, m, -1)
    a = signal.gather(-1, idx0)
    b = signal.gather(-1, idx1)
    return a + (b - a) * frac[:, None, :]  # (W, M, P)


def augment_windows(
    signal: Tensor,
    mask: Tensor,
    n_epochs: int,
    n_times: int,
    margin: int,
    sfreq: float,
    cfg: AugmentConfig,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Cut (and augment) windows from margin-padded signals.

    Args:
        signal: ``(W, M, 2 * margin + T * S)`` float32, window ``w``'s signal with ``margin``
            samples before its first epoch and after its last (zeros beyond the recording).
        mask: ``(W, T, M)`` bool, modality present per epoch.

    Returns:
        ``x (W, T, M, S)`` and the (possibly channel-dropped) ``mask (W, T, M)``.
    """
    w, m, _ = signal.shape
    pos = sample_positions(w, n_epochs, n_times, margin, sfreq, cfg, gen)  # (W, T*S)
    x = gather_linear(signal, pos)  # (W, M, T*S)
    if cfg.amplitude_log_std > 0:
        scale = torch.exp(torch.randn(w, m, 1, generator=gen) * cfg.amplitude_log_std)
        x = x * scale  # (W, M, T*S)
    if cfg.noise_std > 0:
        x = x + torch.randn(x.shape, generator=gen) * cfg.noise_std
    x = x.view(w, m, n_epochs, n_times).permute(0, 2, 1, 3).contiguous()  # (W, T, M, S)
    mask = mask.clone()
    if cfg.drop_modality_p > 0:
        present = mask.any(dim=1)  # (W, M)
        drop = (torch.rand(w, m, generator=gen) < cfg.drop_modality_p) & present
        all_gone = (present & ~drop).sum(dim=1) == 0  # (W,)
        drop[all_gone] = False
        mask &= ~drop[:, None, :]
    x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype))
    return x, mask

"""Epoch-spectral EEG encoder: Welch band powers of one preprocessed EEG epoch -> embedding.

The band powers use exactly the definition of the Sleep-EDF per-epoch features in shared data
(``scipy.signal.welch`` with ``nperseg=256`` at 100 Hz: periodic Hann window, 50 % overlap,
per-segment mean removal, one-sided density; the band value is the mean PSD over the bins whose
frequency lies in the closed band), expressed in µV²/Hz and natural-log scaled. So a model whose
head and temporal module were trained on those features (through :meth:`SpectralEncoder.embed`)
runs unchanged on raw EEG (through :meth:`SpectralEncoder.forward`), in training and in the daemon.

Input units: the preprocessed EEG of :class:`rtsleep.data.preprocessing.PreprocessSpec`, i.e.
µV divided by ``input_scale_uv`` (20 µV per unit by default). Features per epoch: the ``n_bands``
log band powers (ln µV²/Hz, shifted by ``log_offset`` before the log) and the same minus their
log-sum-exp (relative powers, insensitive to the channel's gain). They are standardised with
fixed per-feature ``center``/``scale`` buffers (set from training data, saved with the model) and
mapped by a small MLP to ``d_model``.

**Running normalisation** (``running_epochs = N > 0``): a third block of features, the log band
powers minus their running mean over the stream so far (:meth:`SpectralEncoder.running_mean`),
i.e. each epoch's power relative to this recording's own level, which a montage or an amplifier
gain shifts as a whole. The running mean is the mean of all present epochs of the stream up to
and including the current one (epoch 1 of a stream therefore has zeros there), and after ``N``
epochs it slides as an exponential mean with weight ``1 / N``, so a bed that streams for days
follows slow changes. It is causal and carried in the model state
(``spectral.mean (B, n_bands)``, ``spectral.count (B,)``), so streaming equals offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

SLEEP_EDF_BANDS: tuple[tuple[float, float], ...] = (
    (0.5, 4.0),
    (4.0, 8.0),
    (8.0, 13.0),
    (13.0, 30.0),
)
"""Delta, theta, alpha, beta in Hz: the first four bands of the Sleep-EDF features (gamma,
30-50 Hz, lies above the 35-Hz EEG low-pass of the default preprocessing and is left out)."""


@dataclass
class SpectralConfig:
    """Size and signal definition of :class:`SpectralEncoder`."""

    #: Model rate in Hz and samples per epoch of the input.
    sfreq: float = 100.0
    n_times: int = 3000
    #: Welch segment length and hop in samples.
    nperseg: int = 256
    hop: int = 128
    #: ``(low_hz, high_hz)`` closed bands.
    bands: tuple[tuple[float, float], ...] = SLEEP_EDF_BANDS
    #: µV per unit of the preprocessed input (the EEG ``scale`` of the preprocess spec).
    input_scale_uv: float = 20.0
    #: Added to the band power in µV²/Hz before the log (keeps a flat epoch finite).
    log_offset: float = 1e-4
    #: MLP hidden width and output (embedding) width.
    hidden: int = 64
    d_model: int = 32
    dropout: float = 0.1
    #: Running normalisation (module doc): 0 = off; ``N > 0`` = cumulative mean of the stream's
    #: log band powers for its first ``N`` epochs, then exponential with weight ``1 / N``.
    running_epochs: int = 0

    def __post_init__(self) -> None:
        self.bands = tuple((float(lo), float(hi)) for lo, hi in self.bands)
        if self.nperseg < 2 or self.hop < 1 or self.nperseg > self.n_times:
            raise ValueError(
                f"SpectralConfig: need 2 <= nperseg <= n_times and hop >= 1, got nperseg "
                f"{self.nperseg}, hop {self.hop}, n_times {self.n_times}"
            )
        if not self.bands:
            raise ValueError("SpectralConfig: bands must not be empty")
        nyq = self.sfreq / 2
        for lo, hi in self.bands:
            if not 0 <= lo < hi <= nyq:
                raise ValueError(f"SpectralConfig: band ({lo}, {hi}) Hz not within 0-{nyq} Hz")
        if self.input_scale_uv <= 0 or self.log_offset <= 0:
            raise ValueError("SpectralConfig: input_scale_uv and log_offset must be positive")
        if self.running_epochs < 0:
            raise ValueError(f"SpectralConfig: running_epochs must be >= 0, got "
                             f"{self.running_epochs}")

    @property
    def n_features(self) -> int:
        """Features per epoch: absolute and relative log power of every band, plus the power
        relative to the running mean when ``running_epochs > 0``."""
        return (3 if self.running_epochs > 0 else 2) * len(self.bands)


class SpectralEncoder(nn.Module):
    """``x (B, S)`` preprocessed EEG -> ``(B, d_model)``; see the module doc."""

    band_weights: Tensor
    window: Tensor
    density: Tensor
    center: Tensor
    scale: Tensor

    def __init__(self, cfg: SpectralConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_freq = cfg.nperseg // 2 + 1
        freqs = torch.arange(n_freq, dtype=torch.float64) * cfg.sfreq / cfg.nperseg  # (F,)
        weights = torch.zeros(len(cfg.bands), n_freq, dtype=torch.float64)  # (n_bands, F)
        for i, (lo, hi) in enumerate(cfg.bands):
            sel = (freqs >= lo) & (freqs <= hi)
            if not bool(sel.any()):
                raise ValueError(f"SpectralConfig: band ({lo}, {hi}) Hz holds no Welch bin")
            weights[i, sel] = 1.0 / float(sel.sum())
        window = torch.hann_window(cfg.nperseg, periodic=True, dtype=torch.float64)
        # one-sided density: |X|^2 / (fs * sum(w^2)), doubled except DC (and Nyquist if even)
        onesided = torch.full((n_freq,), 2.0, dtype=torch.float64)
        onesided[0] = 1.0
        if cfg.nperseg % 2 == 0:
            onesided[-1] = 1.0
        density = onesided / (cfg.sfreq * float((window**2).sum()))  # (F,)
        self.register_buffer("band_weights", weights.float(), persistent=False)
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("density", density.float(), persistent=False)
        self.register_buffer("center", torch.zeros(cfg.n_features))
        self.register_buffer("scale", torch.ones(cfg.n_features))
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_features, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.d_model),
        )

    def band_log_power(self, x: Tensor) -> Tensor:
        """ln(mean Welch PSD in each band, µV²/Hz, + ``log_offset``): ``(B, S) -> (B, n_bands)``."""
        cfg = self.cfg
        if x.dim() != 2 or x.shape[1] != cfg.n_times:
            raise ValueError(f"x must have shape (B, {cfg.n_times}), got {tuple(x.shape)}")
        seg = x.float().unfold(1, cfg.nperseg, cfg.hop)  # (B, n_seg, nperseg)
        seg = seg - seg.mean(dim=-1, keepdim=True)
        spec = torch.fft.rfft(seg * self.window, dim=-1)  # (B, n_seg, F)
        psd = (spec.real**2 + spec.imag**2).mean(dim=1) * self.density  # (B, F)
        power = psd @ self.band_weights.T * cfg.input_scale_uv**2  # (B, n_bands) µV²/Hz
        return torch.log(power + cfg.log_offset)

    @property
    def running(self) -> bool:
        """True when the features include the running normalisation (module doc)."""
        return self.cfg.running_epochs > 0

    def features(self, log_power: Tensor, running_mean: Tensor | None = None) -> Tensor:
        """Standardised features from band log powers: ``(..., n_bands) -> (..., n_features)``.

        ``running_mean (..., n_bands)`` (:meth:`running_mean`) is required when
        ``running_epochs > 0`` and ignored otherwise.
        """
        rel = log_power - torch.logsumexp(log_power, dim=-1, keepdim=True)  # (..., n_bands)
        parts = [log_power, rel]
        if self.running:
            if running_mean is None or running_mean.shape != log_power.shape:
                got = None if running_mean is None else tuple(running_mean.shape)
                raise ValueError(f"SpectralEncoder: running_epochs > 0 needs a running mean of "
                                 f"shape {tuple(log_power.shape)}, got {got}")
            parts.append(log_power - running_mean)
        feats = torch.cat(parts, dim=-1)  # (..., n_features)
        return (feats - self.center) / self.scale

    def embed(self, log_power: Tensor, running_mean: Tensor | None = None) -> Tensor:
        """Embedding from band log powers ``(..., n_bands) -> (..., d_model)`` (used directly
        when training on precomputed band powers); ``running_mean`` as in :meth:`features`."""
        return self.mlp(self.features(log_power, running_mean))

    def forward(self, x: Tensor, running_mean: Tensor | None = None) -> Tensor:
        """``x (B, S)`` preprocessed EEG -> ``(B, d_model)``; ``running_mean`` as in
        :meth:`features`."""
        return self.embed(self.band_log_power(x), running_mean)

    def init_running(self, batch: int, device: torch.device | str | None = None
                     ) -> tuple[Tensor, Tensor]:
        """A fresh running mean ``(batch, n_bands)`` float32 and count ``(batch,)`` int64."""
        mean = torch.zeros(batch, len(self.cfg.bands), device=device)
        return mean, torch.zeros(batch, dtype=torch.int64, device=device)

    def running_mean(
        self, log_power: Tensor, present: Tensor, mean: Tensor, count: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Running means along a sequence (module doc); absent epochs leave them unchanged.

        Args:
            log_power: ``(B, T, n_bands)`` band log powers (rows of absent epochs are ignored,
                NaN allowed there).
            present: ``(B, T)`` bool, True = the epoch has EEG.
            mean, count: the carried ``(B, n_bands)`` mean and ``(B,)`` int64 count of present
                epochs (:meth:`init_running` for a new stream).

        Returns:
            ``(means (B, T, n_bands), mean, count)``: entry ``t`` includes epoch ``t`` itself
            (for an absent epoch it is the mean before it); the new mean and count.
        """
        n_cap = max(1, self.cfg.running_epochs)
        lp = torch.nan_to_num(log_power.float())  # (B, T, n_bands)
        pres = present.bool()
        out = []
        m, c = mean.float(), count.to(torch.int64)
        for t in range(lp.shape[1]):
            p = pres[:, t]  # (B,)
            c = c + p.to(torch.int64)
            w = (1.0 / c.clamp(1, n_cap).to(lp.dtype)) * p.to(lp.dtype)  # (B,)
            m = m + w[:, None] * (lp[:, t] - m)  # (B, n_bands)
            out.append(m)
        means = torch.stack(out, dim=1) if out else lp.new_zeros(lp.shape)  # (B, T, n_bands)
        return means, m, c

    @torch.no_grad()
    def fit_standardisation(self, log_power: Tensor, running_mean: Tensor | None = None) -> None:
        """Set ``center``/``scale`` to the feature mean/std of ``log_power (N, n_bands)``
        (``running_mean (N, n_bands)`` is required when ``running_epochs > 0``)."""
        self.center.zero_()
        self.scale.fill_(1.0)
        nb = len(self.cfg.bands)
        rm = None if running_mean is None else running_mean.reshape(-1, nb)
        feats = self.features(log_power.reshape(-1, nb), rm)  # (N, n_features)
        self.center.copy_(feats.mean(dim=0))
        self.scale.copy_(feats.std(dim=0).clamp_min(1e-3))


def sleep_edf_band_log_power(columns: Tensor, log_offset: float = 1e-4) -> Tensor:
    """Sleep-EDF feature columns -> the encoder's band log powers.

    ``columns (..., n_bands)``: natural-log band powers as stored in the shared Sleep-EDF feature
    files (``ln(PSD in V²/Hz + 1e-10)``). Returns ``ln(PSD in µV²/Hz + log_offset)``, the quantity
    :meth:`SpectralEncoder.band_log_power` computes from raw EEG.
    """
    psd_v2 = (torch.exp(columns.double()) - 1e-10).clamp_min(0.0)  # V²/Hz
    return torch.log(psd_v2 * 1e12 + log_offset).float()


__all__ = [
    "SLEEP_EDF_BANDS",
    "SpectralConfig",
    "SpectralEncoder",
    "sleep_edf_band_log_power",
]

"""MC2SleepNet-style dual-branch epoch encoder for one single-channel signal (EEG).

- Raw branch: a strided 1-D CNN over the 30-s epoch, averaged over time -> ``raw_embedding``.
- Spectral branch: ``torch.stft`` (Hann window, no centring, so each epoch stands alone), log
  magnitude, one token per STFT frame, a Transformer with a CLS token -> ``spec_embedding``.
- Fusion: ``Linear(concat(raw, spec))`` -> ``embedding``.

Both branch embeddings are exposed for the epoch-level InfoNCE between the two views, and the
spectral tokens for cross-masking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rtsleep.models.frame_encoder import conv_bn_act, whole_samples
from rtsleep.models.transformer import TransformerStack, sincos_positions


@dataclass
class DualBranchConfig:
    """Sizes of :class:`DualBranchEncoder`; times in seconds, rates in Hz."""

    sfreq: float = 100.0
    n_times: int = 3000
    #: Raw branch: stem (kernel and stride in samples), then one stride-4 conv per entry.
    raw_stem_channels: int = 16
    raw_stem_kernel: int = 25
    raw_stem_stride: int = 6
    raw_channels: tuple[int, ...] = (32, 64)
    raw_kernel: int = 7
    #: Spectral branch: STFT window and hop.
    stft_window_s: float = 2.0
    stft_hop_s: float = 1.0
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.raw_channels = tuple(self.raw_channels)
        if self.n_stft_frames < 1:
            raise ValueError(f"STFT window {self.stft_window_s} s exceeds the epoch")

    @property
    def n_fft(self) -> int:
        """STFT window length in samples."""
        return whole_samples(self.stft_window_s, self.sfreq, "stft_window_s")

    @property
    def hop_len(self) -> int:
        """STFT hop in samples."""
        return whole_samples(self.stft_hop_s, self.sfreq, "stft_hop_s")

    @property
    def n_freqs(self) -> int:
        """Frequency bins of the one-sided STFT."""
        return self.n_fft // 2 + 1

    @property
    def n_stft_frames(self) -> int:
        """STFT frames per epoch."""
        return 1 + (self.n_times - self.n_fft) // self.hop_len


@dataclass
class DualBranchOutput:
    """Per-epoch outputs of :class:`DualBranchEncoder` for ``B`` epochs."""

    #: Fused embedding ``(B, d_model)``.
    embedding: Tensor
    #: Raw-CNN view ``(B, d_model)``.
    raw_embedding: Tensor
    #: Spectrogram-Transformer view (its CLS output) ``(B, d_model)``.
    spec_embedding: Tensor
    #: Spectrogram-Transformer frame outputs ``(B, n_stft_frames, d_model)``.
    spec_tokens: Tensor


class DualBranchEncoder(nn.Module):
    """``x (B, n_times)`` single-channel epochs -> :class:`DualBranchOutput`."""

    window: Tensor
    positions: Tensor

    def __init__(self, cfg: DualBranchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers = [conv_bn_act(1, cfg.raw_stem_channels, cfg.raw_stem_kernel, cfg.raw_stem_stride)]
        c_in = cfg.raw_stem_channels
        for c_out in cfg.raw_channels:
            layers.append(conv_bn_act(c_in, c_out, cfg.raw_kernel, 4))
            c_in = c_out
        self.raw_cnn = nn.Sequential(*layers)
        self.raw_proj = nn.Linear(c_in, cfg.d_model)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.spec_norm = nn.LayerNorm(cfg.n_freqs)
        self.spec_proj = nn.Linear(cfg.n_freqs, cfg.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        nn.init.normal_(self.cls_token, std=0.02)
        self.register_buffer(
            "positions", sincos_positions(1 + cfg.n_stft_frames, cfg.d_model), persistent=False
        )
        self.spec_transformer = TransformerStack(
            cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, cfg.dropout
        )
        self.fuse = nn.Linear(2 * cfg.d_model, cfg.d_model)

    def spectrogram(self, x: Tensor) -> Tensor:
        """Log-magnitude STFT: ``x (B, n_times) -> (B, n_stft_frames, n_freqs)``."""
        spec = torch.stft(
            x,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_len,
            window=self.window.to(x.dtype),
            center=False,
            return_complex=True,
        )  # (B, n_freqs, n_frames)
        return torch.log(spec.abs() + 1e-6).transpose(1, 2)  # (B, n_frames, n_freqs)

    def forward(self, x: Tensor) -> DualBranchOutput:
        """Encode ``x (B, n_times)``; see :class:`DualBranchOutput` for shapes."""
        if x.dim() != 2 or x.shape[-1] != self.cfg.n_times:
            raise ValueError(
                f"DualBranchEncoder expects x of shape (B, {self.cfg.n_times}), "
                f"got {tuple(x.shape)}"
            )
        b = x.shape[0]
        raw = self.raw_proj(self.raw_cnn(x[:, None, :]).mean(dim=-1))  # (B, D)
        tok = self.spec_proj(self.spec_norm(self.spectrogram(x)))  # (B, F, D)
        tok = torch.cat([self.cls_token.expand(b, -1, -1), tok], dim=1)  # (B, 1+F, D)
        out = self.spec_transformer(tok + self.positions.to(tok.dtype))  # (B, 1+F, D)
        spec = out[:, 0]  # (B, D)
        emb = self.fuse(torch.cat([raw, spec], dim=-1))  # (B, D)
        return DualBranchOutput(
            embedding=emb, raw_embedding=raw, spec_embedding=spec, spec_tokens=out[:, 1:]
        )

"""NeuroNet-style frame encoder for one modality (one 30-s epoch -> CLS + frame tokens).

The epoch is cut into overlapping frames (``frame_s`` windows every ``hop_s`` seconds). A small
multi-scale 1-D CNN (kernels 3/5/7, optional squeeze-excitation) turns each frame into a feature
vector (``frame_features``: the masked-prediction target in pretraining), which is projected to
the token width. A Transformer with a CLS token and fixed sin-cos positions runs over the tokens.

Two backbone modes give the same ``(B, n_frames, n_features)`` features:

- ``per_frame=True`` (NeuroNet): the CNN runs on each frame separately, then averages over time.
- ``per_frame=False`` (CPU default): the CNN runs once over the whole epoch and each frame's feature
  is the average of the feature map over the frame's span. Overlapping frames then share their
  convolutions (4x less work at a 1-s hop); a frame's feature also sees the few samples of its
  neighbours that fall in the CNN's receptive field. Frame and hop must be whole multiples of the
  CNN's total stride.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtsleep.models.transformer import TransformerStack, sincos_positions


@dataclass
class FrameEncoderConfig:
    """Sizes of one ``FrameEncoder``; times in seconds, rates in Hz."""

    sfreq: float = 100.0
    #: Samples per 30-s epoch at ``sfreq``.
    n_times: int = 3000
    frame_s: float = 4.0
    hop_s: float = 2.0
    stem_channels: int = 8
    #: Stem kernel and stride in samples.
    stem_kernel: int = 21
    stem_stride: int = 10
    #: Output channels of each multi-scale stage (each stage halves the length); each must be
    #: divisible by ``len(kernels)``.
    stage_channels: tuple[int, ...] = (12, 24)
    kernels: tuple[int, ...] = (3, 5, 7)
    #: Squeeze-excitation reduction ratio; 0 disables it.
    se_ratio: int = 0
    #: Run the CNN on each frame (True) or once per epoch, pooled per frame (False).
    per_frame: bool = False
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.stage_channels = tuple(self.stage_channels)
        self.kernels = tuple(self.kernels)
        for c in self.stage_channels:
            if c % len(self.kernels) != 0:
                raise ValueError(
                    f"stage width {c} is not divisible by the {len(self.kernels)} kernels"
                )
        if self.n_frames < 1:
            raise ValueError(
                f"frame of {self.frame_s} s does not fit a {self.n_times}-sample epoch"
            )
        stride = self.total_stride
        if not self.per_frame and (self.frame_len % stride or self.hop_len % stride):
            raise ValueError(
                f"frame ({self.frame_len}) and hop ({self.hop_len}) samples must be multiples of "
                f"the CNN stride {stride} when per_frame is False"
            )

    @property
    def total_stride(self) -> int:
        """Downsampling of the CNN: stem stride times 2 per stage."""
        return self.stem_stride * 2 ** len(self.stage_channels)

    @property
    def frame_len(self) -> int:
        """Samples per frame."""
        return whole_samples(self.frame_s, self.sfreq, "frame_s")

    @property
    def hop_len(self) -> int:
        """Samples between frame starts."""
        return whole_samples(self.hop_s, self.sfreq, "hop_s")

    @property
    def n_frames(self) -> int:
        """Frames per epoch (e.g. 27 for 4-s frames, 1-s hop, 30 s)."""
        return 1 + (self.n_times - self.frame_len) // self.hop_len

    @property
    def n_features(self) -> int:
        """Width of one frame's backbone feature vector."""
        return self.stage_channels[-1] if self.stage_channels else self.stem_channels


def whole_samples(seconds: float, sfreq: float, name: str) -> int:
    """``seconds`` at ``sfreq`` Hz as a whole number of samples; ``ValueError`` otherwise."""
    n = seconds * sfreq
    if n < 1 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"{name}={seconds} s is not a whole number of samples at {sfreq} Hz")
    return int(round(n))


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv1d (``kernel`` samples, ``stride``, half-kernel padding, no bias) -> BatchNorm -> GELU:
    ``(N, c_in, L) -> (N, c_out, ceil(L / stride))`` for odd ``kernel``."""
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.GELU(),
    )


class SqueezeExcite(nn.Module):
    """Channel re-weighting from the time-averaged activations."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x (N, C, L) -> (N, C, L)``."""
        w = self.fc(x.mean(dim=-1))  # (N, C)
        return x * w[:, :, None]


class MultiScaleBlock(nn.Module):
    """Parallel convolutions (one per kernel size), concatenated, plus a strided shortcut."""

    def __init__(
        self, c_in: int, c_out: int, kernels: tuple[int, ...], stride: int, se_ratio: int
    ) -> None:
        super().__init__()
        per_branch = c_out // len(kernels)
        self.branches = nn.ModuleList(
            nn.Conv1d(c_in, per_branch, k, stride=stride, padding=k // 2, bias=False)
            for k in kernels
        )
        self.norm = nn.BatchNorm1d(c_out)
        self.shortcut = nn.Sequential(
            nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out)
        )
        self.se = SqueezeExcite(c_out, se_ratio) if se_ratio > 0 else nn.Identity()
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """``x (N, C_in, L) -> (N, C_out, ceil(L / stride))``."""
        y = torch.cat([b(x) for b in self.branches], dim=1)  # (N, C_out, L')
        y = self.se(self.act(self.norm(y)))
        return self.act(y + self.shortcut(x))


class FrameCNN(nn.Module):
    """Frame backbone: ``(N, frame_len)`` samples -> ``(N, n_features)``."""

    def __init__(self, cfg: FrameEncoderConfig) -> None:
        super().__init__()
        self.stem = conv_bn_act(1, cfg.stem_channels, cfg.stem_kernel, cfg.stem_stride)
        blocks = []
        c_in = cfg.stem_channels
        for c_out in cfg.stage_channels:
            blocks.append(MultiScaleBlock(c_in, c_out, cfg.kernels, 2, cfg.se_ratio))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)

    def feature_map(self, x: Tensor) -> Tensor:
        """``x (N, n_samples) -> (N, n_features, n_samples / total_stride)``."""
        h = self.stem(x[:, None, :])  # (N, C0, L0)
        return self.blocks(h)  # (N, C, L)

    def forward(self, frames: Tensor) -> Tensor:
        """``frames (N, frame_len) -> (N, n_features)`` (global average over time)."""
        return self.feature_map(frames).mean(dim=-1)  # (N, C)


class FrameEncoder(nn.Module):
    """One modality's epoch encoder: ``x (B, n_times) -> tokens (B, 1 + n_frames, d_model)``.

    Token 0 is the CLS token; tokens ``1..n_frames`` are the frame tokens in time order.
    """

    positions: Tensor

    def __init__(self, cfg: FrameEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = FrameCNN(cfg)
        self.token_proj = nn.Linear(cfg.n_features, cfg.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        nn.init.normal_(self.cls_token, std=0.02)
        self.register_buffer(
            "positions", sincos_positions(1 + cfg.n_frames, cfg.d_model), persistent=False
        )
        self.transformer = TransformerStack(
            cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, cfg.dropout
        )

    def frames(self, x: Tensor) -> Tensor:
        """Cut epochs into frames: ``x (B, n_times) -> (B, n_frames, frame_len)``."""
        if x.dim() != 2 or x.shape[-1] != self.cfg.n_times:
            raise ValueError(
                f"FrameEncoder expects x of shape (B, {self.cfg.n_times}), got {tuple(x.shape)}"
            )
        return x.unfold(-1, self.cfg.frame_len, self.cfg.hop_len)  # (B, F, frame_len)

    def frame_features(self, x: Tensor) -> Tensor:
        """Backbone features per frame: ``x (B, n_times) -> (B, n_frames, n_features)``."""
        cfg = self.cfg
        fr = self.frames(x)  # (B, F, W), also checks the shape
        b, f, w = fr.shape
        if cfg.per_frame:
            feats = self.backbone(fr.reshape(b * f, w))  # (B*F, C)
            return feats.view(b, f, -1)  # (B, F, C)
        fmap = self.backbone.feature_map(x)  # (B, C, L)
        stride = cfg.total_stride
        pooled = F.avg_pool1d(fmap, cfg.frame_len // stride, cfg.hop_len // stride)  # (B, C, F')
        return pooled[:, :, :f].transpose(1, 2)  # (B, F, C)

    def encode_features(self, features: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Transformer over projected frame features.

        ``features (B, n_frames, n_features)``; ``token_mask (B, n_frames)`` bool, True = the frame
        is hidden (dropped from attention as a key, MAE-style; its own output is meaningless).
        Returns ``(B, 1 + n_frames, d_model)``.
        """
        b = features.shape[0]
        tok = self.token_proj(features)  # (B, F, D)
        cls = self.cls_token.expand(b, -1, -1)  # (B, 1, D)
        tok = torch.cat([cls, tok], dim=1) + self.positions.to(tok.dtype)  # (B, 1+F, D)
        keep = None
        if token_mask is not None:
            if token_mask.shape != features.shape[:2]:
                raise ValueError(
                    f"token_mask must have shape {tuple(features.shape[:2])}, "
                    f"got {tuple(token_mask.shape)}"
                )
            cls_keep = torch.ones(b, 1, dtype=torch.bool, device=features.device)
            keep = torch.cat([cls_keep, ~token_mask.bool()], dim=1)  # (B, 1+F)
        return self.transformer(tok, keep)

    def forward(self, x: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """``x (B, n_times) -> (B, 1 + n_frames, d_model)``; see ``encode_features``."""
        return self.encode_features(self.frame_features(x), token_mask)

"""Apnea detector on the shape of the heart-rate trace: a small 1-D CNN per window.

The cyclic variation of heart rate around apneas (a slow fall during the event, a surge at its
end, every 30-90 s) is a shape in the 5-minute trace that the hand-made window features describe
only through band powers. This network reads the trace itself
(:func:`rtsleep.apnea.features.window_trace`: ``TRACE_LEN`` samples at 1 Hz, median removed, in
units of 10 bpm) and gives one logit per window, independently of the other windows. The causal
variant reads the 5 minutes before the window end; the non-causal one a trace centred on the
window. :class:`rtsleep.apnea.ecg_model.EcgApneaModel` averages its probability with the
feature GRU's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rtsleep.apnea.features import TRACE_LEN


@dataclass(frozen=True)
class EcgTraceConfig:
    """Shape of the trace CNN."""

    n_times: int = TRACE_LEN
    channels: int = 16
    kernel: int = 7
    n_blocks: int = 4
    dropout: float = 0.3


class EcgTraceNet(nn.Module):
    """Traces ``(..., n_times)`` -> apnea logits ``(...)``, one per trace."""

    def __init__(self, config: EcgTraceConfig) -> None:
        super().__init__()
        if config.n_blocks < 1 or config.channels < 1 or config.kernel % 2 == 0:
            raise ValueError(f"EcgTraceConfig: need n_blocks, channels >= 1 and an odd kernel: "
                             f"{config}")
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(config.n_blocks):
            layers += [nn.Conv1d(c_in, config.channels, config.kernel, padding=config.kernel // 2),
                       nn.GELU()]
            if i < config.n_blocks - 1:
                layers.append(nn.MaxPool1d(2))
            c_in = config.channels
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.channels, 1))

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        """``trace (..., n_times)`` -> ``logits (...)``."""
        if trace.shape[-1] != self.config.n_times:
            raise ValueError(f"trace must end in {self.config.n_times} samples, got "
                             f"{tuple(trace.shape)}")
        lead = trace.shape[:-1]
        x = trace.reshape(-1, 1, self.config.n_times)  # (..., S) -> (N, 1, S)
        h = self.body(x).mean(dim=-1)  # (N, C, S') -> (N, C)
        return self.head(h).reshape(lead)  # (N, 1) -> (...)

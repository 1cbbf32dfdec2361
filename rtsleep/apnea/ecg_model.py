"""Learned apnea detector on heart rate (Apnea-ECG style, per minute): two models, averaged.

* **Feature GRU** (:class:`EcgApneaNet`): per window, standardised features -> MLP -> GRU over the
  window sequence -> logit of "this window is an apnea/hypopnea window".
* **Trace CNN** (:class:`rtsleep.apnea.trace_model.EcgTraceNet`): per window, a 1-D CNN on the
  5-minute heart-rate trace -> logit.

The model's probability is ``trace_weight`` x the CNN's plus the rest x the GRU's (0.5 each: in
subject-wise CV the two err on different minutes; see docs/benchmarks.md). The **causal**
variant uses a unidirectional GRU and the trace before the window end (streamable with
:meth:`EcgApneaNet.step`); the **non-causal** variant a bidirectional GRU and a trace centred on
the window (offline reports). Everything ships in one safetensors file, weights prefixed
``causal.`` / ``noncausal.`` / ``causal_trace.`` / ``noncausal_trace.``, configs as JSON in the
header metadata; nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rtsleep.apnea.features import FEATURE_NAMES, N_FEATURES, TRACE_LEN
from rtsleep.apnea.trace_model import EcgTraceConfig, EcgTraceNet
from rtsleep.data.errors import DataError

FORMAT_VERSION = "2"
VARIANTS: tuple[str, ...] = ("causal", "noncausal")
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "assets" / "apnea_ecg.safetensors"


@dataclass(frozen=True)
class EcgApneaConfig:
    """Shape of one variant. ``bidirectional`` False = causal."""

    n_features: int = N_FEATURES
    hidden: int = 32
    gru_hidden: int = 32
    dropout: float = 0.2
    bidirectional: bool = False


class EcgApneaNet(nn.Module):
    """Features ``(B, T, F)`` -> apnea logits ``(B, T)`` per window."""

    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, config: EcgApneaConfig) -> None:
        super().__init__()
        self.config = config
        f = config.n_features
        self.register_buffer("feat_mean", torch.zeros(f))
        self.register_buffer("feat_std", torch.ones(f))
        self.mlp = nn.Sequential(
            nn.Linear(f, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
        )
        self.gru = nn.GRU(
            config.hidden, config.gru_hidden, batch_first=True, bidirectional=config.bidirectional
        )
        n_dir = 2 if config.bidirectional else 1
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(n_dir * config.gru_hidden + config.hidden, 1)
        )

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Store the training-set feature mean and std ``(F,)``."""
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feat_std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.feat_mean) / self.feat_std  # (B, T, F)
        z = torch.nan_to_num(z, nan=0.0).clamp(-8.0, 8.0)  # missing feature -> training mean
        return self.mlp(z)  # (B, T, H)

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, F)`` -> ``(logits (B, T), h (n_dir, B, G))``."""
        e = self._embed(x)  # (B, T, H)
        y, h = self.gru(e, h0)  # (B, T, n_dir*G)
        logits = self.head(torch.cat([y, e], dim=-1)).squeeze(-1)  # (B, T, 1) -> (B, T)
        return logits, h

    def init_state(self, batch: int = 1) -> torch.Tensor:
        """Zero GRU state ``(1, batch, G)`` for :meth:`step` (causal variant only)."""
        return torch.zeros(1, batch, self.config.gru_hidden)

    @torch.no_grad()
    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One window ``x (B, F)`` with state ``h (1, B, G)`` -> ``(prob (B,), new h)``."""
        if self.config.bidirectional:
            raise ValueError("step() needs the causal variant; the non-causal one sees the future")
        logits, h = self.forward(x[:, None, :], h)  # (B, 1)
        return torch.sigmoid(logits[:, 0]), h


@dataclass
class EcgApneaModel:
    """Both variants (feature GRU and trace CNN each) plus provenance."""

    causal: EcgApneaNet
    noncausal: EcgApneaNet
    causal_trace: EcgTraceNet
    noncausal_trace: EcgTraceNet
    card: dict[str, object]
    #: Weight of the trace CNN's probability (the GRU's gets ``1 - trace_weight``).
    trace_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.trace_weight <= 1.0:
            raise ValueError(f"trace_weight must lie in [0, 1], got {self.trace_weight}")

    def variant(self, name: str) -> EcgApneaNet:
        """The feature GRU of ``"causal"`` or ``"noncausal"``."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
        return self.causal if name == "causal" else self.noncausal

    def trace_variant(self, name: str) -> EcgTraceNet:
        """The trace CNN of ``"causal"`` or ``"noncausal"``."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
        return self.causal_trace if name == "causal" else self.noncausal_trace

    def combine(self, p_features: np.ndarray, p_trace: np.ndarray) -> np.ndarray:
        """The model's probability from the GRU's and the CNN's (same shape)."""
        return (1.0 - self.trace_weight) * p_features + self.trace_weight * p_trace

    @torch.no_grad()
    def feature_proba(self, features: np.ndarray, variant: str = "noncausal") -> np.ndarray:
        """The feature GRU's probability ``(T,)`` of one night's features ``(T, F)``."""
        net = self.variant(variant).eval()
        logits, _ = net(torch.as_tensor(features, dtype=torch.float32)[None])  # (1, T)
        return torch.sigmoid(logits[0]).numpy().astype(np.float64)

    @torch.no_grad()
    def trace_proba(self, traces: np.ndarray, variant: str = "noncausal") -> np.ndarray:
        """The trace CNN's probability ``(T,)`` of traces ``(T, TRACE_LEN)``."""
        net = self.trace_variant(variant).eval()
        logits = net(torch.as_tensor(traces, dtype=torch.float32))  # (T,)
        return torch.sigmoid(logits).numpy().astype(np.float64)

    @torch.no_grad()
    def predict_proba(
        self, features: np.ndarray, traces: np.ndarray, variant: str = "noncausal"
    ) -> np.ndarray:
        """Per-window apnea probability ``(T,)`` of one night.

        ``features (T, F)`` from :func:`rtsleep.apnea.features.sequence_features`; ``traces
        (T, TRACE_LEN)`` from :func:`rtsleep.apnea.features.sequence_traces` with the variant's
        shift (0 causal, ``NONCAUSAL_TRACE_SHIFT_S`` non-causal).
        """
        if len(features) != len(traces):
            raise ValueError(f"{len(features)} feature windows but {len(traces)} traces")
        p_features = self.feature_proba(features, variant)
        return self.combine(p_features, self.trace_proba(traces, variant))


def save_ecg_model(model: EcgApneaModel, path: Path) -> None:
    """Write both variants to one safetensors file (configs and card in the metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format_version": FORMAT_VERSION,
        "feature_names": json.dumps(list(FEATURE_NAMES)),
        "trace_weight": json.dumps(model.trace_weight),
    }
    for name in VARIANTS:
        gru, cnn = model.variant(name), model.trace_variant(name)
        for prefix, net in ((name, gru), (f"{name}_trace", cnn)):
            for k, v in net.state_dict().items():
                tensors[f"{prefix}.{k}"] = v.detach().contiguous().clone()
        meta[f"config_{name}"] = json.dumps(asdict(gru.config))
        meta[f"config_{name}_trace"] = json.dumps(asdict(cnn.config))
    meta["card"] = json.dumps(model.card)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_ecg_model(path: Path | None = None) -> EcgApneaModel:
    """Read a file written by :func:`save_ecg_model` (default: the shipped model)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if not p.is_file():
        raise DataError(p, "apnea model file not found")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise DataError(p, f"not a readable safetensors file ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            p, f"not an rtsleep ECG apnea model (format_version {meta.get('format_version')!r})"
        )
    if json.loads(meta["feature_names"]) != list(FEATURE_NAMES):
        raise DataError(p, "model was trained on a different feature set than this build computes")
    try:
        tensors = load_file(str(p))
    except (OSError, SafetensorError) as err:
        raise DataError(p, f"not a readable safetensors file ({err})") from None

    def state(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    grus: dict[str, EcgApneaNet] = {}
    cnns: dict[str, EcgTraceNet] = {}
    for name in VARIANTS:
        gru = EcgApneaNet(EcgApneaConfig(**json.loads(meta[f"config_{name}"])))
        gru.load_state_dict(state(name))
        grus[name] = gru.eval()
        cnn = EcgTraceNet(EcgTraceConfig(**json.loads(meta[f"config_{name}_trace"])))
        cnn.load_state_dict(state(f"{name}_trace"))
        cnns[name] = cnn.eval()
        if cnn.config.n_times != TRACE_LEN:
            raise DataError(p, f"model reads {cnn.config.n_times}-sample traces; this build "
                            f"makes {TRACE_LEN}")
    return EcgApneaModel(
        grus["causal"],
        grus["noncausal"],
        cnns["causal"],
        cnns["noncausal"],
        json.loads(meta.get("card", "{}")),
        float(json.loads(meta.get("trace_weight", "0.5"))),
    )

"""The full model: epoch encoder -> per-epoch LayerNorm + projection -> Mamba temporal -> heads.

Shapes follow the tensor contract (docs/architecture.md): one epoch per bed ``x (B, M, S)``,
``mask (B, M)``; a sequence ``x (B, T, M, S)``, ``mask (B, T, M)``; ``M = len(EXG_MODALITIES)``.

The input norm before the temporal module is a per-epoch LayerNorm (no statistics over time or
batch), so ``step`` epoch by epoch equals ``forward`` over the sequence.

**Look-ahead.** With ``lookahead_epochs = k`` the output produced when epoch ``i`` arrives refers
to epoch ``i - k``: the model may use ``k`` epochs after an epoch before it commits to it. This is
an output delay, never a leak: the output at arrival ``i`` depends on epochs ``<= i`` only (the
temporal module is causal). ``SleepNetOutput.epoch_index`` says which epoch each output refers to
(negative while the first ``k`` epochs of a stream arrive: not yet emittable). In training, compare
the output at arrival ``i`` with the label of epoch ``i - k``.

The recurrent state is the temporal module's flat dict plus ``"n_epochs"`` (``(B,)`` int64, the
epochs consumed so far per bed) and, for a spectral encoder with running normalisation
(``SpectralConfig.running_epochs > 0``), its running band-power mean ``"spectral.mean"``
(``(B, n_bands)``) and count ``"spectral.count"`` (``(B,)`` int64), so it persists with
safetensors.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rtsleep.data.recording import EXG_MODALITIES, Modality
from rtsleep.models.dual_branch import DualBranchConfig, DualBranchEncoder
from rtsleep.models.frame_encoder import FrameEncoderConfig
from rtsleep.models.fusion import FusionConfig, MultimodalFusion
from rtsleep.models.heads import HeadsConfig, SleepHeads
from rtsleep.models.spectral import SpectralConfig, SpectralEncoder
from rtsleep.models.temporal import MambaTemporal, TemporalConfig

ENCODERS = ("fusion", "dual_branch", "spectral")
N_EPOCHS_KEY = "n_epochs"
RUNNING_MEAN_KEY = "spectral.mean"
RUNNING_COUNT_KEY = "spectral.count"


_EXTRA_KEYS = frozenset({N_EPOCHS_KEY, RUNNING_MEAN_KEY, RUNNING_COUNT_KEY})
"""State entries that are not the temporal module's."""


def _default_temporal() -> TemporalConfig:
    return TemporalConfig(d_model=64, n_layers=2)


@dataclass
class SleepNetConfig:
    """Every size of :class:`SleepNet`. Only the sub-config of the chosen ``encoder`` is built."""

    #: ``"fusion"`` (multimodal, SynthSleepNet-style), ``"dual_branch"`` (EEG only, MC2SleepNet)
    #: or ``"spectral"`` (EEG only, Welch band powers; ``rtsleep.models.spectral``).
    encoder: str = "fusion"
    fusion: FusionConfig = field(default_factory=FusionConfig)
    dual_branch: DualBranchConfig = field(default_factory=DualBranchConfig)
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    temporal: TemporalConfig = field(default_factory=_default_temporal)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    #: Output delay in epochs (see the module doc).
    lookahead_epochs: int = 0
    #: Epochs per encoder call inside ``forward`` (bounds memory; the result does not depend on it).
    encode_batch: int = 2048
    #: Sets of EEG derivations the model was trained on alike (``(("Fpz-Cz", "Pz-Oz"),)``). When
    #: the scored EEG is one of a set, the other derivations of the set that a recording or bed
    #: also has are scored too, each with its own context, and the stage probabilities are the
    #: mean over them (:func:`rtsleep.data.channels.eeg_views`). Empty: one EEG channel.
    eeg_views: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        for name in ("lookahead_epochs", "encode_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.lookahead_epochs < 0:
            raise ValueError(f"lookahead_epochs must be >= 0, got {self.lookahead_epochs}")
        if self.encode_batch < 1:
            raise ValueError(f"encode_batch must be >= 1, got {self.encode_batch}")
        if isinstance(self.eeg_views, str) or not all(
            not isinstance(v, str) and len(v) >= 2 and all(isinstance(d, str) and d for d in v)
            for v in self.eeg_views
        ):
            raise ValueError("eeg_views must be sets of two or more EEG derivation labels, got "
                             f"{self.eeg_views!r}")
        self.eeg_views = tuple(tuple(v) for v in self.eeg_views)  # JSON gives lists
        exg = tuple(str(m) for m in EXG_MODALITIES)
        if self.encoder == "fusion" and self.fusion.modalities != exg:
            raise ValueError(
                f"fusion modalities must be {exg} (the model tensor contract), "
                f"got {self.fusion.modalities}"
            )

    @property
    def d_embedding(self) -> int:
        """Width of the per-epoch encoder embedding."""
        if self.encoder == "spectral":
            return self.spectral.d_model
        return self.fusion.d_model if self.encoder == "fusion" else self.dual_branch.d_model

    # ------------------------------------------------------------ presets
    @classmethod
    def default(cls) -> SleepNetConfig:
        """CPU daemon preset (all defaults): 4 modalities, 4-s frames every 2 s, width 64."""
        return cls()

    @classmethod
    def tiny(cls) -> SleepNetConfig:
        """Smallest sensible model (tests and mechanics, not accuracy): widths 16, one layer
        each, 6-s frames every 3 s; same tensor contract as the default."""
        frame = FrameEncoderConfig(
            frame_s=6.0,
            hop_s=3.0,
            stem_channels=6,
            stem_kernel=31,
            stem_stride=15,
            stage_channels=(12,),
            d_model=16,
            n_layers=1,
            n_heads=2,
        )
        fusion = FusionConfig(frame=frame, d_model=16, n_layers=1, n_heads=2, token_mlp_hidden=16)
        dual = DualBranchConfig(
            raw_stem_channels=4, raw_channels=(8,), d_model=16, n_layers=1, n_heads=2
        )
        return cls(
            fusion=fusion,
            dual_branch=dual,
            temporal=TemporalConfig(d_model=16, n_layers=2, d_state=8),
        )

    @classmethod
    def paper(cls) -> SleepNetConfig:
        """GPU training preset at the papers' sizes: NeuroNet encoders 768 wide, 4 layers, 8 heads
        (4-s frames, 1-s hop, per-frame multi-scale CNN with squeeze-excitation); SynthSleepNet
        fusion 512 wide, 4 layers, 8 heads; a 512-wide Mamba."""
        frame = FrameEncoderConfig(
            frame_s=4.0,
            hop_s=1.0,
            per_frame=True,
            stem_channels=64,
            stem_kernel=7,
            stem_stride=2,
            stage_channels=(360, 720, 1440, 2880),
            se_ratio=4,
            d_model=768,
            n_layers=4,
            n_heads=8,
            mlp_ratio=4.0,
            dropout=0.1,
        )
        fusion = FusionConfig(
            frame=frame,
            d_model=512,
            n_layers=4,
            n_heads=8,
            mlp_ratio=4.0,
            dropout=0.1,
            token_mlp_hidden=512,
        )
        dual = DualBranchConfig(
            raw_stem_channels=64, raw_channels=(128, 256), d_model=128, n_layers=4, n_heads=8
        )
        return cls(
            encoder="fusion",
            fusion=fusion,
            dual_branch=dual,
            temporal=TemporalConfig(d_model=512, n_layers=2),
            heads=HeadsConfig(hidden=256, dropout=0.1),
            encode_batch=512,
        )

    # -------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field and sub-config (``eeg_views`` only when set, so
        the configs, and model ids, of models without it read as before it existed)."""
        d = dataclasses.asdict(self)
        if not self.eeg_views:
            del d["eeg_views"]
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SleepNetConfig:
        """Inverse of :meth:`to_dict`; unknown or ill-typed fields raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        try:
            d = dict(data)
            fusion = dict(d.pop("fusion", {}))
            frame = FrameEncoderConfig(**fusion.pop("frame", {}))
            return cls(
                fusion=FusionConfig(frame=frame, **fusion),
                dual_branch=DualBranchConfig(**d.pop("dual_branch", {})),
                spectral=SpectralConfig(**d.pop("spectral", {})),
                temporal=TemporalConfig(**d.pop("temporal", {"d_model": 64})),
                heads=HeadsConfig(**d.pop("heads", {})),
                **d,
            )
        except TypeError as err:
            raise ValueError(f"model config: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> SleepNetConfig:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"model config: not JSON ({err})") from None
        return cls.from_dict(data)


@dataclass
class SleepNetOutput:
    """Per-epoch outputs; ``...`` is ``(B,)`` from ``step`` and ``(B, T)`` from ``forward``."""

    #: ``(..., 5)``, classes W, N1, N2, N3, R.
    stage_logits: Tensor
    #: ``(..., 5)``, softmax of ``stage_logits``.
    stage_probs: Tensor
    #: ``(...)`` logits and probabilities of "an apnea overlaps this epoch".
    apnea_logit: Tensor
    apnea_prob: Tensor
    #: ``(...)`` logits and probabilities of "a hypopnea overlaps this epoch".
    hypopnea_logit: Tensor
    hypopnea_prob: Tensor
    #: The temporal feature the heads read ``(..., temporal.d_model)``.
    embedding: Tensor
    #: ``(...)`` int64: the epoch each output refers to (arrival index minus the look-ahead;
    #: negative = nothing to emit yet).
    epoch_index: Tensor


class SleepNet(nn.Module):
    """Streaming sleep scorer; see the module doc for shapes, state and look-ahead."""

    def __init__(self, cfg: SleepNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities: tuple[Modality, ...] = EXG_MODALITIES
        self.encoder: nn.Module
        if cfg.encoder == "fusion":
            self.encoder = MultimodalFusion(cfg.fusion)
        elif cfg.encoder == "spectral":
            self.encoder = SpectralEncoder(cfg.spectral)
            #: Embedding used for epochs without EEG (input-free, learned).
            self.missing_embedding = nn.Parameter(torch.zeros(cfg.spectral.d_model))
        else:
            self.encoder = DualBranchEncoder(cfg.dual_branch)
            #: Embedding used for epochs without EEG (input-free, learned).
            self.missing_embedding = nn.Parameter(torch.zeros(cfg.dual_branch.d_model))
        d_emb = cfg.d_embedding
        self.input_norm = nn.LayerNorm(d_emb)
        self.input_proj = nn.Linear(d_emb, cfg.temporal.d_model)
        self.temporal = MambaTemporal(cfg.temporal)
        self.heads = SleepHeads(cfg.heads, cfg.temporal.d_model)

    @property
    def n_times(self) -> int:
        """Samples per modality per epoch (S)."""
        if self.cfg.encoder == "fusion":
            return self.cfg.fusion.frame.n_times
        if self.cfg.encoder == "spectral":
            return self.cfg.spectral.n_times
        return self.cfg.dual_branch.n_times

    # ------------------------------------------------------------- encoder
    def encode(self, x: Tensor, mask: Tensor) -> Tensor:
        """Per-epoch embeddings: ``x (B, M, S)``, ``mask (B, M)`` -> ``(B, d_embedding)``."""
        m, s = len(self.modalities), self.n_times
        if x.dim() != 3 or x.shape[1:] != (m, s):
            raise ValueError(f"x must have shape (B, {m}, {s}), got {tuple(x.shape)}")
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        if isinstance(self.encoder, MultimodalFusion):
            return self.encoder(x, mask).embedding
        return self._encode_dual(x[:, 0], mask[:, 0].bool())

    def _encode_dual(self, eeg: Tensor, present: Tensor) -> Tensor:
        """EEG-only (dual-branch or spectral) embedding; epochs without EEG get
        ``missing_embedding``."""
        b = eeg.shape[0]
        out = self.missing_embedding.to(eeg.dtype).expand(b, -1)  # (B, D)
        idx = present.nonzero().squeeze(1)  # (n,)
        if idx.numel() == 0:
            return out
        sel = eeg.index_select(0, idx)  # (n, S)
        if isinstance(self.encoder, SpectralEncoder):
            emb = self.encoder(sel)  # (n, D)
        else:
            emb = self.encoder(sel).embedding  # (n, D)
        return out.index_copy(0, idx, emb.to(out.dtype))  # (B, D)

    def _running_encoder(self) -> SpectralEncoder | None:
        """The spectral encoder when it carries a running normalisation, else None."""
        enc = self.encoder
        return enc if isinstance(enc, SpectralEncoder) and enc.running else None

    def embed_log_power(
        self, log_power: Tensor, present: Tensor, running: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Spectral embeddings from band log powers, the step after the Welch estimate.

        Args:
            log_power: ``(B, T, n_bands)`` finite band log powers (rows of absent epochs are
                ignored).
            present: ``(B, T)`` bool, True = the epoch has EEG; absent epochs get
                ``missing_embedding`` and leave the running normalisation unchanged.
            running: the carried running mean ``(B, n_bands)`` and count ``(B,)`` of a
                running-normalised encoder (None: a fresh stream); ignored without one.

        Returns:
            ``emb (B, T, D)`` and the new running mean and count (None without running
            normalisation). ``TypeError`` for a model without a spectral encoder.
        """
        enc = self.encoder
        if not isinstance(enc, SpectralEncoder):
            raise TypeError(f"expected a spectral model, got encoder {self.cfg.encoder!r}")
        means, new = None, None
        if enc.running:
            mean, count = running if running is not None else enc.init_running(
                log_power.shape[0], log_power.device)
            means, mean, count = enc.running_mean(log_power, present, mean, count)  # (B, T, nb)
            new = (mean, count)
        emb = enc.embed(log_power, means)  # (B, T, D)
        emb = torch.where(present[..., None], emb, self.missing_embedding.to(emb.dtype))
        return emb, new

    def _encode_running(
        self, enc: SpectralEncoder, eeg: Tensor, present: Tensor,
        running: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Spectral embeddings with the running normalisation: ``eeg (B, T, S)``, ``present
        (B, T)``, the carried running mean and count (None: a fresh stream) -> ``(emb (B, T, D),
        (mean, count))``."""
        b, t, s = eeg.shape
        flat = torch.nan_to_num(eeg.reshape(b * t, s))  # (B*T, S)
        n = self.cfg.encode_batch
        lp = torch.cat(
            [enc.band_log_power(flat[i : i + n]) for i in range(0, b * t, n)]
        ).view(b, t, -1)  # (B, T, n_bands)
        return self.embed_log_power(lp, present, running)

    def _temporal_input(self, emb: Tensor) -> Tensor:
        """Per-epoch LayerNorm and projection: ``(..., d_embedding) -> (..., d_model)``."""
        return self.input_proj(self.input_norm(emb))

    def _outputs(
        self, y: Tensor, epoch_index: Tensor, aux: Tensor | None, aux_mask: Tensor | None
    ) -> SleepNetOutput:
        h = self.heads(y, aux, aux_mask)
        return SleepNetOutput(
            stage_logits=h.stage_logits,
            stage_probs=torch.softmax(h.stage_logits, dim=-1),
            apnea_logit=h.apnea_logit,
            apnea_prob=torch.sigmoid(h.apnea_logit),
            hypopnea_logit=h.hypopnea_logit,
            hypopnea_prob=torch.sigmoid(h.hypopnea_logit),
            embedding=y,
            epoch_index=epoch_index,
        )

    # --------------------------------------------------------------- state
    def init_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """Fresh state for ``batch`` beds (temporal state + ``n_epochs``, + the running
        band-power mean and count with a running-normalised spectral encoder)."""
        state = self.temporal.init_state(batch, device=device, dtype=dtype)
        dev = device if device is not None else self.input_proj.weight.device
        state[N_EPOCHS_KEY] = torch.zeros(batch, dtype=torch.int64, device=dev)
        enc = self._running_encoder()
        if enc is not None:
            state[RUNNING_MEAN_KEY], state[RUNNING_COUNT_KEY] = enc.init_running(batch, dev)
        return state

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the recurrent state for ``batch`` beds at the parameter dtype."""
        extra = 0
        if self._running_encoder() is not None:
            extra = 4 * len(self.cfg.spectral.bands) + 8
        return self.temporal.state_nbytes(batch) + (8 + extra) * batch

    def _state_entry(self, state: dict[str, Tensor], key: str) -> Tensor:
        try:
            return state[key]
        except KeyError:
            raise ValueError(f"SleepNet: state has no entry {key!r}") from None

    def _n_epochs(self, state: dict[str, Tensor]) -> Tensor:
        return self._state_entry(state, N_EPOCHS_KEY)

    # ------------------------------------------------------------- running
    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        state: dict[str, Tensor] | None = None,
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> tuple[SleepNetOutput, dict[str, Tensor]]:
        """Score a sequence of epochs.

        Args:
            x: ``(B, T, M, S)`` float.
            mask: ``(B, T, M)`` bool, True = modality present.
            state: carried state (``init_state`` / a previous call), or None for a fresh stream.
                Not modified.
            aux, aux_mask: optional ``(B, T, n_aux)`` auxiliary features (see ``SleepHeads``).

        Returns:
            ``SleepNetOutput`` with ``(B, T, ...)`` fields (entry ``i`` refers to epoch
            ``epoch_index[:, i]``), and the new state.
        """
        m, s = len(self.modalities), self.n_times
        if x.dim() != 4 or x.shape[2:] != (m, s):
            raise ValueError(f"x must have shape (B, T, {m}, {s}), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        if mask.shape != (b, t, m):
            raise ValueError(f"mask must have shape {(b, t, m)}, got {tuple(mask.shape)}")
        enc = self._running_encoder()
        run_new: tuple[Tensor, Tensor] | None = None
        if enc is not None:
            emb, run_new = self._encode_running(enc, x[:, :, 0], mask[:, :, 0].bool(),
                                                self._carried_running(state))
        else:
            flat_x = x.reshape(b * t, m, s)  # (B*T, M, S)
            flat_mask = mask.reshape(b * t, m)  # (B*T, M)
            n = self.cfg.encode_batch
            emb = torch.cat(
                [self.encode(flat_x[i : i + n], flat_mask[i : i + n]) for i in range(0, b * t, n)]
            ).view(b, t, -1)  # (B, T, D_emb)
        return self._forward_embedded(emb, state, run_new, aux, aux_mask)

    def _forward_embedded(
        self, emb: Tensor, state: dict[str, Tensor] | None,
        run_new: tuple[Tensor, Tensor] | None, aux: Tensor | None, aux_mask: Tensor | None,
    ) -> tuple[SleepNetOutput, dict[str, Tensor]]:
        """The temporal module and heads over embeddings ``emb (B, T, D_emb)``."""
        b, t = emb.shape[:2]
        temporal_state = None
        n0 = torch.zeros(b, dtype=torch.int64, device=emb.device)
        if state is not None:
            n0 = self._n_epochs(state)
            temporal_state = {k: v for k, v in state.items() if k not in _EXTRA_KEYS}
        y, new_state = self.temporal(self._temporal_input(emb), temporal_state)  # (B, T, d)
        steps = torch.arange(t, dtype=torch.int64, device=emb.device)
        epoch_index = n0[:, None] + steps[None, :] - self.cfg.lookahead_epochs  # (B, T)
        new_state[N_EPOCHS_KEY] = n0 + t
        if run_new is not None:
            new_state[RUNNING_MEAN_KEY], new_state[RUNNING_COUNT_KEY] = run_new
        return self._outputs(y, epoch_index, aux, aux_mask), new_state

    def _carried_running(self, state: dict[str, Tensor] | None) -> tuple[Tensor, Tensor] | None:
        if state is None or self._running_encoder() is None:
            return None
        return (self._state_entry(state, RUNNING_MEAN_KEY),
                self._state_entry(state, RUNNING_COUNT_KEY))

    def forward_log_power(
        self,
        log_power: Tensor,
        state: dict[str, Tensor] | None = None,
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> tuple[SleepNetOutput, dict[str, Tensor]]:
        """:meth:`forward` for a spectral model given each epoch's band log powers (the Welch
        step already done, e.g. Sleep-EDF per-epoch features): ``log_power (B, T, n_bands)``
        in ln µV²/Hz of the preprocessed EEG; a row with a NaN is an absent epoch (no EEG).
        ``TypeError`` for a model without a spectral encoder."""
        if log_power.dim() != 3:
            raise ValueError(f"log_power must have shape (B, T, n_bands), got "
                             f"{tuple(log_power.shape)}")
        emb, run_new = self._embed_carried(log_power, state)  # (B, T, D_emb)
        return self._forward_embedded(emb, state, run_new, aux, aux_mask)

    def _embed_carried(
        self, log_power: Tensor, state: dict[str, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """:meth:`embed_log_power` of ``log_power (B, T, n_bands)`` (NaN rows: absent epochs)
        from the running mean carried in ``state``."""
        present = torch.isfinite(log_power).all(dim=-1)  # (B, T)
        return self.embed_log_power(torch.nan_to_num(log_power), present,
                                    self._carried_running(state))

    def step(
        self,
        x: Tensor,
        mask: Tensor,
        state: dict[str, Tensor],
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> SleepNetOutput:
        """Score one new epoch per bed, batched across beds; ``state`` is updated in place.

        ``x (B, M, S)``, ``mask (B, M)``, optional ``aux``/``aux_mask (B, n_aux)``. Returns
        ``SleepNetOutput`` with ``(B, ...)`` fields referring to epoch ``epoch_index``.
        """
        enc = self._running_encoder()
        if enc is not None:
            emb, carried = self._encode_running(
                enc, x[:, None, 0], mask[:, None, 0].bool(),
                self._carried_running(state))  # (B, 1, D_emb)
            self._update_running(state, carried)
            emb = emb[:, 0]  # (B, D_emb)
        else:
            emb = self.encode(x, mask)  # (B, D_emb)
        return self._step_embedded(emb, state, aux, aux_mask)

    def _update_running(
        self, state: dict[str, Tensor], carried: tuple[Tensor, Tensor] | None
    ) -> None:
        if carried is not None:
            self._state_entry(state, RUNNING_MEAN_KEY).copy_(carried[0])
            self._state_entry(state, RUNNING_COUNT_KEY).copy_(carried[1])

    def _step_embedded(
        self, emb: Tensor, state: dict[str, Tensor], aux: Tensor | None, aux_mask: Tensor | None
    ) -> SleepNetOutput:
        """One temporal step and the heads for embeddings ``emb (B, D_emb)``."""
        n_epochs = self._n_epochs(state)
        y = self.temporal.step(self._temporal_input(emb), state)  # (B, d)
        out = self._outputs(y, n_epochs - self.cfg.lookahead_epochs, aux, aux_mask)
        n_epochs += 1
        return out

    def step_log_power(
        self,
        log_power: Tensor,
        state: dict[str, Tensor],
        aux: Tensor | None = None,
        aux_mask: Tensor | None = None,
    ) -> SleepNetOutput:
        """:meth:`step` given one epoch's band log powers per bed, ``(B, n_bands)`` (NaN row:
        absent epoch); see :meth:`forward_log_power`."""
        if log_power.dim() != 2:
            raise ValueError(f"log_power must have shape (B, n_bands), got "
                             f"{tuple(log_power.shape)}")
        emb, carried = self._embed_carried(log_power[:, None], state)  # (B, 1, D_emb)
        self._update_running(state, carried)
        return self._step_embedded(emb[:, 0], state, aux, aux_mask)

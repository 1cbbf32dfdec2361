"""Recording + preprocess spec -> model-input epochs: one code path for ingest, score and daemon.

The processing unit everywhere is the raw samples of one 30-s epoch, fed in order through one
:class:`~rtsleep.data.preprocessing.ChannelPipeline` per channel. :class:`EpochStream` does that for
one bed (the daemon feeds it live epochs; its state persists), and :func:`epochs_from_recording`
drives an :class:`EpochStream` over a whole recording, epoch by epoch, so offline arrays equal what
the daemon computes live bit for bit.

Shapes: ``M = len(EXG_MODALITIES) = 4`` in model order (EEG, EOG, EMG, ECG), ``S = 3000`` (ExG
at 100 Hz); the auxiliary modalities RESP and SPO2 come at 10 Hz (``300`` samples per epoch).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rtsleep.data.channels import MIN_EXG_SFREQ, ChannelMap, rank_channels
from rtsleep.data.errors import DataError
from rtsleep.data.preprocessing import ChannelPipeline, PreprocessSpec, check_amplitude
from rtsleep.data.recording import EXG_MODALITIES, Channel, Modality, Recording

log = logging.getLogger(__name__)

AUX_MODALITIES: tuple[Modality, ...] = (Modality.RESP, Modality.SPO2)
"""Modalities used by the apnea pathway, carried beside the ExG tensor (all their channels)."""


def _remapped(rec: Recording, channel_map: ChannelMap | None) -> list[Channel]:
    """The recording's channels, modalities re-resolved through ``channel_map`` (data shared)."""
    if channel_map is None:
        return list(rec.channels)
    return [dataclasses.replace(c, modality=channel_map.resolve(c.label)) for c in rec.channels]


def select_channels(
    rec: Recording, spec: PreprocessSpec, channel_map: ChannelMap | None = None
) -> dict[Modality, Channel]:
    """The primary channel of each modality in ``spec`` that ``rec`` has.

    Preference follows :data:`rtsleep.data.channels.PRIMARY_PREFERENCE` (EEG C4-M1/C4-A1 > C3-A2 >
    C3-A1 > Cz > Pz-Oz > Fpz-Cz > others; left EOG first; ...), then file order. Flat or non-finite
    channels and ExG channels slower than 50 Hz are never chosen. ``channel_map`` re-resolves every
    label's modality (user overrides on top of the alias table); without it the modalities the
    reader assigned are used. Modalities the recording lacks are absent from the result.
    """
    channels = _remapped(rec, channel_map)
    chosen: dict[Modality, Channel] = {}
    for ms in spec.modalities:
        ranked = rank_channels(channels, ms.modality)
        if ranked:
            chosen[ms.modality] = ranked[0]
    return chosen


def select_aux_channels(
    rec: Recording, spec: PreprocessSpec, channel_map: ChannelMap | None = None
) -> dict[Modality, list[Channel]]:
    """Every usable channel of each auxiliary modality (RESP, SPO2) in ``spec``, preferred first.

    RESP typically gives airflow then the effort belts (DREAMS excerpt3: NAF1, VAB, VTH).
    """
    channels = _remapped(rec, channel_map)
    out: dict[Modality, list[Channel]] = {}
    for mod in AUX_MODALITIES:
        if mod in spec:
            ranked = rank_channels(channels, mod)
            if ranked:
                out[mod] = ranked
    return out


@dataclass(frozen=True)
class ChannelSlot:
    """One input channel of an :class:`EpochStream`: its label, modality and rate in Hz."""

    label: str
    modality: Modality
    sfreq: float


@dataclass
class EpochOutput:
    """Model input of one epoch.

    Attributes:
        index: epoch index (0 = the first epoch this stream processed since its state began).
        x: float32 ``(M, S)``, ExG in model order; zeros where ``mask`` is False.
        mask: bool ``(M,)``, True where the modality is present.
        aux: ``{RESP: float32 (k, 300), SPO2: float32 (k, 300)}`` for the auxiliary channels.
    """

    index: int
    x: np.ndarray
    mask: np.ndarray
    aux: dict[Modality, np.ndarray]


class EpochStream:
    """Per-bed preprocessing: one :class:`ChannelPipeline` per slot, fed one epoch at a time.

    Args:
        spec: the preprocess spec (from the model's checkpoint).
        slots: at most one slot per ExG modality (its primary channel) and any number per auxiliary
            modality, in the order they should appear in ``aux``. Labels must be unique.
    """

    def __init__(self, spec: PreprocessSpec, slots: Sequence[ChannelSlot]) -> None:
        self.spec = spec
        self.exg: dict[Modality, ChannelSlot] = {}
        self.aux: dict[Modality, list[ChannelSlot]] = {}
        self.pipelines: dict[str, ChannelPipeline] = {}
        self.samples_per_epoch: dict[str, int] = {}
        for slot in slots:
            if slot.label in self.pipelines:
                raise ValueError(f"epoch stream: channel label {slot.label!r} given twice")
            if slot.modality not in spec:
                raise ValueError(
                    f"epoch stream: channel {slot.label!r} is {slot.modality}, "
                    "which the preprocess spec does not have"
                )
            if slot.modality in EXG_MODALITIES:
                if slot.modality in self.exg:
                    raise ValueError(
                        f"epoch stream: two {slot.modality} channels "
                        f"({self.exg[slot.modality].label!r}, {slot.label!r}); give one"
                    )
                self.exg[slot.modality] = slot
            elif slot.modality in AUX_MODALITIES:
                self.aux.setdefault(slot.modality, []).append(slot)
            else:
                raise ValueError(
                    f"epoch stream: channel {slot.label!r} has modality {slot.modality}, "
                    "which no model input uses"
                )
            ms = spec.for_modality(slot.modality)
            self.pipelines[slot.label] = ChannelPipeline(ms, slot.sfreq)
            n = slot.sfreq * spec.epoch_s
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ValueError(
                    f"epoch stream: channel {slot.label!r} at {slot.sfreq} Hz has no whole "
                    f"number of samples per {spec.epoch_s}-s epoch"
                )
            self.samples_per_epoch[slot.label] = int(round(n))
        self.n_epochs = 0
        self.mask = np.array([m in self.exg for m in EXG_MODALITIES], dtype=bool)  # (M,)

    @property
    def slots(self) -> list[ChannelSlot]:
        """All slots: ExG in model order, then the auxiliary ones."""
        out = [self.exg[m] for m in EXG_MODALITIES if m in self.exg]
        for mod in AUX_MODALITIES:
            out.extend(self.aux.get(mod, []))
        return out

    def process_epoch(self, raw: Mapping[str, np.ndarray]) -> EpochOutput:
        """Preprocess the next epoch.

        Args:
            raw: label -> ``(samples_per_epoch[label],)`` raw samples (µV for ExG) for every slot.

        Returns:
            the epoch's :class:`EpochOutput`. Raises ``ValueError`` (state untouched) when a slot
            is missing, a length is wrong or samples are non-finite.
        """
        for label, n in self.samples_per_epoch.items():
            if label not in raw:
                raise ValueError(f"epoch {self.n_epochs}: no samples for channel {label!r}")
            arr = np.asarray(raw[label])
            if arr.shape != (n,):
                raise ValueError(
                    f"epoch {self.n_epochs}: channel {label!r} has shape {arr.shape}, "
                    f"expected ({n},)"
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"epoch {self.n_epochs}: channel {label!r} has non-finite samples")
        x = np.zeros((len(EXG_MODALITIES), self.spec.n_times(Modality.EEG)), dtype=np.float32)
        for i, mod in enumerate(EXG_MODALITIES):
            if mod in self.exg:
                label = self.exg[mod].label
                x[i] = self.pipelines[label].process(np.asarray(raw[label], dtype=np.float64))
        aux: dict[Modality, np.ndarray] = {}
        for mod, slots in self.aux.items():
            # k channels -> (k, S_aux)
            rows = [
                self.pipelines[s.label].process(np.asarray(raw[s.label], np.float64))
                for s in slots
            ]
            aux[mod] = np.stack(rows)
        out = EpochOutput(index=self.n_epochs, x=x, mask=self.mask.copy(), aux=aux)
        self.n_epochs += 1
        return out

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        """Flat state: ``"<label>.<key>"`` per pipeline plus ``"n_epochs"``."""
        state: dict[str, np.ndarray | float | int] = {"n_epochs": self.n_epochs}
        for label, pipe in self.pipelines.items():
            for key, value in pipe.state_dict().items():
                state[f"{label}.{key}"] = value
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray | float | int]) -> None:
        """Restore a :meth:`state_dict` of a stream with the same slots (``ValueError`` else)."""
        if "n_epochs" not in state:
            raise ValueError("epoch stream state: no 'n_epochs'")
        per_label: dict[str, dict[str, np.ndarray | float | int]] = {}
        for key, value in state.items():
            if key == "n_epochs":
                continue
            label, _, sub = key.rpartition(".")
            if label not in self.pipelines:
                raise ValueError(f"epoch stream state: unknown channel {label!r}")
            per_label.setdefault(label, {})[sub] = value
        missing = sorted(set(self.pipelines) - set(per_label))
        if missing:
            raise ValueError(f"epoch stream state: no state for channels {missing}")
        for label, sub_state in per_label.items():
            self.pipelines[label].load_state_dict(sub_state)
        self.n_epochs = int(state["n_epochs"])  # type: ignore[arg-type]


@dataclass
class EpochArrays:
    """Model input for a whole recording (complete epochs only).

    Attributes:
        x: float32 ``(n_epochs, M, S)``, ExG in model order; zeros where ``mask`` is False.
        mask: bool ``(M,)``, True where the recording has the modality.
        aux: ``{RESP: float32 (n_epochs, k, 300), SPO2: float32 (n_epochs, k, 300)}``.
        n_epochs: number of complete 30-s epochs covered by every selected channel.
        channels: modality -> labels feeding it (one for ExG, k for aux, in ``aux`` row order).
        sfreq_in: label -> source rate in Hz.
        warnings: one-line amplitude/unit warnings from :func:`check_amplitude`.
    """

    x: np.ndarray
    mask: np.ndarray
    aux: dict[Modality, np.ndarray]
    n_epochs: int
    channels: dict[Modality, list[str]] = field(default_factory=dict)
    sfreq_in: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def epochs_from_recording(
    rec: Recording,
    spec: PreprocessSpec | None = None,
    channel_map: ChannelMap | None = None,
    *,
    check: bool = True,
) -> EpochArrays:
    """Preprocess a recording into model-input epochs, one 30-s epoch of raw samples at a time.

    Args:
        rec: the recording (ExG in µV).
        spec: the preprocess spec; ``PreprocessSpec.default()`` when ``None``.
        channel_map: optional label -> modality overrides (see :func:`select_channels`).
        check: run :func:`check_amplitude` on every selected channel (errors raise ``DataError``,
            warnings are logged and returned in ``EpochArrays.warnings``).

    Returns:
        :class:`EpochArrays` with ``x (n_epochs, 4, 3000)``. Raises ``DataError`` naming the file
        when no channel of the spec's modalities is usable or a channel does not start at 0 s.
    """
    spec = spec if spec is not None else PreprocessSpec.default()
    exg = {m: c for m, c in select_channels(rec, spec, channel_map).items() if m in EXG_MODALITIES}
    aux = select_aux_channels(rec, spec, channel_map)
    used: list[Channel] = [exg[m] for m in EXG_MODALITIES if m in exg]
    for mod in AUX_MODALITIES:
        used.extend(aux.get(mod, []))
    if not used:
        have = ", ".join(f"{c.label} ({c.modality}, {c.sfreq:g} Hz)"
                         for c in rec.channels) or "no channels"
        wanted = ", ".join(str(m.modality) for m in spec.modalities)
        raise DataError(rec.source, f"no usable channel for {wanted} (has: {have}; ExG needs "
                                    f">= {MIN_EXG_SFREQ:g} Hz, and a flat or non-finite channel "
                                    "is never used)")
    warnings: list[str] = []
    for ch in used:
        if ch.start_s != 0.0:
            raise DataError(
                rec.source,
                f"channel {ch.label!r} starts at {ch.start_s} s; epochs are aligned to the "
                "recording start and need every channel to start there",
            )
        if check:
            for w in check_amplitude(ch, rec.source):
                log.warning("%s: %s", rec.source, w)
                warnings.append(w)
    slots = [ChannelSlot(c.label, c.modality, c.sfreq) for c in used]
    try:
        stream = EpochStream(spec, slots)
    except ValueError as err:
        raise DataError(rec.source, str(err)) from err
    by_label = {c.label: c for c in used}
    n_epochs = min(
        by_label[label].n_samples // n for label, n in stream.samples_per_epoch.items()
    )
    s_exg = spec.n_times(Modality.EEG)
    x = np.zeros((n_epochs, len(EXG_MODALITIES), s_exg), dtype=np.float32)  # (n, M, S)
    aux_out = {
        mod: np.zeros((n_epochs, len(chs), spec.n_times(mod)), dtype=np.float32)  # (n, k, S_aux)
        for mod, chs in aux.items()
    }
    for k in range(n_epochs):
        raw = {
            label: by_label[label].data[k * n : (k + 1) * n]
            for label, n in stream.samples_per_epoch.items()
        }
        try:
            out = stream.process_epoch(raw)
        except ValueError as err:
            raise DataError(rec.source, str(err)) from err
        x[k] = out.x
        for mod, arr in out.aux.items():
            aux_out[mod][k] = arr
    channels: dict[Modality, list[str]] = {m: [exg[m].label] for m in EXG_MODALITIES if m in exg}
    for mod, chs in aux.items():
        channels[mod] = [c.label for c in chs]
    return EpochArrays(
        x=x,
        mask=stream.mask.copy(),
        aux=aux_out,
        n_epochs=n_epochs,
        channels=channels,
        sfreq_in={c.label: c.sfreq for c in used},
        warnings=warnings,
    )


__all__ = [
    "AUX_MODALITIES",
    "ChannelSlot",
    "EpochArrays",
    "EpochOutput",
    "EpochStream",
    "epochs_from_recording",
    "select_aux_channels",
    "select_channels",
]

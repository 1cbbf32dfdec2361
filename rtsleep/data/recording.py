"""Canonical recording model shared by every reader, the store, training and the daemon.

Times are seconds from the recording start unless a name says otherwise. Sleep is scored in
30-s epochs aligned to the recording start: epoch ``k`` covers ``[30 k, 30 k + 30)`` s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

EPOCH_S = 30.0
"""Length of one scoring epoch in seconds."""


class Modality(enum.StrEnum):
    """What a channel measures. ExG modalities are stored in µV."""

    EEG = "EEG"
    EOG = "EOG"
    EMG = "EMG"
    ECG = "ECG"
    RESP = "RESP"  # airflow (thermistor / nasal pressure) and effort belts
    SPO2 = "SPO2"
    OTHER = "OTHER"


EXG_MODALITIES: tuple[Modality, ...] = (Modality.EEG, Modality.EOG, Modality.EMG, Modality.ECG)
"""Modalities read by the epoch encoders, in model order."""


class Stage(enum.IntEnum):
    """AASM sleep stage of one 30-s epoch. R&K S3 and S4 map to N3; movement time is UNSCORED."""

    UNSCORED = -1
    W = 0
    N1 = 1
    N2 = 2
    N3 = 3
    REM = 4


STAGE_NAMES: tuple[str, ...] = ("W", "N1", "N2", "N3", "R")
"""Class names in logit order (index = ``Stage`` value)."""


class EventType(enum.StrEnum):
    """Scored events: respiratory events and arousals."""

    APNEA_OBSTRUCTIVE = "apnea_obstructive"
    APNEA_CENTRAL = "apnea_central"
    APNEA_MIXED = "apnea_mixed"
    #: Apnea whose type the source does not give.
    APNEA = "apnea"
    HYPOPNEA = "hypopnea"
    #: A period the source marks as disordered breathing without separating apnea and hypopnea
    #: (Apnea-ECG per-minute labels).
    APNEA_HYPOPNEA = "apnea_hypopnea"
    DESATURATION = "desaturation"
    AROUSAL = "arousal"

    @property
    def is_apnea(self) -> bool:
        return self in (
            EventType.APNEA_OBSTRUCTIVE,
            EventType.APNEA_CENTRAL,
            EventType.APNEA_MIXED,
            EventType.APNEA,
        )


@dataclass(frozen=True)
class Event:
    """One scored event; ``onset_s`` from the recording start, ``label`` the source's code."""

    onset_s: float
    duration_s: float
    type: EventType
    label: str = ""

    @property
    def end_s(self) -> float:
        return self.onset_s + self.duration_s


@dataclass
class Channel:
    """One regularly sampled signal.

    ``data`` has shape ``(n_samples,)``. ExG channels are in µV after reading; ``unit`` is the unit
    of ``data`` as stored here (not necessarily the file's). ``start_s`` is the offset of the first
    sample from the recording start.
    """

    label: str
    modality: Modality
    sfreq: float
    unit: str
    data: np.ndarray
    start_s: float = 0.0
    #: Quantisation step of the source file in ``unit`` (EDF: (pmax - pmin) / (dmax - dmin)).
    resolution: float | None = None

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sfreq


@dataclass
class BeatSeries:
    """Irregular beat-to-beat heart rate (Apnea-ECG layout): times in s and rate in beats/s."""

    times_s: np.ndarray
    hr_bps: np.ndarray


@dataclass
class Recording:
    """One night (or excerpt) of PSG, with its expert annotations.

    ``stages`` has one entry per 30-s epoch (``Stage`` values as int8), or is ``None`` when the
    source has no hypnogram. Label-only sources (ucddb, slpdb annotations) have no channels.
    """

    id: str
    dataset: str
    subject: str
    source: Path
    channels: list[Channel] = field(default_factory=list)
    start_time: datetime | None = None
    stages: np.ndarray | None = None
    events: list[Event] = field(default_factory=list)
    beats: BeatSeries | None = None
    #: Per-minute labels where the source scores minutes (Apnea-ECG): bool, ``(n_minutes,)``.
    minute_labels: np.ndarray | None = None
    #: sha256 of the source file(s), hex.
    source_sha256: str = ""
    #: Length of the scored/recorded period in s, when known without channels.
    duration_hint_s: float | None = None

    @property
    def duration_s(self) -> float:
        """Recording length in s: the longest channel, else the hint, else the hypnogram."""
        if self.channels:
            return max(c.start_s + c.duration_s for c in self.channels)
        if self.duration_hint_s is not None:
            return self.duration_hint_s
        if self.stages is not None:
            return len(self.stages) * EPOCH_S
        return 0.0

    @property
    def n_epochs(self) -> int:
        """Number of complete 30-s epochs."""
        if self.stages is not None:
            return int(len(self.stages))
        return int(self.duration_s // EPOCH_S)

    def channel(self, label: str) -> Channel:
        """The channel called ``label``; ``DataError``-style ``KeyError`` message otherwise."""
        for c in self.channels:
            if c.label == label:
                return c
        have = [c.label for c in self.channels]
        raise KeyError(f"{self.source}: no channel {label!r} (have {have})")

    def by_modality(self, modality: Modality) -> list[Channel]:
        """Channels of one modality, in file order."""
        return [c for c in self.channels if c.modality == modality]

"""Channel alias table: real channel labels -> ``Modality``, ExG unit conversion, primary channels.

Archives name the same derivation many ways (``EEG Fpz-Cz``, ``C3-A2``, ``EEG(sec)``, ``EOG(L)``,
``EMG submental``, ``NAF1``, ``SAO2`` ...). :class:`ChannelMap` resolves a label to a modality
through, in order: the user's overrides, the exact alias table, prefix rules (``EEG ...``,
``EOG ...``, ``EMG ...``, ``ECG ...``, ``RESP ...``) and the 10-20 electrode pattern. Matching is
case-insensitive and ignores spaces. Unknown labels resolve to ``Modality.OTHER``: such channels
are kept in the recording but no model reads them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtsleep.data.errors import DataError
from rtsleep.data.recording import EXG_MODALITIES, Channel, Modality, Recording

log = logging.getLogger(__name__)

UV = "uV"
"""Unit string of ExG channels after reading (micro-volts, ASCII spelling)."""


def normalize_label(label: str) -> str:
    """Key used for matching: upper case, no whitespace (``"EEG Fpz-Cz"`` -> ``"EEGFPZ-CZ"``)."""
    return re.sub(r"\s+", "", label).upper()


_ALIASES_BY_MODALITY: dict[Modality, tuple[str, ...]] = {
    Modality.EEG: (
        "EEG", "EEG(sec)", "EEG2", "EEG 2", "EEG(SEC)", "EEG sec",
        "C3-A2", "C4-A1", "C3-A1", "C4-A2", "CZ-A1", "CZ-A2", "O1-A2", "O2-A1", "O1-A1", "O2-A2",
        "FP1-A1", "FP2-A2", "F3-A2", "F4-A1", "C3-M2", "C4-M1", "F3-M2", "F4-M1", "O1-M2", "O2-M1",
        "FPZ-CZ", "PZ-OZ", "CZ-OZ", "C3", "C4", "CZ", "O1", "O2", "F3", "F4", "FZ", "PZ", "OZ",
    ),
    Modality.EOG: (
        "LOC", "ROC", "E1", "E2", "E1-M2", "E2-M1", "E1-M1", "E2-M2", "LOC-A2", "ROC-A1",
        "LOC-M2", "ROC-M1", "Lefteye", "RightEye", "EOG(L)", "EOG(R)", "EOG L", "EOG R",
        "EOG1-A1", "EOG2-A1",
        "EOG horizontal", "EOG EOG1", "EOG EOG2", "LEOG", "REOG", "L-EOG", "R-EOG",
    ),
    Modality.EMG: (
        "EMG", "EMG1", "EMG2", "EMG3", "EMG submental", "EMG EMG1", "EMG EMG2", "CHIN", "CHIN1",
        "CHIN2", "CHIN EMG", "CHIN1-CHIN2", "CHIN1-CHIN3", "CHIN-EMG", "SUBMENTAL",
    ),
    Modality.ECG: ("ECG", "EKG", "ECG1", "ECG2", "ECG I", "ECG II", "ECGL", "ECGR", "ECG1-ECG2"),
    Modality.RESP: (
        "NAF1", "NAF2", "AIRFLOW", "AIR FLOW", "NEW AIR", "NEWAIR", "FLOW", "NASAL",
        "NASAL PRESSURE", "NASALPRESSURE", "PTAF", "CFLOW", "CANNULA", "THERM", "THERMISTOR",
        "ORONASAL", "Resp oro-nasal", "VAB", "VTH", "THOR RES", "ABDO RES", "THORAX", "ABDOMEN",
        "THOR", "ABDO", "ribcage", "CHEST", "ABD", "EFFORT THO", "EFFORT ABD", "SUM",
        "RIP SUM",
    ),
    Modality.SPO2: ("SAO2", "SPO2", "SO2", "SA02", "SP02", "OSAT", "SAT", "OXSAT", "SAO2 OSAT"),
    Modality.OTHER: (
        "hypnogram", "hypnogram_aut", "event_pneumo", "event_pneumo_aut", "event_neuro",
        "Event marker", "Temp rectal", "POS", "POSITION", "BodyPos", "Sound", "PHONO", "SNORE",
        "PR", "PULSE", "HR",
        "BP", "SV", "LIGHT", "OX STAT", "EDF Annotations",
    ),
}

DEFAULT_ALIASES: dict[str, Modality] = {
    normalize_label(alias): modality
    for modality, aliases in _ALIASES_BY_MODALITY.items()
    for alias in aliases
}
"""Normalised label -> modality for the names seen in Sleep-EDF, SHHS, DREAMS, ucddb, slpdb."""

_PREFIXES: tuple[tuple[str, Modality], ...] = (
    ("EOG", Modality.EOG),
    ("EMG", Modality.EMG),
    ("ECG", Modality.ECG),
    ("EKG", Modality.ECG),
    ("EEG", Modality.EEG),
    ("RESP", Modality.RESP),
    ("SPO2", Modality.SPO2),
    ("SAO2", Modality.SPO2),
)

_ELECTRODE = r"(?:FP|AF|FC|FT|CP|TP|PO|F|C|T|P|O)(?:Z|\d{1,2})"
_LINKED_EARS = r"\(?[AM]1\+?[AM]2\)?(?:/2)?"  # A1A2, M1+M2, (A1+A2)/2: linked ears or mastoids
_REFERENCE = rf"(?:{_LINKED_EARS}|[AM][12]|{_ELECTRODE}|AVG|REF|LE|CAR)"
_EEG_PATTERN = re.compile(  # C3-A2, C3A2 (ucddb), C3:A2, F4/M1, C3-(A1+A2)/2
    rf"^{_ELECTRODE}(?:[-:/]?{_REFERENCE})?$")
_SEPARATOR = re.compile(rf"^((?:EEG)?{_ELECTRODE})[:/](?=[A-Z(])")
_EOG_PATTERN = re.compile(r"^(?:E[12]|LOC|ROC|EOG\w*)(?:-\w+)?$")

REFERENTIAL = "referential"
"""An EEG derivation against an ear or mastoid reference (C3-A2, Cz-A1, C4-M1)."""
BIPOLAR = "bipolar"
"""An EEG derivation between two scalp electrodes (Fpz-Cz, Pz-Oz: Sleep-EDF)."""
DERIVATION_KINDS: tuple[str, ...] = (REFERENTIAL, BIPOLAR)

_EAR_REFERENCE = re.compile(rf"^(?:[AM][12]|{_LINKED_EARS})$")
_SCALP_ELECTRODE = re.compile(rf"^{_ELECTRODE}$")
_GLUED_REFERENTIAL = re.compile(rf"^{_ELECTRODE}[AM][12]$")


def derivation_key(label: str) -> str:
    """The derivation a channel label names, as :func:`normalize_label` writes it without an
    ``EEG`` prefix and with ``-`` between the electrodes (``"EEG Fpz-Cz"`` and ``"Fpz-Cz"`` ->
    ``"FPZ-CZ"``, ``"C3:A2"`` and ucddb's ``"C3A2"`` -> ``"C3-A2"``)."""
    key = _SEPARATOR.sub(r"\1-", normalize_label(label))
    key = key[3:] if key.startswith("EEG") and "-" in key else key
    return f"{key[:-2]}-{key[-2:]}" if _GLUED_REFERENTIAL.match(key) else key


def eeg_views(primary: str, labels: Sequence[str],
              view_sets: Sequence[Sequence[str]]) -> list[str]:
    """The EEG channels scored beside the primary EEG channel ``primary``: those of ``labels``
    (other channels, in the order given) whose derivation shares a set of ``view_sets`` with the
    primary's (``SleepNetConfig.eeg_views``), one per derivation, the primary's own excluded.
    Empty when the primary's derivation is in no set."""
    own = derivation_key(primary)
    group = next((set(map(derivation_key, v)) for v in view_sets
                  if own in map(derivation_key, v)), set())
    seen = {own}
    out = []
    for label in labels:
        key = derivation_key(label)
        if key in group and key not in seen:
            seen.add(key)
            out.append(label)
    return out


def eeg_derivation(label: str) -> str | None:
    """The kind of EEG derivation a channel label names: :data:`REFERENTIAL` (``C3-A2``,
    ``EEG Cz-A1``, ``C4-M1``), :data:`BIPOLAR` (``EEG Fpz-Cz``, ``Pz-Oz``), or ``None`` when the
    label does not say (``EEG``, ``EEG(sec)``, ``C3``, an average reference)."""
    active, sep, reference = derivation_key(label).partition("-")
    if not sep or not _SCALP_ELECTRODE.match(active):
        return None
    if _EAR_REFERENCE.match(reference):
        return REFERENTIAL
    if _SCALP_ELECTRODE.match(reference):
        return BIPOLAR
    return None


LABEL_CHANNELS: frozenset[str] = frozenset(
    normalize_label(x)
    for x in ("hypnogram", "hypnogram_aut", "event_pneumo", "event_pneumo_aut", "event_neuro")
)
"""Channels that carry integer codes, not signals (DREAMS): read without scaling noise."""


def default_modality(label: str) -> Modality:
    """Modality of ``label`` from the built-in table and rules (``OTHER`` when unknown)."""
    key = normalize_label(label)
    if key in DEFAULT_ALIASES:
        return DEFAULT_ALIASES[key]
    for prefix, modality in _PREFIXES:
        if key.startswith(prefix):
            return modality
    if _EOG_PATTERN.match(key):
        return Modality.EOG
    if _EEG_PATTERN.match(key):
        return Modality.EEG
    return Modality.OTHER


@dataclass
class ChannelMap:
    """Label -> modality resolution with user overrides on top of the default alias table.

    ``overrides`` maps channel labels (matched case- and space-insensitively) to a modality; use
    ``Modality.OTHER`` to make the models ignore a channel.
    """

    overrides: dict[str, Modality] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, modality in self.overrides.items():
            if not isinstance(modality, Modality):
                raise TypeError(f"channel map: {label!r} maps to {modality!r}, not a Modality")
        self._normalized = {normalize_label(k): v for k, v in self.overrides.items()}

    def resolve(self, label: str) -> Modality:
        """Modality of the channel called ``label``."""
        key = normalize_label(label)
        if key in self._normalized:
            return self._normalized[key]
        return default_modality(label)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, str]) -> ChannelMap:
        """From ``{label: modality name}`` (e.g. a TOML table); bad names -> ``ValueError``."""
        overrides: dict[str, Modality] = {}
        for label, name in mapping.items():
            try:
                overrides[label] = Modality(str(name).upper())
            except ValueError:
                allowed = ", ".join(m.value for m in Modality)
                raise ValueError(
                    f"channel map: {label!r} -> {name!r} is not a modality ({allowed})"
                ) from None
        return cls(overrides)

    def to_dict(self) -> dict[str, str]:
        """``{label: modality name}``, the inverse of :meth:`from_dict`."""
        return {label: modality.value for label, modality in self.overrides.items()}


DEFAULT_CHANNEL_MAP = ChannelMap()


# ---------------------------------------------------------------------------------------------
# Units


_UNIT_SCALE_TO_UV: dict[str, float] = {
    "uv": 1.0,
    "\u00b5v": 1.0,  # micro sign
    "\u03bcv": 1.0,  # Greek mu
    "microv": 1.0,
    "microvolt": 1.0,
    "microvolts": 1.0,
    "mv": 1e3,  # EDF headers are often upper case: "MV" means millivolt, never megavolt
    "millivolt": 1e3,
    "millivolts": 1e3,
    "v": 1e6,
    "volt": 1e6,
    "volts": 1e6,
    "nv": 1e-3,
}


def unit_scale_to_uv(unit: str) -> float | None:
    """Factor that converts values in ``unit`` to µV, or ``None`` for an unknown unit.

    Case-insensitive: ``"uV"``, ``"µV"``, ``"UV"`` -> 1; ``"mV"``, ``"MV"`` -> 1e3; ``"V"`` -> 1e6.
    """
    return _UNIT_SCALE_TO_UV.get(unit.strip().lower().replace(" ", ""))


def to_microvolts(
    data: np.ndarray, unit: str, *, source: str | Path, label: str
) -> tuple[np.ndarray, str, float]:
    """Convert one ExG channel to µV.

    Returns ``(data_uv, unit, scale)``: float64 ``(n_samples,)``, the unit of the returned data and
    the factor applied. An unknown or empty unit logs a warning naming the file and the channel and
    keeps the values unscaled, with the file's unit string, so that nothing is guessed silently.
    """
    scale = unit_scale_to_uv(unit)
    if scale is None:
        log.warning(
            "%s: channel %r has unknown unit %r for an ExG signal; values kept unscaled "
            "(µV expected)",
            source,
            label,
            unit,
        )
        return np.asarray(data, dtype=np.float64), unit, 1.0
    return np.asarray(data, dtype=np.float64) * scale, UV, scale


# ---------------------------------------------------------------------------------------------
# Required modalities and primary channels


def is_flat(channel: Channel) -> bool:
    """True when every sample has the same value (or the channel is empty)."""
    data = channel.data
    return data.size == 0 or bool(np.all(data == data[0]))


def usable_channels(rec: Recording, modality: Modality) -> list[Channel]:
    """Channels of ``modality`` that are neither flat nor non-finite, in file order."""
    return [
        c
        for c in rec.by_modality(modality)
        if not is_flat(c) and bool(np.all(np.isfinite(c.data)))
    ]


def require_modalities(
    rec: Recording, needed: Iterable[Modality], source: str | Path | None = None
) -> None:
    """Raise ``DataError`` if ``rec`` lacks a usable channel of a needed modality.

    A modality whose channels are all flat or non-finite counts as missing. The message names the
    file, the missing modalities and the channels the recording has (with their modalities).
    """
    where = source if source is not None else rec.source
    missing = [m for m in needed if not usable_channels(rec, m)]
    if not missing:
        return
    have = ", ".join(f"{c.label} ({c.modality.value})" for c in rec.channels) or "no channels"
    flat = [c.label for m in missing for c in rec.by_modality(m)]
    extra = f"; flat or non-finite: {', '.join(flat)}" if flat else ""
    names = ", ".join(m.value for m in missing)
    raise DataError(where, f"missing required modality {names} (has: {have}){extra}")


PRIMARY_PREFERENCE: dict[Modality, tuple[str, ...]] = {
    # SHHS: "EEG" is C4-A1 and "EEG(sec)" is C3-A2. Sleep-EDF: Pz-Oz before Fpz-Cz, since the
    # bipolar members score it better (subject-wise CV, 0.817 against 0.798 accuracy on trimmed
    # nights; docs/benchmarks.md, "Which Sleep-EDF channel").
    Modality.EEG: tuple(
        normalize_label(x)
        for x in (
            "C4-M1", "C4-A1", "EEG", "C3-M2", "C3-A2", "EEG(sec)", "C3-A1", "EEG C3", "EEG C4",
            "C4", "C3", "CZ-A1", "CZ-A2", "CZ", "EEG Pz-Oz", "PZ-OZ", "EEG Fpz-Cz", "FPZ-CZ",
        )
    ),
    # Left EOG first (referenced to the right mastoid where possible).
    Modality.EOG: tuple(
        normalize_label(x)
        for x in (
            "E1-M2", "LOC-A2", "LOC-M2", "EOG(L)", "LOC", "E1", "EOG1-A1", "EOG EOG1", "EOG L",
            "EOG horizontal", "E2-M1", "ROC-A1", "EOG(R)", "ROC", "E2", "EOG2-A1", "EOG EOG2",
        )
    ),
    Modality.EMG: tuple(
        normalize_label(x)
        for x in ("CHIN1-CHIN2", "EMG", "EMG submental", "CHIN", "EMG1", "EMG EMG1", "EMG2")
    ),
    Modality.ECG: tuple(normalize_label(x) for x in ("ECG", "ECG II", "ECG1", "EKG", "ECG I")),
    Modality.RESP: tuple(
        normalize_label(x)
        for x in ("NASAL PRESSURE", "PTAF", "NEW AIR", "AIRFLOW", "NAF1", "FLOW", "Resp oro-nasal")
    ),
    Modality.SPO2: tuple(normalize_label(x) for x in ("SPO2", "SAO2", "SO2")),
}
"""Per modality, normalised labels from most to least preferred."""

MIN_EXG_SFREQ = 50.0
"""ExG channels sampled slower than this (Sleep-EDF's 1-Hz EMG envelope) are never primary."""


def too_slow_for_model(modality: Modality, sfreq: float) -> bool:
    """Whether a channel of ``modality`` at ``sfreq`` Hz is ExG slower than
    :data:`MIN_EXG_SFREQ`, so it can never be model input (the one rule for readers, daemon
    channel choice and epoch quality)."""
    return modality in EXG_MODALITIES and sfreq < MIN_EXG_SFREQ


def _preference_keys(label: str, modality: Modality) -> list[str]:
    """The keys :func:`preference_rank` looks up, best first: the label as written and, for EEG,
    the derivation it names (``EEG C4-M1`` -> ``C4-M1``, ucddb's ``C3A2`` -> ``C3-A2``) and,
    with a reference that is no scalp electrode, the active electrode (``EEG C4-REF`` ->
    ``C4``)."""
    keys = [normalize_label(label)]
    if modality != Modality.EEG:
        return keys
    deriv = derivation_key(label)
    active, sep, reference = deriv.partition("-")
    keys.append(deriv)
    if sep and _SCALP_ELECTRODE.match(active) and not _SCALP_ELECTRODE.match(reference):
        keys.append(active)
    return keys


def preference_rank(label: str, modality: Modality) -> int:
    """Position of ``label`` in :data:`PRIMARY_PREFERENCE` of ``modality`` (0 = most preferred;
    a label the table does not name ranks after all that it does). An EEG label is also looked
    up by the derivation it names, then by its active electrode (:func:`_preference_keys`), so
    ``EEG C4-M1`` ranks as ``C4-M1``."""
    order = PRIMARY_PREFERENCE.get(modality, ())
    for key in _preference_keys(label, modality):
        if key in order:
            return order.index(key)
    return len(order)


def rank_channels(channels: Sequence[Channel], modality: Modality) -> list[Channel]:
    """Usable channels of ``modality`` ordered by :data:`PRIMARY_PREFERENCE`, then file order.

    Flat or non-finite channels, and ExG channels slower than :data:`MIN_EXG_SFREQ`, are dropped.
    """
    candidates = [
        c
        for c in channels
        if c.modality == modality
        and not is_flat(c)
        and bool(np.all(np.isfinite(c.data)))
        and not too_slow_for_model(modality, c.sfreq)
    ]
    indexed = list(enumerate(candidates))
    indexed.sort(key=lambda ic: (preference_rank(ic[1].label, modality), ic[0]))
    return [c for _, c in indexed]


def primary_channel(rec: Recording, modality: Modality) -> Channel | None:
    """The preferred usable channel of ``modality`` in ``rec``, or ``None``."""
    ranked = rank_channels(rec.channels, modality)
    return ranked[0] if ranked else None

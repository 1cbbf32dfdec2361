"""Causal, chunk-exact preprocessing shared by ingest/training, ``rtsleep score`` and the daemon.

One :class:`ChannelPipeline` turns the raw samples of one channel (µV for ExG, % for SpO2, source
units for respiration) into the model's input at the model rate:

1. **Band-pass** at the input rate: Butterworth high-pass and low-pass edges as second-order
   sections, run with ``scipy.signal.sosfilt`` and a carried state ``zi``.
2. **Resample** to the model rate with a causal polyphase FIR (any rational ratio ``up/down``), its
   input history carried across calls. Every output is a fixed-order sum over the filter taps, so
   neither chunk boundaries nor BLAS blocking can change its rounding.
3. **Normalise** causally: fixed scaling (ExG, SpO2) or a running RMS (respiration), then clip.

``process`` is bit-exact under any chunking: feeding the same samples in chunks of 1, 7, 1500 or
all at once gives identical arrays, and ``state_dict`` / ``load_state_dict`` restore a pipeline
exactly (the daemon persists them across restarts). The design, the bands, the delays and the
normalisation choice are documented in ``docs/preprocessing.md``.

Output bookkeeping: output sample ``j`` sits at time ``j / sfreq_out`` and is computed from input
samples at times ``<= j / sfreq_out`` only. After ``n`` input samples a pipeline has produced
exactly ``ceil(n * up / down)`` outputs in total (the output times inside ``[0, n / sfreq_in)``),
so every complete 30-s epoch of input gives exactly ``30 * sfreq_out`` outputs, from the first
epoch on.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal as sps

from rtsleep.data.errors import DataError
from rtsleep.data.recording import EPOCH_S, Channel, Modality

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
"""Version of the preprocessing algorithm; bump when the numbers a spec produces change."""

NORM_FIXED = "fixed"
"""``(x - offset) / scale``, clipped to ``±clip``."""
NORM_RUNNING_RMS = "running_rms"
"""``(x - offset) / sqrt(EMA((x - offset)^2) + rms_floor^2)`` (EMA over ``tau_s``), clipped."""
NORM_KINDS = (NORM_FIXED, NORM_RUNNING_RMS)

#: An edge at or above this fraction of a Nyquist frequency is dropped (the resampler's own
#: anti-aliasing filter bounds the band there).
_EDGE_MARGIN = 0.95
#: Largest up or down factor accepted for a rate pair (bounds the polyphase filter size).
_MAX_RATIO_TERM = 4096
#: Relative tolerance within which a rate that is no exact decimal (500/3 Hz) is read as a
#: ratio with small terms (float precision; an uncalibrated 99.973 Hz is far outside it).
_RATIO_RTOL = 1e-12


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality is brought to the model's input.

    Attributes:
        modality: the modality this applies to.
        sfreq: model rate in Hz (100 for ExG, 10 for RESP/SPO2).
        band_hz: ``(low_hz, high_hz)`` band-pass edges in Hz; ``None`` = no edge on that side.
            Edges at or above 95 % of the input (or model) Nyquist frequency are dropped for that
            input rate (see :class:`ChannelPipeline`).
        order: Butterworth order of the ``(high-pass, low-pass)`` edges.
        norm: ``"fixed"`` or ``"running_rms"``.
        offset: subtracted before scaling, in input units (SpO2: 90 %).
        scale: input units per output unit for ``"fixed"`` (e.g. 20 µV -> 1.0).
        tau_s: time constant in s of the running mean square for ``"running_rms"``.
        rms_floor: floor of the running RMS in input units (keeps a flat stretch finite).
        clip: outputs are clipped to ``[-clip, clip]``.
        resample_half_len: half-length of the resampling FIR, in samples of the slower of the
            input and model rates; sets its group delay of ``resample_half_len / min(fs_in, fs)``.
        resample_rolloff: anti-aliasing cutoff as a fraction of the lower Nyquist frequency.
        resample_beta: Kaiser window beta of the resampling FIR (5.0: about 50 dB stopband).
    """

    modality: Modality
    sfreq: float
    band_hz: tuple[float | None, float | None]
    order: tuple[int, int] = (2, 4)
    norm: str = NORM_FIXED
    offset: float = 0.0
    scale: float = 1.0
    tau_s: float = 300.0
    rms_floor: float = 1e-6
    clip: float = 20.0
    resample_half_len: int = 16
    resample_rolloff: float = 0.9
    resample_beta: float = 5.0

    def __post_init__(self) -> None:
        name = f"ModalitySpec({self.modality})"
        if not isinstance(self.modality, Modality):
            raise TypeError(f"{name}: modality must be a Modality, got {self.modality!r}")
        if not (self.sfreq > 0 and math.isfinite(self.sfreq)):
            raise ValueError(f"{name}: sfreq must be a positive number of Hz, got {self.sfreq}")
        if len(self.band_hz) != 2:
            raise ValueError(f"{name}: band_hz must be (low_hz, high_hz), got {self.band_hz}")
        low, high = self.band_hz
        for edge in (low, high):
            if edge is not None and not (edge > 0 and math.isfinite(edge)):
                raise ValueError(f"{name}: band edges must be positive Hz or None, got {edge}")
        if low is not None and high is not None and low >= high:
            raise ValueError(f"{name}: band low edge {low} Hz must be below high edge {high} Hz")
        if len(self.order) != 2 or min(self.order) < 1:
            raise ValueError(f"{name}: order must be two positive ints, got {self.order}")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"{name}: norm must be one of {NORM_KINDS}, got {self.norm!r}")
        if not (self.scale > 0 and self.tau_s > 0 and self.rms_floor > 0 and self.clip > 0):
            raise ValueError(f"{name}: scale, tau_s, rms_floor and clip must be positive")
        if self.resample_half_len < 1 or not (0 < self.resample_rolloff <= 1):
            raise ValueError(f"{name}: resample_half_len >= 1 and 0 < resample_rolloff <= 1")

    def n_times(self, epoch_s: float = EPOCH_S) -> int:
        """Samples per epoch at the model rate (3000 for 100 Hz and 30 s)."""
        return _samples_per_epoch(self.sfreq, epoch_s, f"{self.modality} model rate")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (modality as its name, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Modality):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModalitySpec:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModalitySpec: unknown keys {unknown}")
        kwargs = dict(data)
        try:
            kwargs["modality"] = Modality(kwargs["modality"])
            kwargs["band_hz"] = tuple(
                None if e is None else float(e) for e in kwargs["band_hz"]
            )
            if "order" in kwargs:
                kwargs["order"] = tuple(int(o) for o in kwargs["order"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"ModalitySpec: bad field ({err})") from err
        return cls(**kwargs)


def _samples_per_epoch(sfreq: float, epoch_s: float, what: str) -> int:
    n = sfreq * epoch_s
    n_int = round(n)
    if abs(n - n_int) > 1e-6 * max(1.0, n):
        raise ValueError(f"{what} {sfreq} Hz does not give a whole number of samples per epoch")
    return int(n_int)


@dataclass(frozen=True)
class PreprocessSpec:
    """Per-modality preprocessing, stored in every checkpoint and compared on load.

    ``modalities`` holds one :class:`ModalitySpec` per modality the model reads (the four ExG
    modalities in model order, then RESP and SPO2 for the apnea pathway).
    """

    modalities: tuple[ModalitySpec, ...]
    epoch_s: float = EPOCH_S
    version: int = PREPROCESS_VERSION
    _by_modality: dict[Modality, ModalitySpec] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        by: dict[Modality, ModalitySpec] = {}
        for m in self.modalities:
            if not isinstance(m, ModalitySpec):
                raise TypeError(f"PreprocessSpec: expected ModalitySpec, got {type(m).__name__}")
            if m.modality in by:
                raise ValueError(f"PreprocessSpec: modality {m.modality} given twice")
            by[m.modality] = m
        if not self.epoch_s > 0:
            raise ValueError(f"PreprocessSpec: epoch_s must be positive, got {self.epoch_s}")
        object.__setattr__(self, "_by_modality", by)

    @classmethod
    def default(cls) -> PreprocessSpec:
        """The default spec: ExG at 100 Hz (S = 3000), RESP and SPO2 at 10 Hz (S = 300).

        Bands: EEG and EOG 0.3-35 Hz, EMG 10-45 Hz, ECG 0.5-40 Hz, RESP 0.05-2 Hz (the high-pass
        removes belt/pressure offsets before the running RMS), SpO2 low-pass 0.5 Hz (keeps the
        level). Scales: EEG 20 µV, EOG 50 µV, EMG 10 µV, ECG 200 µV per unit; SpO2
        ``(x - 90 %) / 10 %``; RESP running RMS over 300 s. The resampling FIR is 16 samples of the
        slower rate per side (0.16 s delay for ExG at >= 100 Hz), 8 for RESP/SPO2 (0.8 s).
        """
        return cls(
            modalities=(
                ModalitySpec(Modality.EEG, 100.0, (0.3, 35.0), scale=20.0, clip=25.0),
                ModalitySpec(Modality.EOG, 100.0, (0.3, 35.0), scale=50.0, clip=20.0),
                ModalitySpec(Modality.EMG, 100.0, (10.0, 45.0), scale=10.0, clip=25.0),
                ModalitySpec(Modality.ECG, 100.0, (0.5, 40.0), scale=200.0, clip=25.0),
                ModalitySpec(
                    Modality.RESP, 10.0, (0.05, 2.0), norm=NORM_RUNNING_RMS, tau_s=300.0,
                    clip=10.0, resample_half_len=8,
                ),
                ModalitySpec(
                    Modality.SPO2, 10.0, (None, 0.5), offset=90.0, scale=10.0, clip=10.0,
                    resample_half_len=8,
                ),
            )
        )

    def __contains__(self, modality: object) -> bool:
        return modality in self._by_modality

    def for_modality(self, modality: Modality) -> ModalitySpec:
        """The spec of one modality; ``KeyError`` naming what the spec has otherwise."""
        try:
            return self._by_modality[modality]
        except KeyError:
            have = [str(m) for m in self._by_modality]
            raise KeyError(f"preprocess spec has no modality {modality} (has {have})") from None

    def n_times(self, modality: Modality) -> int:
        """Samples per epoch of ``modality`` at its model rate."""
        return self.for_modality(modality).n_times(self.epoch_s)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal specs give equal strings."""
        data = {
            "epoch_s": self.epoch_s,
            "version": self.version,
            "modalities": [m.to_dict() for m in self.modalities],
        }
        return json.dumps(data, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        """Inverse of :meth:`to_json`; malformed input raises ``ValueError``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"preprocess spec: not JSON ({err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("modalities"), list):
            raise ValueError("preprocess spec: expected an object with a 'modalities' list")
        unknown = sorted(set(data) - {"epoch_s", "version", "modalities"})
        if unknown:
            raise ValueError(f"preprocess spec: unknown keys {unknown}")
        try:
            mods = tuple(ModalitySpec.from_dict(m) for m in data["modalities"])
            return cls(
                modalities=mods,
                epoch_s=float(data.get("epoch_s", EPOCH_S)),
                version=int(data.get("version", PREPROCESS_VERSION)),
            )
        except TypeError as err:  # a field of the wrong JSON type, a missing field
            raise ValueError(f"preprocess spec: {err}") from None

    def mismatches(self, other: PreprocessSpec) -> list[str]:
        """Human-readable differences from ``other`` (empty when they preprocess identically).

        Each line reads ``"<where>: <self value> != <other value>"``, e.g.
        ``"EEG.band_hz: (0.3, 35.0) != (0.5, 40.0)"``.
        """
        out: list[str] = []
        if self.version != other.version:
            out.append(f"version: {self.version} != {other.version}")
        if self.epoch_s != other.epoch_s:
            out.append(f"epoch_s: {self.epoch_s} != {other.epoch_s}")
        mine = [m.modality for m in self.modalities]
        theirs = [m.modality for m in other.modalities]
        for mod in mine:
            if mod not in other:
                out.append(f"{mod}: present != missing")
        for mod in theirs:
            if mod not in self:
                out.append(f"{mod}: missing != present")
        common = [m for m in mine if m in other]
        if common != [m for m in theirs if m in self]:
            out.append(
                f"modality order: {[str(m) for m in common]} != "
                f"{[str(m) for m in theirs if m in self]}"
            )
        for mod in common:
            a, b = self.for_modality(mod), other.for_modality(mod)
            for f in fields(ModalitySpec):
                va, vb = getattr(a, f.name), getattr(b, f.name)
                if va != vb:
                    out.append(f"{mod}.{f.name}: {va} != {vb}")
        return out


def rational_ratio(sfreq_in: float, sfreq_out: float) -> tuple[int, int]:
    """``(up, down)`` in lowest terms with ``sfreq_out / sfreq_in == up / down``.

    Rates are read as exact decimals (to 1e-6 Hz). A rate that is no exact decimal, such as
    500/3 Hz (an EDF record of 500 samples in 3 s), is read as the ratio with terms up to 4096
    that its float value matches to 1e-12. Any other ratio whose terms exceed 4096 (e.g. an
    uncalibrated 99.973 Hz) raises ``ValueError``.
    """
    for name, f in (("input", sfreq_in), ("model", sfreq_out)):
        if not (f > 0 and math.isfinite(f)):
            raise ValueError(f"{name} sampling rate must be a positive number of Hz, got {f}")
    ratio = Fraction(round(sfreq_out * 1_000_000), round(sfreq_in * 1_000_000))
    if ratio.numerator > _MAX_RATIO_TERM or ratio.denominator > _MAX_RATIO_TERM:
        exact = sfreq_out / sfreq_in
        if exact >= 1.0:  # bound the larger term: limit_denominator bounds the denominator only
            near = 1 / Fraction(1.0 / exact).limit_denominator(_MAX_RATIO_TERM)
        else:
            near = Fraction(exact).limit_denominator(_MAX_RATIO_TERM)
        if abs(float(near) - exact) <= _RATIO_RTOL * exact:
            ratio = near
    if ratio.numerator > _MAX_RATIO_TERM or ratio.denominator > _MAX_RATIO_TERM:
        raise ValueError(
            f"cannot resample {sfreq_in} Hz to {sfreq_out} Hz: ratio {ratio} has terms above "
            f"{_MAX_RATIO_TERM}"
        )
    return ratio.numerator, ratio.denominator


class _Resampler:
    """Causal polyphase FIR resampler by ``up/down`` with carried input history.

    Output ``j`` is ``sum_m H[p_j, m] * x[i_j - m]`` for ``m = 0 .. T-1`` in that order, with
    ``i_j = (j * down) // up`` (the newest input at or before output ``j``'s time) and
    ``p_j = (j * down) % up``; ``H[p, m] = h[p + up * m]`` is the polyphase split of a Kaiser-window
    low-pass ``h`` designed at ``sfreq_in * up``. Inputs before the first are taken equal to the
    first (edge padding), so a constant passes unchanged from the start.
    """

    def __init__(self, up: int, down: int, half_len: int, rolloff: float, beta: float) -> None:
        self.up = up
        self.down = down
        self.identity = up == 1 and down == 1
        if self.identity:
            self.taps_h = np.ones(1)
        else:
            n_taps = 2 * half_len * max(up, down) + 1
            h = sps.firwin(n_taps, rolloff / max(up, down), window=("kaiser", beta)) * up
            self.taps_h = h
        n_taps = len(self.taps_h)
        self.n_phase_taps = -(-n_taps // up)  # T = ceil(K / up)
        poly = np.zeros(up * self.n_phase_taps)
        poly[:n_taps] = self.taps_h
        # (T, up) -> (up, T): row p holds h[p], h[p + up], h[p + 2 up], ...
        self.poly = np.ascontiguousarray(poly.reshape(self.n_phase_taps, up).T)
        self.history = np.zeros(self.n_phase_taps - 1)
        self.n_in = 0
        self.n_out = 0

    @property
    def delay_s_times_fs_in(self) -> float:
        """Group delay in input samples (linear-phase FIR: (K - 1) / 2 at the upsampled rate)."""
        return (len(self.taps_h) - 1) / 2 / self.up

    def n_out_after(self, n_in: int) -> int:
        """Total outputs after ``n_in`` inputs: ``ceil(n_in * up / down)``."""
        return -(-n_in * self.up // self.down)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample ``x`` (n,) float64 -> (m,) float64, continuing from the carried history."""
        if self.identity:
            self.n_in += len(x)
            self.n_out += len(x)
            return x.copy()
        if len(x) == 0:
            return np.zeros(0)
        if self.n_in == 0:
            self.history = np.full(self.n_phase_taps - 1, x[0])
        n_before = self.n_in
        j_end = self.n_out_after(n_before + len(x))
        buf = np.concatenate([self.history, x])  # buf[b] = input (n_before - (T - 1) + b)
        j = np.arange(self.n_out, j_end, dtype=np.int64)
        t = j * self.down
        newest = t // self.up
        phase = t - newest * self.up
        base = newest - (n_before - (self.n_phase_taps - 1))
        acc = np.zeros(len(j))
        for m in range(self.n_phase_taps):  # fixed order over taps: chunk-independent rounding
            acc += self.poly[phase, m] * buf[base - m]
        keep = self.n_phase_taps - 1
        self.history = buf[len(buf) - keep :].copy() if keep else np.zeros(0)
        self.n_in = n_before + len(x)
        self.n_out = j_end
        return acc


class ChannelPipeline:
    """Causal band-pass -> polyphase resample -> normalise of one channel, chunk-exact.

    Args:
        spec: the channel's :class:`ModalitySpec`.
        sfreq_in: the channel's sampling rate in Hz.

    Band edges that do not fit the input rate are dropped, never fatal: a high edge at or above
    95 % of the input or model Nyquist frequency is left to the resampler's anti-aliasing filter;
    a low edge at or above 95 % of the input Nyquist frequency leaves nothing to band-pass, so the
    filter is skipped and a warning logged (e.g. the 1-Hz EMG envelope of Sleep-EDF against the
    10-45 Hz EMG band). :attr:`band_hz` gives the edges actually applied.

    The filter state starts as if the signal had been constant at its first sample forever
    (``sosfilt_zi * x[0]``; resampler history edge-padded), so a DC offset does not ring.

    ``process`` raises ``ValueError`` for non-finite input and then leaves the state untouched.
    """

    def __init__(self, spec: ModalitySpec, sfreq_in: float) -> None:
        self.spec = spec
        self.sfreq_in = float(sfreq_in)
        self.up, self.down = rational_ratio(self.sfreq_in, spec.sfreq)
        self.band_hz = self._effective_band()
        self.sos = self._design_band_pass()
        self._resampler = _Resampler(
            self.up, self.down, spec.resample_half_len, spec.resample_rolloff, spec.resample_beta
        )
        self._sos_zi = np.zeros((len(self.sos), 2))
        # Running mean square (of x^2) and its bias-correction weight (EMA of ones).
        self._alpha = math.exp(-1.0 / (spec.tau_s * spec.sfreq))
        self._ms_zi = np.zeros(1)
        self._w_zi = np.zeros(1)
        self._started = False

    # ---------------------------------------------------------------- design
    def _effective_band(self) -> tuple[float | None, float | None]:
        low, high = self.spec.band_hz
        nyq_in = self.sfreq_in / 2
        nyq_min = min(self.sfreq_in, self.spec.sfreq) / 2
        if high is not None and high >= _EDGE_MARGIN * nyq_min:
            log.debug(
                "%s: high edge %.3g Hz dropped at %.6g Hz input (resampler low-pass bounds it)",
                self.spec.modality, high, self.sfreq_in,
            )
            high = None
        if low is not None and low >= _EDGE_MARGIN * nyq_in:
            log.warning(
                "%s: band %s Hz lies above the Nyquist frequency of the %.6g Hz input; "
                "band-pass skipped",
                self.spec.modality, self.spec.band_hz, self.sfreq_in,
            )
            return (None, None)
        return (low, high)

    def _design_band_pass(self) -> np.ndarray:
        low, high = self.band_hz
        sections = []
        if low is not None:
            sections.append(
                sps.butter(self.spec.order[0], low, "highpass", fs=self.sfreq_in, output="sos")
            )
        if high is not None:
            sections.append(
                sps.butter(self.spec.order[1], high, "lowpass", fs=self.sfreq_in, output="sos")
            )
        if not sections:
            return np.zeros((0, 6))
        return np.vstack(sections)

    # ---------------------------------------------------------------- info
    @property
    def sfreq_out(self) -> float:
        """Model rate in Hz."""
        return self.spec.sfreq

    @property
    def n_in(self) -> int:
        """Input samples processed so far."""
        return self._resampler.n_in

    @property
    def n_out(self) -> int:
        """Output samples produced so far: always ``ceil(n_in * up / down)``."""
        return self._resampler.n_out

    def n_out_after(self, n_in: int) -> int:
        """Total outputs after ``n_in`` input samples in total: ``ceil(n_in * up / down)``."""
        return self._resampler.n_out_after(n_in)

    @property
    def resampler_delay_s(self) -> float:
        """Group delay of the resampling FIR in s (linear phase: the same at every frequency)."""
        return self._resampler.delay_s_times_fs_in / self.sfreq_in

    def group_delay_s(self, freq_hz: float) -> float:
        """Group delay in s at ``freq_hz``: Butterworth band-pass (frequency dependent) + FIR."""
        delay = self.resampler_delay_s
        for sec in self.sos:
            _, gd = sps.group_delay((sec[:3], sec[3:]), w=[freq_hz], fs=self.sfreq_in)
            delay += float(gd[0]) / self.sfreq_in
        return delay

    # ---------------------------------------------------------------- run
    def process(self, x: np.ndarray) -> np.ndarray:
        """Process the next raw samples.

        Args:
            x: ``(n,)`` raw samples at ``sfreq_in`` (µV for ExG), following the previous call's.

        Returns:
            ``(m,)`` float32 at the model rate,
            ``m = ceil((n_in + n) * up / down) - ceil(n_in * up / down)``.
        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"{self.spec.modality}: expected 1-D samples, got shape {arr.shape}")
        if arr.size == 0:
            return np.zeros(0, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise ValueError(f"{self.spec.modality}: {bad} non-finite samples in chunk")
        if not self._started:
            if len(self.sos):
                self._sos_zi = sps.sosfilt_zi(self.sos) * arr[0]
            self._started = True
        if len(self.sos):
            filtered, self._sos_zi = sps.sosfilt(self.sos, arr, zi=self._sos_zi)
        else:
            filtered = arr
        resampled = self._resampler.process(filtered)
        return self._normalise(resampled)

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        spec = self.spec
        if len(x) == 0:  # lfilter would return a bogus state for an empty input
            return np.zeros(0, dtype=np.float32)
        centred = x - spec.offset
        if spec.norm == NORM_FIXED:
            y = centred / spec.scale
        else:
            a = self._alpha
            ms, self._ms_zi = sps.lfilter([1.0 - a], [1.0, -a], centred * centred, zi=self._ms_zi)
            w, self._w_zi = sps.lfilter([1.0 - a], [1.0, -a], np.ones_like(centred), zi=self._w_zi)
            y = centred / np.sqrt(ms / w + spec.rms_floor * spec.rms_floor)
        return np.clip(y, -spec.clip, spec.clip).astype(np.float32)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        """Everything needed to continue exactly where this pipeline is (copies)."""
        return {
            "sfreq_in": self.sfreq_in,
            "up": self.up,
            "down": self.down,
            "n_in": self._resampler.n_in,
            "n_out": self._resampler.n_out,
            "started": int(self._started),
            "sos_zi": self._sos_zi.copy(),
            "resample_history": self._resampler.history.copy(),
            "norm_ms_zi": self._ms_zi.copy(),
            "norm_w_zi": self._w_zi.copy(),
        }

    def load_state_dict(self, state: dict[str, np.ndarray | float | int]) -> None:
        """Restore a :meth:`state_dict`; ``ValueError`` if it belongs to another rate or design."""
        name = f"{self.spec.modality} pipeline state"
        try:
            rates = (float(state["sfreq_in"]), int(state["up"]), int(state["down"]))  # type: ignore[arg-type]
            n_in, n_out = int(state["n_in"]), int(state["n_out"])  # type: ignore[arg-type]
            started = bool(int(state["started"]))  # type: ignore[arg-type]
            arrays = {
                k: np.array(state[k], dtype=np.float64)
                for k in ("sos_zi", "resample_history", "norm_ms_zi", "norm_w_zi")
            }
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{name}: missing or malformed entry ({err})") from err
        if rates != (self.sfreq_in, self.up, self.down):
            raise ValueError(
                f"{name}: saved for {rates[0]} Hz (up {rates[1]}, down {rates[2]}), "
                f"this pipeline is {self.sfreq_in} Hz (up {self.up}, down {self.down})"
            )
        expected = {
            "sos_zi": self._sos_zi.shape,
            "resample_history": (self._resampler.n_phase_taps - 1,),
            "norm_ms_zi": (1,),
            "norm_w_zi": (1,),
        }
        for key, shape in expected.items():
            if key == "resample_history" and self._resampler.identity:
                continue
            if arrays[key].shape != shape:
                raise ValueError(f"{name}: {key} has shape {arrays[key].shape}, expected {shape}")
        if n_in < 0 or n_out != self._resampler.n_out_after(n_in):
            raise ValueError(f"{name}: n_out {n_out} does not match n_in {n_in}")
        self._sos_zi = arrays["sos_zi"]
        self._resampler.history = arrays["resample_history"]
        self._resampler.n_in = n_in
        self._resampler.n_out = n_out
        self._ms_zi = arrays["norm_ms_zi"]
        self._w_zi = arrays["norm_w_zi"]
        self._started = started

    def reset(self) -> None:
        """Forget all history, as if newly built (e.g. after a long gap in a stream)."""
        fresh = ChannelPipeline(self.spec, self.sfreq_in)
        self.load_state_dict(fresh.state_dict())


# ------------------------------------------------------------------------ amplitude check

#: Plausible robust amplitude (1.4826 * median absolute deviation) per ExG modality, in µV:
#: outside (low, high) gives a warning; below 0.01 µV or above 10 mV is an error (wrong unit).
_EXG_WARN_RANGE_UV: dict[Modality, tuple[float, float]] = {
    Modality.EEG: (1.0, 300.0),
    Modality.EOG: (1.0, 1000.0),
    Modality.EMG: (0.05, 300.0),
    Modality.ECG: (5.0, 3000.0),
}
_EXG_ERROR_LOW_UV = 0.01
_EXG_ERROR_HIGH_UV = 10_000.0
_UV_UNITS = {"µv", "uv", "μv"}  # micro sign and Greek mu
_MAX_CHECK_SAMPLES = 1_000_000


def check_amplitude(channel: Channel, source: str | Path = "") -> list[str]:
    """Check a channel's values and units at ingest.

    Raises ``DataError(source, ...)`` for data that cannot be right: non-finite values, a flat
    channel, or an ExG channel clearly not in µV (robust amplitude below 0.01 µV with every value
    below 1, i.e. volts or millivolts, or above 10 mV). Returns warnings (one line each, naming the
    channel) for data that is suspicious but usable: an ExG amplitude outside the modality's
    plausible range, an ExG unit other than µV, a mostly flat channel, SpO2 outside 0-100 %.

    The robust amplitude is 1.4826 x the median absolute deviation, over at most 10^6 evenly
    strided samples.
    """
    label = f"channel {channel.label!r} ({channel.modality})"
    data = np.asarray(channel.data, dtype=np.float64)
    if data.size == 0:
        raise DataError(source, f"{label} has no samples")
    finite = np.isfinite(data)
    if not finite.all():
        raise DataError(source, f"{label} has {int((~finite).sum())} non-finite samples")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise DataError(source, f"{label} is flat (every sample is {lo:g} {channel.unit})")
    stride = max(1, data.size // _MAX_CHECK_SAMPLES)
    sample = data[::stride]
    median = float(np.median(sample))
    robust = 1.4826 * float(np.median(np.abs(sample - median)))
    peak = float(np.percentile(np.abs(sample - median), 99.9))
    warnings: list[str] = []
    if robust == 0.0:
        warnings.append(f"{label} is mostly flat (median absolute deviation 0)")
    if channel.modality in _EXG_WARN_RANGE_UV:
        if channel.unit.strip().lower() not in _UV_UNITS:
            warnings.append(f"{label} has unit {channel.unit!r}; ExG is expected in µV")
        if robust > 0.0 and robust < _EXG_ERROR_LOW_UV and peak < 1.0:
            raise DataError(
                source,
                f"{label} amplitude {robust:.3g} µV is far too small for µV "
                "(recorded in V or mV?)",
            )
        if robust > _EXG_ERROR_HIGH_UV:
            raise DataError(
                source,
                f"{label} amplitude {robust:.3g} µV is far too large for µV (wrong unit or gain?)",
            )
        warn_lo, warn_hi = _EXG_WARN_RANGE_UV[channel.modality]
        if robust > 0.0 and not (warn_lo <= robust <= warn_hi):
            warnings.append(
                f"{label} robust amplitude {robust:.3g} µV is outside the usual "
                f"{warn_lo:g}-{warn_hi:g} µV for {channel.modality}"
            )
    elif channel.modality == Modality.SPO2:
        if median <= 1.5:
            warnings.append(f"{label} median {median:.3g} looks like a fraction; SpO2 is in %")
        elif lo < 0.0 or hi > 100.5:
            warnings.append(f"{label} spans {lo:.3g}..{hi:.3g}, outside 0-100 %")
    return warnings


__all__ = [
    "NORM_FIXED",
    "NORM_KINDS",
    "NORM_RUNNING_RMS",
    "PREPROCESS_VERSION",
    "ChannelPipeline",
    "ModalitySpec",
    "PreprocessSpec",
    "check_amplitude",
    "rational_ratio",
]

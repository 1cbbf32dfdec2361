"""Causal, chunk-exact preprocessing: spec, ChannelPipeline, amplitude check (synthetic signals)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.preprocessing import (
    ChannelPipeline,
    ModalitySpec,
    PreprocessSpec,
    check_amplitude,
    rational_ratio,
)
from rtsleep.data.recording import Channel, Modality

SPEC = PreprocessSpec.default()

# (input rate, modality): every ratio the daemon must handle.
RATIOS = [
    (50.0, Modality.EEG),  # 50 -> 100 (DREAMS excerpt3)
    (200.0, Modality.EEG),  # 200 -> 100
    (256.0, Modality.EOG),  # 256 -> 100
    (125.0, Modality.ECG),  # 125 -> 100 (SHHS)
    (250.0, Modality.EMG),  # 250 -> 100
    (512.0, Modality.EEG),  # 512 -> 100
    (100.0, Modality.EEG),  # identity
    (1.0, Modality.RESP),  # 1 -> 10 (Sleep-EDF resp)
    (50.0, Modality.RESP),  # 50 -> 10
    (50.0, Modality.SPO2),  # 50 -> 10
    (500.0 / 3, Modality.EEG),  # 500/3 -> 100 is 3/5 (a 3-s EDF record of 500 samples)
]


def _signal(fs: float, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(fs * seconds) + 3  # not a whole epoch: exercises partial bookkeeping
    t = np.arange(n) / fs
    return 40.0 * rng.standard_normal(n) + 30.0 * np.sin(2 * np.pi * min(fs / 5, 10.0) * t) + 95.0


def _run_chunked(pipe: ChannelPipeline, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(pipe.process(x[i : i + n]))
        i, k = i + n, k + 1
    return np.concatenate(out)


@pytest.mark.parametrize(("fs_in", "modality"), RATIOS, ids=lambda v: str(v))
def test_chunked_processing_is_bit_identical_to_one_shot(fs_in: float, modality: Modality) -> None:
    spec = SPEC.for_modality(modality)
    seconds = 600.0 if fs_in < 10 else 24.0
    x = _signal(fs_in, seconds)
    whole = ChannelPipeline(spec, fs_in).process(x)
    rng = np.random.default_rng(int(fs_in))
    random_sizes = [int(s) for s in rng.integers(1, 400, size=64)]
    for sizes in ([1], [7], [1500], [1, 7, 1500, 2, 13], random_sizes):
        n = len(x) if sizes != [1] else min(len(x), max(int(3 * fs_in) + 5, 200))
        chunked = _run_chunked(ChannelPipeline(spec, fs_in), x[:n], sizes)
        reference = whole if n == len(x) else ChannelPipeline(spec, fs_in).process(x[:n])
        assert chunked.dtype == np.float32
        assert np.array_equal(chunked, reference), f"chunks {sizes[:5]} differ"


@pytest.mark.parametrize(("fs_in", "modality"), RATIOS, ids=lambda v: str(v))
def test_output_count_is_ceil_n_up_over_down_and_whole_epochs_give_whole_epochs(
    fs_in: float, modality: Modality
) -> None:
    spec = SPEC.for_modality(modality)
    pipe = ChannelPipeline(spec, fs_in)
    up, down = pipe.up, pipe.down
    assert spec.sfreq / fs_in == pytest.approx(up / down)
    per_epoch_in = round(30 * fs_in)
    x = _signal(fs_in, 300.0)
    # Epoch by epoch: exactly 30 s of output per 30 s of input from the first epoch on.
    for k in range(3):
        y = pipe.process(x[k * per_epoch_in : (k + 1) * per_epoch_in])
        assert len(y) == spec.n_times()
    # Odd chunks: the running total is always ceil(n * up / down).
    pipe = ChannelPipeline(spec, fs_in)
    total, n_in = 0, 0
    for size in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89):
        total += len(pipe.process(x[n_in : n_in + size]))
        n_in += size
        assert total == math.ceil(n_in * up / down) == pipe.n_out


@pytest.mark.parametrize(("fs_in", "modality"), RATIOS[:6] + RATIOS[7:9], ids=lambda v: str(v))
def test_state_dict_restore_continues_bit_exactly(fs_in: float, modality: Modality) -> None:
    spec = SPEC.for_modality(modality)
    seconds = 400.0 if fs_in < 10 else 20.0
    x = _signal(fs_in, seconds, seed=3)
    whole = ChannelPipeline(spec, fs_in).process(x)
    cut = len(x) // 3 + 1
    first = ChannelPipeline(spec, fs_in)
    head = first.process(x[:cut])
    saved = {
        k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in first.state_dict().items()
    }
    first.process(x[cut : cut + 50])  # mutating the old pipeline must not touch the saved state
    restored = ChannelPipeline(spec, fs_in)
    restored.load_state_dict(saved)
    tail = restored.process(x[cut:])
    assert np.array_equal(np.concatenate([head, tail]), whole)


def test_state_from_another_rate_is_rejected() -> None:
    spec = SPEC.for_modality(Modality.EEG)
    state = ChannelPipeline(spec, 256.0).state_dict()
    with pytest.raises(ValueError, match="256"):
        ChannelPipeline(spec, 200.0).load_state_dict(state)


def test_reset_forgets_history() -> None:
    spec = SPEC.for_modality(Modality.EEG)
    x = _signal(200.0, 10.0)
    pipe = ChannelPipeline(spec, 200.0)
    pipe.process(x[:777])
    pipe.reset()
    assert np.array_equal(pipe.process(x), ChannelPipeline(spec, 200.0).process(x))


@pytest.mark.parametrize(("fs_in", "modality"), RATIOS, ids=lambda v: str(v))
def test_perturbing_the_future_leaves_past_outputs_unchanged(
    fs_in: float, modality: Modality
) -> None:
    spec = SPEC.for_modality(modality)
    seconds = 200.0 if fs_in < 10 else 12.0
    x = _signal(fs_in, seconds, seed=5)
    k = len(x) // 2
    x2 = x.copy()
    x2[k:] += 500.0 * np.random.default_rng(9).standard_normal(len(x) - k)
    pipe = ChannelPipeline(spec, fs_in)
    y1 = pipe.process(x)
    y2 = ChannelPipeline(spec, fs_in).process(x2)
    n_past = pipe.n_out_after(k)  # outputs whose time is before sample k
    assert np.array_equal(y1[:n_past], y2[:n_past])
    assert not np.array_equal(y1[n_past:], y2[n_past:])


def _amplitude_at(y: np.ndarray, fs: float, freq: float) -> float:
    """Least-squares amplitude of a sinusoid at ``freq`` in ``y``."""
    t = np.arange(len(y)) / fs
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


@pytest.mark.parametrize("fs_in", [50.0, 200.0, 256.0, 512.0])
def test_eeg_band_passes_10hz_at_unit_gain_and_rejects_mains_and_dc(fs_in: float) -> None:
    spec = SPEC.for_modality(Modality.EEG)
    t = np.arange(int(40 * fs_in)) / fs_in
    settled = slice(int(10 * spec.sfreq), None)  # skip the first 10 s
    ten = ChannelPipeline(spec, fs_in).process(100.0 * np.sin(2 * np.pi * 10.0 * t))
    gain = _amplitude_at(ten[settled] * spec.scale, spec.sfreq, 10.0) / 100.0
    assert gain == pytest.approx(1.0, rel=0.03)
    if fs_in > 120:  # 60 Hz exists in the input
        mains = ChannelPipeline(spec, fs_in).process(100.0 * np.sin(2 * np.pi * 60.0 * t))
        assert np.abs(mains[settled] * spec.scale).max() < 1.0  # < -40 dB
    step = np.where(t < 5.0, 300.0, 800.0)  # DC offset, then a DC step
    dc = ChannelPipeline(spec, fs_in).process(step)
    assert np.abs(dc[: int(5 * spec.sfreq)]).max() < 1e-6  # steady from the first sample
    assert np.abs(dc[settled] * spec.scale).max() < 1.0  # the step has decayed


def test_spo2_level_passes_from_the_first_sample() -> None:
    spec = SPEC.for_modality(Modality.SPO2)
    y = ChannelPipeline(spec, 50.0).process(np.full(1500, 95.0))
    assert len(y) == 300
    np.testing.assert_allclose(y, (95.0 - spec.offset) / spec.scale, atol=1e-5)


def test_resp_running_rms_normalises_away_the_gain_but_shows_an_apnea() -> None:
    spec = SPEC.for_modality(Modality.RESP)
    fs = 25.0
    t = np.arange(int(900 * fs)) / fs
    breath = np.sin(2 * np.pi * 0.25 * t)
    breath[(t >= 800) & (t < 830)] *= 0.05  # 30-s apnea (95 % drop)
    small = ChannelPipeline(spec, fs).process(3.0 * breath)
    large = ChannelPipeline(spec, fs).process(3000.0 * breath)
    ts = np.arange(len(small)) / spec.sfreq
    normal = (ts > 600) & (ts < 790)
    np.testing.assert_allclose(small[normal], large[normal], atol=1e-3)
    rms_normal = float(np.sqrt(np.mean(small[normal] ** 2)))
    assert rms_normal == pytest.approx(1.0, rel=0.1)
    during = (ts > 810) & (ts < 828)
    assert float(np.sqrt(np.mean(small[during] ** 2))) < 0.2 * rms_normal


def test_band_edges_above_the_input_nyquist_are_dropped_without_error() -> None:
    eeg50 = ChannelPipeline(SPEC.for_modality(Modality.EEG), 50.0)
    assert eeg50.band_hz == (0.3, None)  # 35 Hz > 25 Hz Nyquist: the resampler bounds the band
    emg1 = ChannelPipeline(SPEC.for_modality(Modality.EMG), 1.0)  # Sleep-EDF EMG envelope
    assert emg1.band_hz == (None, None)
    y = emg1.process(np.linspace(0.0, 2.0, 30))
    assert len(y) == 3000 and np.isfinite(y).all()
    resp1 = ChannelPipeline(SPEC.for_modality(Modality.RESP), 1.0)
    assert resp1.band_hz == (0.05, None)
    assert len(resp1.process(np.sin(np.arange(30.0)))) == 300


def test_group_delay_is_reported_for_the_resampler_and_the_filters() -> None:
    pipe = ChannelPipeline(SPEC.for_modality(Modality.EEG), 256.0)
    assert pipe.resampler_delay_s == pytest.approx(0.16)
    assert pipe.group_delay_s(10.0) > pipe.resampler_delay_s
    assert ChannelPipeline(SPEC.for_modality(Modality.EEG), 100.0).resampler_delay_s == 0.0


def test_non_finite_chunk_raises_and_leaves_the_state_untouched() -> None:
    spec = SPEC.for_modality(Modality.EEG)
    x = _signal(256.0, 5.0)
    pipe = ChannelPipeline(spec, 256.0)
    head = pipe.process(x[:100])
    bad = x[100:200].copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        pipe.process(bad)
    tail = pipe.process(x[100:])
    assert np.array_equal(np.concatenate([head, tail]), ChannelPipeline(spec, 256.0).process(x))


def test_rational_ratio_reduces_and_rejects_unreasonable_rates() -> None:
    assert rational_ratio(256.0, 100.0) == (25, 64)
    assert rational_ratio(125.0, 100.0) == (4, 5)
    assert rational_ratio(1.0, 10.0) == (10, 1)
    # rates that are no exact decimal, as a float or as LSL's 16-digit text
    assert rational_ratio(500.0 / 3, 100.0) == (3, 5)
    assert rational_ratio(166.6666666666667, 10.0) == (3, 50)
    assert rational_ratio(200.0 / 3, 100.0) == (3, 2)
    for rate in (99.973, 166.6667):
        with pytest.raises(ValueError, match="ratio"):
            rational_ratio(rate, 100.0)


# ---------------------------------------------------------------- spec


def test_default_spec_has_model_rates_and_epoch_lengths() -> None:
    assert [m.modality for m in SPEC.modalities] == [
        Modality.EEG, Modality.EOG, Modality.EMG, Modality.ECG, Modality.RESP, Modality.SPO2,
    ]
    assert [SPEC.n_times(m) for m in (Modality.EEG, Modality.ECG)] == [3000, 3000]
    assert [SPEC.n_times(m) for m in (Modality.RESP, Modality.SPO2)] == [300, 300]


def test_spec_json_round_trip_is_exact() -> None:
    text = SPEC.to_json()
    again = PreprocessSpec.from_json(text)
    assert again == SPEC
    assert again.to_json() == text
    assert SPEC.mismatches(again) == []


def test_mismatches_name_each_difference() -> None:
    mods = list(SPEC.modalities)
    mods[0] = ModalitySpec(Modality.EEG, 100.0, (0.5, 40.0), scale=20.0, clip=25.0)
    other = PreprocessSpec(modalities=tuple(mods[:5]), epoch_s=30.0)  # also drops SPO2
    lines = SPEC.mismatches(other)
    assert "EEG.band_hz: (0.3, 35.0) != (0.5, 40.0)" in lines
    assert "SPO2: present != missing" in lines
    assert len(lines) == 2


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"modalities": [{"modality": "EEG"}]}', '{"modalities": [], "x": 1}'],
)
def test_malformed_spec_json_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        PreprocessSpec.from_json(text)


def test_spec_rejects_inverted_band() -> None:
    with pytest.raises(ValueError, match="below"):
        ModalitySpec(Modality.EEG, 100.0, (40.0, 0.5))


# ---------------------------------------------------------------- amplitude check


def _eeg(scale: float, unit: str = "uV", modality: Modality = Modality.EEG) -> Channel:
    rng = np.random.default_rng(1)
    return Channel("C3-A2", modality, 100.0, unit, 20.0 * scale * rng.standard_normal(30_000))


def test_plausible_eeg_in_microvolts_passes_without_warning() -> None:
    assert check_amplitude(_eeg(1.0), "rec.edf") == []


def test_eeg_recorded_in_volts_is_an_error_naming_file_and_channel() -> None:
    with pytest.raises(DataError, match=r"rec\.edf: channel 'C3-A2'.*V or mV"):
        check_amplitude(_eeg(1e-6), "rec.edf")


def test_eeg_far_too_large_is_an_error() -> None:
    with pytest.raises(DataError, match="far too large"):
        check_amplitude(_eeg(1e3), "rec.edf")


def test_flat_and_non_finite_channels_are_errors() -> None:
    flat = Channel("EMG1", Modality.EMG, 100.0, "uV", np.full(1000, 3.0))
    with pytest.raises(DataError, match="flat"):
        check_amplitude(flat, "rec.edf")
    bad = _eeg(1.0)
    bad.data[10] = np.inf
    with pytest.raises(DataError, match="non-finite"):
        check_amplitude(bad, "rec.edf")


def test_suspicious_amplitude_and_unit_give_warnings() -> None:
    warnings = check_amplitude(_eeg(40.0, unit="mV"), "rec.edf")
    assert any("unit 'mV'" in w for w in warnings)
    assert any("outside the usual" in w for w in warnings)
    spo2 = Channel("SAO2", Modality.SPO2, 1.0, "%", np.linspace(0.9, 0.97, 600))
    assert any("fraction" in w for w in check_amplitude(spo2, "rec.edf"))

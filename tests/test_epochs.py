"""Recording -> model-input epochs: channel selection, EpochStream, real DREAMS / Sleep-EDF data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtsleep.data.channels import ChannelMap
from rtsleep.data.epochs import (
    ChannelSlot,
    EpochStream,
    epochs_from_recording,
    select_aux_channels,
    select_channels,
)
from rtsleep.data.errors import DataError
from rtsleep.data.preprocessing import ChannelPipeline, PreprocessSpec
from rtsleep.data.readers import read_recording
from rtsleep.data.recording import EXG_MODALITIES, Channel, Modality, Recording

SPEC = PreprocessSpec.default()


def _channel(label: str, modality: Modality, fs: float, seconds: float, seed: int) -> Channel:
    rng = np.random.default_rng(seed)
    unit = "%" if modality == Modality.SPO2 else "uV"
    base = 95.0 if modality == Modality.SPO2 else 0.0
    data = base + 20.0 * rng.standard_normal(int(fs * seconds))
    return Channel(label, modality, fs, unit, data)


def _rec(channels: list[Channel]) -> Recording:
    return Recording("r", "synthetic", "s", Path("synthetic.edf"), channels=channels)


@pytest.fixture(scope="module")
def excerpt3(shared_data: Path) -> Recording:
    return read_recording("dreams", shared_data / "dreams-spindles" / "excerpt3.edf")


def test_excerpt3_gives_60_epochs_with_all_exg_modalities(excerpt3: Recording) -> None:
    ea = epochs_from_recording(excerpt3, SPEC)
    assert ea.n_epochs == 60
    assert ea.x.shape == (60, 4, 3000) and ea.x.dtype == np.float32
    assert ea.mask.tolist() == [True, True, True, True]
    assert ea.channels[Modality.EEG] == ["C3-A1"]
    assert ea.channels[Modality.EOG] == ["EOG1-A1"]
    assert ea.channels[Modality.EMG] == ["EMG1"] and ea.channels[Modality.ECG] == ["ECG"]
    assert ea.channels[Modality.RESP][0] == "NAF1"  # airflow before the effort belts
    assert ea.aux[Modality.RESP].shape == (60, len(ea.channels[Modality.RESP]), 300)
    assert ea.aux[Modality.SPO2].shape == (60, 1, 300)
    assert np.isfinite(ea.x).all()
    assert (np.abs(ea.x).reshape(60, 4, -1).std(axis=2) > 0).all()  # every row carries signal


def test_epoch_by_epoch_equals_one_pass_over_the_whole_channel(excerpt3: Recording) -> None:
    ea = epochs_from_recording(excerpt3, SPEC)
    eeg = excerpt3.channel("C3-A1")
    whole = ChannelPipeline(SPEC.for_modality(Modality.EEG), eeg.sfreq).process(eeg.data)
    assert np.array_equal(ea.x[:, 0, :].reshape(-1), whole[: 60 * 3000])


def test_epoch_stream_state_restore_continues_bit_exactly(excerpt3: Recording) -> None:
    ea = epochs_from_recording(excerpt3, SPEC)
    chans = select_channels(excerpt3, SPEC)
    slots = [ChannelSlot(c.label, c.modality, c.sfreq) for c in chans.values()]
    slots = [s for s in slots if s.modality in EXG_MODALITIES]
    first = EpochStream(SPEC, slots)
    n = {s.label: first.samples_per_epoch[s.label] for s in slots}

    def raw(k: int) -> dict[str, np.ndarray]:
        return {
            s.label: excerpt3.channel(s.label).data[k * n[s.label] : (k + 1) * n[s.label]]
            for s in slots
        }

    for k in range(7):
        first.process_epoch(raw(k))
    saved = first.state_dict()
    second = EpochStream(SPEC, slots)
    second.load_state_dict(saved)
    out = second.process_epoch(raw(7))
    assert out.index == 7
    assert np.array_equal(out.x, ea.x[7])


def test_sleep_edf_excerpt_skips_the_1hz_emg_envelope(shared_data: Path) -> None:
    path = shared_data / "sleep-edf-sc-subset" / "psg-excerpt" / "short_psg.edf"
    ea = epochs_from_recording(read_recording("sleep-edf", path), SPEC)
    assert ea.n_epochs == 10
    assert ea.mask.tolist() == [True, True, False, False]  # no ECG; EMG only as a 1-Hz envelope
    assert ea.channels[Modality.EEG] == ["EEG Pz-Oz"]  # preferred to Fpz-Cz
    assert ea.aux[Modality.RESP].shape == (10, 1, 300)  # 1 Hz airflow brought to 10 Hz
    assert not ea.x[:, 2:].any()  # missing modalities are zeros under a False mask


def test_primary_channel_preference_and_left_eog_first() -> None:
    rec = _rec(
        [
            _channel("EEG Fpz-Cz", Modality.EEG, 100.0, 60, 0),
            _channel("C3-A1", Modality.EEG, 100.0, 60, 1),
            _channel("C4-A1", Modality.EEG, 100.0, 60, 2),
            _channel("EOG(R)", Modality.EOG, 100.0, 60, 3),
            _channel("EOG(L)", Modality.EOG, 100.0, 60, 4),
        ]
    )
    chosen = select_channels(rec, SPEC)
    assert chosen[Modality.EEG].label == "C4-A1"
    assert chosen[Modality.EOG].label == "EOG(L)"
    assert Modality.EMG not in chosen
    # A user override removes C4-A1 from the EEG candidates.
    remapped = select_channels(rec, SPEC, ChannelMap({"C4-A1": Modality.OTHER}))
    assert remapped[Modality.EEG].label == "C3-A1"


def test_aux_channels_put_airflow_before_effort() -> None:
    rec = _rec(
        [
            _channel("VTH", Modality.RESP, 50.0, 60, 0),
            _channel("NAF1", Modality.RESP, 50.0, 60, 1),
            _channel("SAO2", Modality.SPO2, 50.0, 60, 2),
        ]
    )
    aux = select_aux_channels(rec, SPEC)
    assert [c.label for c in aux[Modality.RESP]] == ["NAF1", "VTH"]
    assert [c.label for c in aux[Modality.SPO2]] == ["SAO2"]


def test_incomplete_last_epoch_is_dropped_and_mixed_rates_align() -> None:
    rec = _rec(
        [
            _channel("C3-A2", Modality.EEG, 256.0, 95, 0),
            _channel("ECG", Modality.ECG, 125.0, 100, 1),
            _channel("SpO2", Modality.SPO2, 1.0, 120, 2),
        ]
    )
    ea = epochs_from_recording(rec, SPEC)
    assert ea.n_epochs == 3
    assert ea.x.shape == (3, 4, 3000)
    assert ea.mask.tolist() == [True, False, False, True]
    assert ea.aux[Modality.SPO2].shape == (3, 1, 300)
    assert Modality.RESP not in ea.aux


def test_recording_in_volts_is_rejected_naming_the_file() -> None:
    eeg = _channel("C3-A2", Modality.EEG, 100.0, 60, 0)
    eeg.data = eeg.data * 1e-6
    with pytest.raises(DataError, match=r"synthetic\.edf: channel 'C3-A2'"):
        epochs_from_recording(_rec([eeg]), SPEC)


def test_recording_without_any_usable_channel_is_rejected() -> None:
    other = _channel("Temp rectal", Modality.OTHER, 1.0, 60, 0)
    with pytest.raises(DataError, match="no usable channel"):
        epochs_from_recording(_rec([other]), SPEC)


def test_an_eeg_too_slow_to_use_is_named_with_its_rate_and_the_minimum() -> None:
    slow = _channel("C3-A2", Modality.EEG, 10.0, 60, 0)
    with pytest.raises(DataError, match=r"C3-A2 \(EEG, 10 Hz\); ExG needs >= 50 Hz"):
        epochs_from_recording(_rec([slow]), SPEC)


def test_channel_not_starting_at_zero_is_rejected() -> None:
    eeg = _channel("C3-A2", Modality.EEG, 100.0, 60, 0)
    eeg.start_s = 2.0
    with pytest.raises(DataError, match="starts at 2.0 s"):
        epochs_from_recording(_rec([eeg]), SPEC)


def test_epoch_stream_rejects_wrong_lengths_without_advancing() -> None:
    stream = EpochStream(SPEC, [ChannelSlot("C3-A2", Modality.EEG, 200.0)])
    with pytest.raises(ValueError, match="expected \\(6000,\\)"):
        stream.process_epoch({"C3-A2": np.zeros(5999)})
    with pytest.raises(ValueError, match="no samples"):
        stream.process_epoch({})
    assert stream.n_epochs == 0
    out = stream.process_epoch({"C3-A2": np.zeros(6000)})
    assert out.index == 0 and out.mask.tolist() == [True, False, False, False]


def test_epoch_stream_rejects_two_channels_of_one_exg_modality() -> None:
    with pytest.raises(ValueError, match="two EEG channels"):
        EpochStream(
            SPEC,
            [ChannelSlot("C3-A2", Modality.EEG, 200.0), ChannelSlot("C4-A1", Modality.EEG, 200.0)],
        )

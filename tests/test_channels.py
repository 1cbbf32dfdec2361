"""Channel alias table, user overrides, ExG units, required modalities, primary channels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from rtsleep.data.channels import (
    BIPOLAR,
    REFERENTIAL,
    ChannelMap,
    default_modality,
    eeg_derivation,
    primary_channel,
    rank_channels,
    require_modalities,
    to_microvolts,
    unit_scale_to_uv,
)
from rtsleep.data.errors import DataError
from rtsleep.data.recording import Channel, Modality, Recording

M = Modality

REAL_LABELS = {
    "EEG Fpz-Cz": M.EEG, "EEG Pz-Oz": M.EEG, "C3-A2": M.EEG, "C3-A1": M.EEG, "CZ-A1": M.EEG,
    "O1-A1": M.EEG, "FP1-A1": M.EEG, "EEG(sec)": M.EEG, "EEG": M.EEG, "EEG C3": M.EEG,
    "EOG(L)": M.EOG, "EOG1-A1": M.EOG, "EOG horizontal": M.EOG, "EOG EOG1": M.EOG, "LOC": M.EOG,
    "ROC": M.EOG, "EMG submental": M.EMG, "EMG1": M.EMG, "EMG EMG1": M.EMG, "ECG": M.ECG,
    "NAF1": M.RESP, "AIRFLOW": M.RESP, "NEW AIR": M.RESP, "Resp oro-nasal": M.RESP, "VAB": M.RESP,
    "VTH": M.RESP, "THOR RES": M.RESP, "ABDO RES": M.RESP, "SAO2": M.SPO2, "SpO2": M.SPO2,
    "SO2": M.SPO2, "C3A2": M.EEG, "C4A1": M.EEG, "Lefteye": M.EOG, "RightEye": M.EOG,
    "ribcage": M.RESP, "abdo": M.RESP, "Flow": M.RESP,
}


@pytest.mark.parametrize(("label", "modality"), sorted(REAL_LABELS.items()))
def test_real_channel_labels_map_to_their_modality(label: str, modality: Modality) -> None:
    assert ChannelMap().resolve(label) == modality


def test_matching_ignores_case_and_spaces() -> None:
    assert default_modality("eeg fpz-cz") == M.EEG
    assert default_modality("  Emg  Submental ") == M.EMG
    assert default_modality("new air") == M.RESP
    assert default_modality("sao 2") == M.SPO2


def test_unknown_labels_are_other() -> None:
    for label in ("Temp rectal", "Event marker", "PHONO", "POS", "xyz", "hypnogram"):
        assert default_modality(label) == M.OTHER


def test_user_override_beats_the_default_table() -> None:
    cmap = ChannelMap({"eeg (sec)": M.OTHER, "Foo 1": M.EOG})
    assert cmap.resolve("EEG(sec)") == M.OTHER
    assert cmap.resolve("FOO1") == M.EOG
    assert cmap.resolve("EEG") == M.EEG


def test_channel_map_from_dict_round_trips_and_rejects_bad_names() -> None:
    cmap = ChannelMap.from_dict({"X1": "eog", "X2": "RESP"})
    assert cmap.resolve("x1") == M.EOG
    assert ChannelMap.from_dict(cmap.to_dict()).resolve("X2") == M.RESP
    with pytest.raises(ValueError, match="not a modality"):
        ChannelMap.from_dict({"X1": "brainwaves"})
    with pytest.raises(TypeError):
        ChannelMap({"X1": "EEG"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("unit", "scale"),
    [("uV", 1.0), ("µV", 1.0), ("\u03bcV", 1.0), ("UV", 1.0), ("mV", 1e3), ("MV", 1e3),
     ("V", 1e6), ("nV", 1e-3)],
)
def test_exg_units_convert_to_microvolts(unit: str, scale: float) -> None:
    assert unit_scale_to_uv(unit) == scale
    data, out_unit, applied = to_microvolts(np.array([1.0, -2.0]), unit, source="f.edf", label="C3")
    np.testing.assert_array_equal(data, np.array([1.0, -2.0]) * scale)
    assert out_unit == "uV" and applied == scale


def test_unknown_exg_unit_warns_and_keeps_values(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        data, unit, scale = to_microvolts(np.array([3.0]), "furlong", source="x.edf", label="C3")
    assert unit == "furlong" and scale == 1.0 and data[0] == 3.0
    assert "x.edf" in caplog.text and "C3" in caplog.text and "unknown unit" in caplog.text


def _ch(label: str, modality: Modality, data: np.ndarray | None = None, sfreq: float = 100.0
        ) -> Channel:
    if data is None:
        data = np.random.default_rng(0).normal(size=300)
    return Channel(label=label, modality=modality, sfreq=sfreq, unit="uV", data=data)


def _rec(*channels: Channel) -> Recording:
    return Recording(id="r", dataset="edf", subject="s", source=Path("night.edf"),
                     channels=list(channels))


def test_require_modalities_names_file_missing_modality_and_channels() -> None:
    rec = _rec(_ch("C3-A2", M.EEG), _ch("LOC", M.EOG))
    require_modalities(rec, [M.EEG, M.EOG])
    with pytest.raises(DataError) as err:
        require_modalities(rec, [M.EEG, M.EMG])
    msg = str(err.value)
    assert msg.startswith("night.edf:") and "EMG" in msg and "C3-A2" in msg and "LOC" in msg
    assert "\n" not in msg


def test_flat_required_channel_counts_as_missing() -> None:
    rec = _rec(_ch("C3-A2", M.EEG, np.zeros(300)), _ch("LOC", M.EOG))
    with pytest.raises(DataError, match="flat"):
        require_modalities(rec, [M.EEG])


def test_primary_channel_follows_preference_then_file_order() -> None:
    rec = _rec(_ch("EEG Fpz-Cz", M.EEG), _ch("C3-A2", M.EEG), _ch("C4-A1", M.EEG),
               _ch("ROC", M.EOG), _ch("LOC", M.EOG), _ch("F3-M2", M.EEG))
    assert [c.label for c in rank_channels(rec.channels, M.EEG)] == [
        "C4-A1", "C3-A2", "EEG Fpz-Cz", "F3-M2"]
    eog = primary_channel(rec, M.EOG)
    assert eog is not None and eog.label == "LOC"
    # Sleep-EDF: Pz-Oz, which the bipolar members score better, wins over Fpz-Cz before it
    sedf = _rec(_ch("EEG Fpz-Cz", M.EEG), _ch("EEG Pz-Oz", M.EEG))
    assert [c.label for c in rank_channels(sedf.channels, M.EEG)] == ["EEG Pz-Oz", "EEG Fpz-Cz"]
    assert primary_channel(rec, M.ECG) is None


def test_primary_eeg_is_ranked_by_the_derivation_a_prefixed_label_names() -> None:
    # HMC/MASS-style "EEG C4-M1" was not in the table ("EEG"-prefixed): file order picked F4-M1
    hmc = _rec(_ch("EEG F4-M1", M.EEG), _ch("EEG C3-M2", M.EEG), _ch("EEG C4-M1", M.EEG),
               _ch("EEG O2-M1", M.EEG))
    assert [c.label for c in rank_channels(hmc.channels, M.EEG)] == [
        "EEG C4-M1", "EEG C3-M2", "EEG F4-M1", "EEG O2-M1"]
    tuh = _rec(_ch("EEG FP1-REF", M.EEG), _ch("EEG F3-REF", M.EEG), _ch("EEG C3-REF", M.EEG),
               _ch("EEG C4-REF", M.EEG))
    assert [c.label for c in rank_channels(tuh.channels, M.EEG)][:2] == [
        "EEG C4-REF", "EEG C3-REF"]  # ranked as the bare electrodes C4, C3
    ucddb = _rec(_ch("C3A2", M.EEG), _ch("C4A1", M.EEG))
    assert [c.label for c in rank_channels(ucddb.channels, M.EEG)] == ["C4A1", "C3A2"]
    # the shared data's choices do not move: DREAMS excerpt3 and Sleep-EDF
    dreams = _rec(_ch("O1-A1", M.EEG), _ch("C3-A1", M.EEG), _ch("FP1-A1", M.EEG))
    assert [c.label for c in rank_channels(dreams.channels, M.EEG)][0] == "C3-A1"
    sedf = _rec(_ch("EEG Fpz-Cz", M.EEG), _ch("EEG Pz-Oz", M.EEG), _ch("Fpz-Cz", M.EEG))
    assert [c.label for c in rank_channels(sedf.channels, M.EEG)] == [
        "EEG Pz-Oz", "EEG Fpz-Cz", "Fpz-Cz"]


def test_primary_channel_skips_flat_and_slow_exg_channels() -> None:
    rec = _rec(_ch("EMG submental", M.EMG, sfreq=1.0), _ch("C4-A1", M.EEG, np.ones(300)),
               _ch("C3-A2", M.EEG))
    assert primary_channel(rec, M.EMG) is None
    eeg = primary_channel(rec, M.EEG)
    assert eeg is not None and eeg.label == "C3-A2"


@pytest.mark.parametrize(("label", "kind"), [
    ("EEG Fpz-Cz", BIPOLAR), ("EEG Pz-Oz", BIPOLAR), ("Fp1-F7", BIPOLAR),
    ("C3-A1", REFERENTIAL), ("CZ-A1", REFERENTIAL), ("EEG C3-A2", REFERENTIAL),
    ("C4-M1", REFERENTIAL), ("O1-A2", REFERENTIAL), ("C3A2", REFERENTIAL),
    # linked ears or mastoids, and ':' or '/' between the electrodes
    ("C3-A1A2", REFERENTIAL), ("C4-M1+M2", REFERENTIAL), ("C3-(A1+A2)/2", REFERENTIAL),
    ("C3:A2", REFERENTIAL), ("EEG F4/M1", REFERENTIAL), ("Fp1/F3", BIPOLAR),
    ("EEG", None), ("EEG(sec)", None), ("C3", None), ("C3-AVG", None), ("EOG1-A1", None),
])
def test_eeg_labels_name_their_derivation_kind(label: str, kind: str | None) -> None:
    """Referential (ear or mastoid reference) against bipolar (two scalp electrodes); a label
    that does not say gives None. Every one of these is an EEG channel."""
    assert eeg_derivation(label) == kind
    if label != "EOG1-A1":
        assert default_modality(label) == Modality.EEG

"""DREAMS reader: excerpts, 5-s -> 30-s majority vote with its tie rule, excerpt3.edf events."""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter
from pathlib import Path

import edfio
import numpy as np
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.labels import stage_counts
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.dreams import majority_stages, read_dreams_hypnogram
from rtsleep.data.recording import EventType, Modality, Recording, Stage

EXPECTED = {  # 30-s epochs after the vote (excerpt1 is issue 2's "must show")
    "excerpt1": {"W": 10, "N1": 1, "N2": 36, "N3": 13, "REM": 0},
    "excerpt2": {"W": 0, "N1": 4, "N2": 32, "N3": 24, "REM": 0},
    "excerpt3": {"W": 6, "N1": 12, "N2": 39, "N3": 3, "REM": 0},
    "excerpt5": {"W": 6, "N1": 2, "N2": 35, "N3": 17, "REM": 0},
    "excerpt7": {"W": 1, "N1": 6, "N2": 38, "N3": 10, "REM": 5},
    "excerpt8": {"W": 11, "N1": 5, "N2": 44, "N3": 0, "REM": 0},
}
RATES = {"excerpt1": 100.0, "excerpt2": 200.0, "excerpt5": 200.0, "excerpt7": 200.0,
         "excerpt8": 200.0}


@pytest.fixture(scope="module")
def dreams(shared_data: Path) -> Path:
    return shared_data / "dreams-spindles"


@pytest.fixture(scope="module")
def recordings(dreams: Path) -> dict[str, Recording]:
    return {r.id: r for r in (read_recording("dreams", s) for s in list_sources("dreams", dreams))}


def test_sources_prefer_the_edf_for_excerpt3(dreams: Path) -> None:
    names = [p.name for p in list_sources("dreams", dreams)]
    assert names == ["excerpt1.txt", "excerpt2.txt", "excerpt3.edf", "excerpt5.txt",
                     "excerpt7.txt", "excerpt8.txt"]


def test_every_excerpt_has_60_epochs_with_the_expected_stages(
    recordings: dict[str, Recording],
) -> None:
    assert set(recordings) == set(EXPECTED)
    for name, want in EXPECTED.items():
        rec = recordings[name]
        assert rec.n_epochs == 60, name
        counts = stage_counts(rec.stages)
        assert {k: counts[k] for k in want} == want, name
        assert counts["UNSCORED"] == 0


def test_txt_excerpts_have_one_eeg_channel_at_the_rate_from_the_sample_count(
    recordings: dict[str, Recording],
) -> None:
    for name, rate in RATES.items():
        (ch,) = recordings[name].channels
        assert ch.modality == Modality.EEG and ch.sfreq == rate and ch.unit == "uV"
        assert ch.duration_s == 1800.0
    assert recordings["excerpt1"].channels[0].label == "C3-A1"


def test_excerpt3_edf_keeps_all_channels_and_turns_event_pneumo_into_events(
    recordings: dict[str, Recording],
) -> None:
    rec = recordings["excerpt3"]
    by_mod = Counter(c.modality for c in rec.channels)
    assert by_mod[Modality.EEG] == 3 and by_mod[Modality.EOG] == 2 and by_mod[Modality.EMG] == 1
    assert by_mod[Modality.ECG] == 1 and by_mod[Modality.RESP] == 3 and by_mod[Modality.SPO2] == 1
    assert rec.channel("event_pneumo").modality == Modality.OTHER
    assert all(e.type == EventType.APNEA_HYPOPNEA for e in rec.events)
    codes = Counter(e.label for e in rec.events)
    assert codes == {"event_pneumo=10": 35, "event_pneumo=3": 3, "event_pneumo=1": 1}
    seconds: Counter[str] = Counter()
    for e in rec.events:
        seconds[e.label] += e.duration_s
    assert seconds == {"event_pneumo=10": 772, "event_pneumo=3": 79, "event_pneumo=1": 14}
    ecg = rec.channel("ECG")
    assert ecg.unit == "uV" and np.percentile(np.abs(ecg.data), 99) < 1000


def test_excerpt3_edf_and_txt_give_the_same_stages(
    dreams: Path, recordings: dict[str, Recording]
) -> None:
    from_txt = read_recording("dreams", dreams / "excerpt3.txt")
    np.testing.assert_array_equal(from_txt.stages, recordings["excerpt3"].stages)


def test_majority_vote_tie_goes_to_the_stage_the_epoch_starts_in() -> None:
    w, n1, n2, n3 = int(Stage.W), int(Stage.N1), int(Stage.N2), int(Stage.N3)
    codes = np.array([n2, n2, n2, w, w, w,      # 3-3 tie, N2 first
                      w, n1, n1, n2, n2, n3,    # 2-2 tie, N1 first
                      n3, n3, n3, n3, n2, n2])  # clear majority
    np.testing.assert_array_equal(majority_stages(codes, 6, "h.txt"), [n2, n1, n3])


def test_s3_and_s4_vote_together_as_n3(tmp_path: Path) -> None:
    hyp = tmp_path / "Hypnogram_excerpt9.txt"
    hyp.write_text("[Hypnogram]\n" + "\n".join(["1", "0", "0", "5", "5", "1"] * 60) + "\n")
    stages = read_dreams_hypnogram(hyp)
    assert set(stages.tolist()) == {int(Stage.N3)}


def test_movement_and_unknown_codes_are_unscored_and_left_out_of_training_targets(
    dreams: Path, tmp_path: Path
) -> None:
    from offline.stage_data import load_raw, shifted_grids, stage_fractions
    from rtsleep.data.preprocessing import PreprocessSpec

    u, n2, w = int(Stage.UNSCORED), int(Stage.N2), int(Stage.W)
    codes = (["-1"] * 6                              # movement time: unscored
             + ["2", "2", "2", "2", "-2", "-3"]      # unknown steps outvoted: N2
             + ["-3", "-3", "-3", "-3", "5", "5"]    # mostly unknown: unscored
             + ["5"] * 6 * 57)
    shutil.copy(dreams / "excerpt1.txt", tmp_path / "excerpt1.txt")
    (tmp_path / "Hypnogram_excerpt1.txt").write_text("[Hypnogram]\n" + "\n".join(codes) + "\n")
    rec = read_recording("dreams", tmp_path / "excerpt1.txt")
    assert rec.stages is not None
    np.testing.assert_array_equal(rec.stages[:4], [u, n2, u, w])
    (stage_rec,) = load_raw("dreams", tmp_path, PreprocessSpec.default())
    np.testing.assert_array_equal(stage_rec.stages[:4], [u, n2, u, w])
    q = stage_fractions(stage_rec)
    assert q is not None
    np.testing.assert_allclose(q[0], 0.0)      # no scored step: no soft target
    np.testing.assert_allclose(q[1, n2], 1.0)  # the unknown steps carry no weight
    first_shift = shifted_grids(stage_rec)[0]  # starts 5 s in: five -1 and one N2 step
    assert first_shift.stages[0] == u


def test_hypnogram_that_does_not_match_the_excerpt_is_an_error(tmp_path: Path) -> None:
    hyp = tmp_path / "Hypnogram_excerpt9.txt"
    hyp.write_text("[Hypnogram]\n" + "2\n" * 400)
    with pytest.raises(DataError, match="400 5-s epochs"):
        read_dreams_hypnogram(hyp)
    hyp.write_text("[Hypnogram]\n" + "7\n" * 360)
    with pytest.raises(DataError, match="unknown DREAMS stage codes \\[7\\]"):
        read_dreams_hypnogram(hyp)


def test_bad_excerpt_text_is_an_error(tmp_path: Path) -> None:
    sig = tmp_path / "excerpt9.txt"
    sig.write_text("[C3-A1]\n" + "1.0\n2.0\n" * 500)
    with pytest.raises(DataError, match="not a whole rate"):
        read_recording("dreams", sig)
    sig.write_text("[C3-A1]\n" + "1.0\n" * 90000)
    with pytest.raises(DataError, match="flat"):
        read_recording("dreams", sig)
    sig.write_text("[C3-A1]\n" + "nan\n" * 90000)
    with pytest.raises(DataError, match="non-finite"):
        read_recording("dreams", sig)
    sig.write_text("[C3-A1]\n1.0\nabc\n")
    with pytest.raises(DataError, match="non-numeric"):
        read_recording("dreams", sig)


def _edf_of_excerpt1(dreams: Path, out: Path) -> Path:
    """excerpt1's real C3-A1 signal written as an EDF without a ``hypnogram`` channel, like the
    100/200-Hz excerpt EDFs of the DREAMS distribution may be."""
    lines = (dreams / "excerpt1.txt").read_text().split()
    data = np.array(lines[1:], dtype=np.float64)
    lim = float(np.ceil(np.abs(data).max()))
    sig = edfio.EdfSignal(data, 100.0, label="C3-A1", physical_dimension="uV",
                          physical_range=(-lim, lim))
    edf = edfio.Edf([sig], recording=edfio.Recording(startdate=dt.date(2024, 1, 2)),
                    starttime=dt.time(0, 0), data_record_duration=1.0)
    path = out / "excerpt1.edf"
    edf.write(path)
    return path


def test_edf_excerpt_without_hypnogram_channel_takes_the_text_hypnogram(
    dreams: Path, recordings: dict[str, Recording], tmp_path: Path
) -> None:
    from rtsleep.data.readers.dreams import dreams_fine_stages

    edf = _edf_of_excerpt1(dreams, tmp_path)
    rec = read_recording("dreams", edf)
    assert rec.stages is None  # no hypnogram anywhere: a recording without stages, no error
    shutil.copy(dreams / "Hypnogram_excerpt1.txt", tmp_path)
    rec = read_recording("dreams", edf)
    assert [p.name for p in list_sources("dreams", tmp_path)] == ["excerpt1.edf"]
    np.testing.assert_array_equal(rec.stages, recordings["excerpt1"].stages)
    fine, step = dreams_fine_stages(rec)
    assert step == 5.0 and len(fine) == 360
    assert rec.events == []


def test_hypnogram_is_found_whatever_the_letter_case_of_its_name(
    dreams: Path, recordings: dict[str, Recording], tmp_path: Path
) -> None:
    from rtsleep.data.readers.dreams import dreams_fine_stages

    shutil.copy(dreams / "excerpt2.txt", tmp_path / "Excerpt4.TXT")
    shutil.copy(dreams / "Hypnogram_excerpt2.txt", tmp_path / "hypnogram_EXCERPT4.txt")
    shutil.copy(dreams / "Hypnogram_excerpt5.txt", tmp_path / "Hypnogram_excerpt14.txt")
    (source,) = list_sources("dreams", tmp_path)
    rec = read_recording("dreams", source)
    assert rec.id == "excerpt4"
    np.testing.assert_array_equal(rec.stages, recordings["excerpt2"].stages)
    fine, step = dreams_fine_stages(rec)
    assert step == 5.0 and len(fine) == 360


def test_an_excerpt_number_in_two_folders_is_read_once_and_the_other_named(
    dreams: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for sub, n in (("a", 2), ("b", 5)):
        (tmp_path / sub).mkdir()
        shutil.copy(dreams / f"excerpt{n}.txt", tmp_path / sub / "excerpt4.txt")
        shutil.copy(dreams / f"Hypnogram_excerpt{n}.txt", tmp_path / sub / "Hypnogram_excerpt4.txt")
    with caplog.at_level("WARNING"):
        sources = list_sources("dreams", tmp_path)
    assert sources == [tmp_path / "a" / "excerpt4.txt"]
    assert str(tmp_path / "b" / "excerpt4.txt") in caplog.text

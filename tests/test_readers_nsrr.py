"""NSRR/SHHS reader: the hand-written XML fixture, EDF pairing, label-only XML, bad input."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import edfio
import numpy as np
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.labels import event_epoch_flags
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.nsrr import parse_nsrr_xml
from rtsleep.data.recording import EventType, Modality

XML = Path(__file__).parent / "fixtures" / "shhs1-200001-nsrr.xml"
SHHS_CHANNELS = [("EEG(sec)", 125.0, "uV"), ("ECG", 125.0, "mV"), ("EMG", 125.0, "uV"),
                 ("EOG(L)", 50.0, "uV"), ("EOG(R)", 50.0, "uV"), ("EEG", 125.0, "uV"),
                 ("SaO2", 1.0, "%"), ("THOR RES", 10.0, ""), ("ABDO RES", 10.0, ""),
                 ("NEW AIR", 10.0, ""), ("H.R.", 1.0, "bpm"), ("POSITION", 1.0, "")]


def _shhs_edf(path: Path, seconds: int = 300) -> Path:
    rng = np.random.default_rng(0)
    signals = []
    for label, fs, unit in SHHS_CHANNELS:
        lim = 5.0 if unit == "mV" else 500.0
        data = rng.normal(0, lim / 10, int(fs * seconds))
        signals.append(edfio.EdfSignal(data, fs, label=label, physical_dimension=unit,
                                       physical_range=(-lim, lim)))
    edf = edfio.Edf(signals, recording=edfio.Recording(startdate=dt.date(1995, 1, 1)),
                    starttime=dt.time(22, 0, 0), data_record_duration=1.0)
    edf.write(path)
    return path


def test_xml_fixture_parses_stages_and_events() -> None:
    annotations, length = parse_nsrr_xml(XML)
    assert length == 300.0 and len(annotations) == 14
    rec = read_recording("shhs", XML)
    assert rec.id == "shhs1-200001" and rec.subject == "200001" and rec.channels == []
    np.testing.assert_array_equal(rec.stages, [0, 0, 1, 2, 2, 3, 3, 4, 4, -1])  # type: ignore[arg-type]
    got = sorted((e.onset_s, e.type) for e in rec.events)
    assert got == [
        (95.5, EventType.APNEA_OBSTRUCTIVE), (108.0, EventType.AROUSAL),
        (115.0, EventType.HYPOPNEA), (128.0, EventType.DESATURATION),
        (220.0, EventType.APNEA_CENTRAL),
    ]


def test_edf_pairs_with_its_xml_in_the_nsrr_layout(tmp_path: Path) -> None:
    edfs = tmp_path / "polysomnography" / "edfs" / "shhs1"
    xmls = tmp_path / "polysomnography" / "annotations-events-nsrr" / "shhs1"
    edfs.mkdir(parents=True)
    xmls.mkdir(parents=True)
    edf = _shhs_edf(edfs / "shhs1-200001.edf")
    shutil.copy(XML, xmls / XML.name)
    assert list_sources("shhs", tmp_path) == [edf]
    rec = read_recording("shhs", edf)
    assert rec.dataset == "shhs" and rec.subject == "200001" and rec.n_epochs == 10
    mods = {c.label: c.modality for c in rec.channels}
    assert mods["EEG"] == mods["EEG(sec)"] == Modality.EEG
    assert mods["EOG(L)"] == Modality.EOG and mods["EMG"] == Modality.EMG
    assert mods["NEW AIR"] == Modality.RESP and mods["SaO2"] == Modality.SPO2
    assert rec.channel("ECG").unit == "uV"
    assert rec.stages is not None and rec.stages[5] == 3
    apnea = event_epoch_flags(rec.events, rec.n_epochs, [EventType.APNEA_OBSTRUCTIVE])
    np.testing.assert_array_equal(np.flatnonzero(apnea), [3])


def test_xml_longer_than_the_edf_is_an_error(tmp_path: Path) -> None:
    edf = _shhs_edf(tmp_path / "shhs1-200001.edf", seconds=120)
    shutil.copy(XML, tmp_path / XML.name)
    with pytest.raises(DataError, match="recording has 4 epochs"):
        read_recording("shhs", edf)


def test_malformed_or_foreign_xml_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "shhs1-1-nsrr.xml"
    bad.write_text("<PSGAnnotation><ScoredEvents>")
    with pytest.raises(DataError, match="malformed XML"):
        read_recording("shhs", bad)
    bad.write_text("<CMPStudyConfig/>")
    with pytest.raises(DataError, match="expected <PSGAnnotation>"):
        read_recording("shhs", bad)
    bad.write_text(XML.read_text().replace("<Start>60.0</Start>", "<Start>sixty</Start>"))
    with pytest.raises(DataError, match="not numbers"):
        read_recording("shhs", bad)
    bad.write_text(XML.read_text().replace("REM sleep|5", "Stage 7 sleep|7"))
    with pytest.raises(DataError, match="unknown stage concept"):
        read_recording("shhs", bad)

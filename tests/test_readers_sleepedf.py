"""Sleep-EDF reader: hypnogram counts against SOURCES.md, pairing, overrun rule."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import edfio
import numpy as np
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.labels import annotation_epoch_counts, stage_counts
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.sleepedf import find_hypnogram, read_hypnogram_annotations, read_sleepedf

SOURCES_COUNTS = {
    "Sleep stage W": 30588, "Sleep stage 1": 1482, "Sleep stage 2": 7263,
    "Sleep stage 3": 1268, "Sleep stage 4": 897, "Sleep stage R": 2805,
    "Sleep stage ?": 1768, "Movement time": 9,
}


@pytest.fixture(scope="module")
def sleepedf(shared_data: Path) -> Path:
    return shared_data / "sleep-edf-sc-subset"


def test_sources_are_the_excerpt_and_16_label_only_hypnograms(sleepedf: Path) -> None:
    sources = list_sources("sleep-edf", sleepedf)
    names = [p.name for p in sources]
    assert len(sources) == 17 and "short_psg.edf" in names
    assert sum(n.endswith("-Hypnogram.edf") for n in names) == 16
    assert sources == sorted(sources)


def test_label_only_hypnograms_match_sources_md_counts(sleepedf: Path) -> None:
    hyps = sorted((sleepedf / "hypnograms").glob("*-Hypnogram.edf"))
    raw: Counter[str] = Counter()
    merged: Counter[str] = Counter()
    for h in hyps:
        raw.update(annotation_epoch_counts(read_hypnogram_annotations(h)))
        rec = read_recording("sleep-edf", h)
        assert rec.channels == [] and rec.stages is not None
        assert rec.n_epochs * 30.0 == rec.duration_s
        merged.update(stage_counts(rec.stages))
    assert dict(raw) == SOURCES_COUNTS
    assert merged["W"] == 30588 and merged["N1"] == 1482 and merged["N2"] == 7263
    assert merged["N3"] == 1268 + 897 and merged["REM"] == 2805
    assert merged["UNSCORED"] == 1768 + 9


def test_label_only_ids_and_subjects(sleepedf: Path) -> None:
    rec = read_recording("sleep-edf", sleepedf / "hypnograms" / "SC4012EC-Hypnogram.edf")
    assert (rec.id, rec.subject, rec.dataset) == ("SC4012E0", "SC401", "sleep-edf")


def test_excerpt_pairs_by_header_and_is_cropped_to_its_10_w_epochs(sleepedf: Path) -> None:
    psg = sleepedf / "psg-excerpt" / "short_psg.edf"
    hyp, how = find_hypnogram(psg)
    assert hyp is not None and hyp.name == "SC4001EC-Hypnogram.edf" and how == "header"
    rec = read_recording("sleep-edf", psg)
    assert rec.n_epochs == 10 and rec.subject == "SC400"
    assert stage_counts(rec.stages)["W"] == 10  # type: ignore[arg-type]
    assert len(rec.channels) == 7


DATE = dt.date(1989, 4, 24)


def _psg(path: Path, seconds: int) -> Path:
    rng = np.random.default_rng(0)
    sig = edfio.EdfSignal(rng.normal(0, 20, 100 * seconds), 100.0, label="EEG Fpz-Cz",
                          physical_dimension="uV", physical_range=(-500.0, 500.0))
    edfio.Edf([sig], starttime=dt.time(16, 13), recording=edfio.Recording(startdate=DATE),
              data_record_duration=30.0).write(path)
    return path


def _hypnogram(path: Path, annotations: list[tuple[float, float, str]],
               start: dt.time = dt.time(16, 13)) -> Path:
    edf = edfio.Edf([], starttime=start, recording=edfio.Recording(startdate=DATE),
                    annotations=[edfio.EdfAnnotation(o, d, t) for o, d, t in annotations])
    edf.write(path)
    return path


@pytest.mark.parametrize(("psg_name", "hyp_name"), [
    ("SC4991E0-PSG.edf", "SC4991EC-Hypnogram.edf"),
    ("sc4991e0-psg.edf", "SC4991EC-hypnogram.edf"),  # pairs by name whatever the letter case
])
def test_name_pairing_and_trailing_unscored_overrun_is_dropped(
        tmp_path: Path, psg_name: str, hyp_name: str) -> None:
    psg = _psg(tmp_path / psg_name, 300)
    _hypnogram(tmp_path / hyp_name, [
        (0.0, 120.0, "Sleep stage W"), (120.0, 180.0, "Sleep stage 2"),
        (300.0, 3000.0, "Sleep stage ?"),
    ])
    assert [p.name for p in list_sources("sleep-edf", tmp_path)] == [psg_name]
    rec = read_sleepedf(psg)
    assert rec.id == "SC4991E0" and rec.subject == "SC499"
    np.testing.assert_array_equal(rec.stages, [0] * 4 + [2] * 6)  # type: ignore[arg-type]


def test_a_hypnogram_that_starts_after_its_psg_is_put_on_the_psg_clock(tmp_path: Path) -> None:
    # EDF+ onsets count from the hypnogram's own start, here 60 s after the PSG's
    psg = _psg(tmp_path / "SC4991E0-PSG.edf", 300)
    _hypnogram(tmp_path / "SC4991EC-Hypnogram.edf", [
        (0.0, 60.0, "Sleep stage W"), (60.0, 180.0, "Sleep stage 2"),
    ], start=dt.time(16, 14))
    rec = read_sleepedf(psg)
    np.testing.assert_array_equal(rec.stages, [-1] * 2 + [0] * 2 + [2] * 6)  # type: ignore[arg-type]
    # one that starts 30 s before: its first 30 s fall before the recording and are dropped
    _hypnogram(tmp_path / "SC4991EC-Hypnogram.edf", [
        (0.0, 60.0, "Sleep stage W"), (60.0, 270.0, "Sleep stage 2"),
    ], start=dt.time(16, 12, 30))
    np.testing.assert_array_equal(read_sleepedf(psg).stages, [0] + [2] * 9)  # type: ignore[arg-type]


def test_scored_stage_past_the_psg_end_is_an_error(tmp_path: Path) -> None:
    psg = _psg(tmp_path / "SC4991E0-PSG.edf", 300)
    hyp = _hypnogram(tmp_path / "SC4991EC-Hypnogram.edf", [
        (0.0, 120.0, "Sleep stage W"), (120.0, 600.0, "Sleep stage 2"),
    ])
    with pytest.raises(DataError) as err:
        read_sleepedf(psg)
    assert str(err.value).startswith(str(hyp)) and "recording has 10 epochs" in str(err.value)


def test_hypnogram_without_stages_is_an_error(tmp_path: Path) -> None:
    hyp = _hypnogram(tmp_path / "SC4991EC-Hypnogram.edf", [(0.0, 30.0, "Lights off")])
    with pytest.raises(DataError, match="no sleep stage annotations"):
        read_recording("sleep-edf", hyp)


def test_explicit_pairing_follows_the_overrun_rule_unless_cropping(sleepedf: Path) -> None:
    psg = sleepedf / "psg-excerpt" / "short_psg.edf"
    hyp = sleepedf / "hypnograms" / "SC4001EC-Hypnogram.edf"
    with pytest.raises(DataError, match="recording has 10 epochs"):
        read_sleepedf(psg, hypnogram=hyp)
    rec = read_sleepedf(psg, hypnogram=hyp, crop=True)
    assert rec.n_epochs == 10 and rec.subject == "SC400"


def test_pairing_ignores_the_case_of_file_names(sleepedf: Path, tmp_path: Path) -> None:
    # a hypnogram named in another case pairs by header (the real excerpt)
    (tmp_path / "psg").mkdir()
    psg = tmp_path / "psg" / "short_psg.edf"
    psg.write_bytes((sleepedf / "psg-excerpt" / "short_psg.edf").read_bytes())
    (tmp_path / "SC4001EC-HYPNOGRAM.EDF").write_bytes(
        (sleepedf / "hypnograms" / "SC4001EC-Hypnogram.edf").read_bytes())
    rec = read_recording("sleep-edf", psg)
    assert rec.stages is not None and stage_counts(rec.stages)["W"] == 10
    # (by name in any case: test_name_pairing_and_trailing_unscored_overrun_is_dropped)

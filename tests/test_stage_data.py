"""Shifted 30-s epoch grids for fine-tuning: same preprocessed signal, labels = the reader's
majority vote of the fine (5-s) stages each shifted epoch covers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline.stage_data import StageRecording, load_raw, shifted_grids, stage_fractions
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.readers.dreams import dreams_fine_stages, majority_stages
from rtsleep.data.recording import Stage


def _rec(n: int = 4, seed: int = 0) -> StageRecording:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 3000)).astype(np.float32)
    fine = rng.integers(0, 5, 6 * n).astype(np.int8)
    return StageRecording("r", "s", "dreams", x, np.array([1, 0, 0, 0], bool),
                          majority_stages(fine, 6, "r").astype(np.int64), fine, 5.0)


def test_shifted_grids_cut_the_continuous_signal_and_vote_over_the_covered_5s_stages() -> None:
    rec = _rec()
    grids = shifted_grids(rec, 5.0)
    assert [g.id for g in grids] == ["r@5s", "r@10s", "r@15s", "r@20s", "r@25s"]
    flat = rec.x.transpose(1, 0, 2).reshape(4, -1)  # (M, n * 3000)
    for k, g in enumerate(grids, start=1):
        assert g.subject == "s" and g.n_epochs == 3 and g.fine_step_s == 5.0
        # each grid carries the fine stages it covers, from its own start
        np.testing.assert_array_equal(g.fine_stages,  # type: ignore[arg-type]
                                      rec.fine_stages[k : k + 18])  # type: ignore[index]
        for e in range(3):
            np.testing.assert_array_equal(g.x[e], flat[:, 500 * k + 3000 * e:][:, :3000])
            codes = rec.fine_stages[k + 6 * e : k + 6 * e + 6].tolist()  # type: ignore[index]
            top = max(codes.count(c) for c in codes)
            assert g.stages[e] == next(c for c in codes if codes.count(c) == top)


def test_shifted_grids_tie_rule_and_step_checks() -> None:
    w, n1 = int(Stage.W), int(Stage.N1)
    rec = _rec(n=2)
    rec.fine_stages = np.array([w] * 6 + [n1] * 6, dtype=np.int8)
    # shift 15 s: three W then three N1 -> tie, the stage the epoch starts in (W) wins
    assert [int(g.stages[0]) for g in shifted_grids(rec, 5.0)] == [w, w, w, n1, n1]
    assert [g.id for g in shifted_grids(rec, 10.0)] == ["r@10s", "r@20s"]
    with pytest.raises(ValueError, match="non-whole"):
        shifted_grids(rec, 7.0)
    assert shifted_grids(StageRecording("q", "q", "x", rec.x, rec.mask, rec.stages), 5.0) == []


def test_dreams_fine_stages_vote_back_to_the_reader_stages_and_shift_alike(
    shared_data: Path,
) -> None:
    folder = shared_data / "dreams-spindles"
    for source in list_sources("dreams", folder):
        rec = read_recording("dreams", source)
        codes, step = dreams_fine_stages(rec)
        assert step == (1.0 if source.suffix == ".edf" else 5.0)
        per = int(30 / step)
        np.testing.assert_array_equal(majority_stages(codes, per, source), rec.stages)
    # excerpt3: the EDF's 1-Hz channel and the 5-s text file give the same shifted labels
    edf = read_recording("dreams", folder / "excerpt3.edf")
    txt = read_recording("dreams", folder / "excerpt3.txt")
    (c1, _), (c5, _) = dreams_fine_stages(edf), dreams_fine_stages(txt)
    for k in range(1, 6):
        np.testing.assert_array_equal(majority_stages(c1[5 * k : 5 * k + 30 * 59], 30, "e"),
                                      majority_stages(c5[k : k + 6 * 59], 6, "t"))


def test_load_raw_keeps_fine_stages_and_grids_come_from_the_same_epochs(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "dreams"
    folder.mkdir()
    for name in ("excerpt1.txt", "Hypnogram_excerpt1.txt"):
        (folder / name).symlink_to(shared_data / "dreams-spindles" / name)
    (rec,) = load_raw("dreams", folder, PreprocessSpec.default())
    assert rec.fine_step_s == 5.0 and rec.fine_stages is not None
    assert len(rec.fine_stages) == 360
    grids = shifted_grids(rec)
    assert len(grids) == 5 and all(g.n_epochs == 59 for g in grids)
    # a 30-s shift would be the next epoch of the offset-0 grid: 25 s is one 5-s step short
    np.testing.assert_array_equal(grids[-1].x[0, 0, 500:], rec.x[1, 0, :2500])
    np.testing.assert_array_equal(grids[2].stages,
                                  majority_stages(rec.fine_stages[3 : 3 + 6 * 59], 6, "e1"))



def test_stage_fractions_are_each_epochs_mixture_of_its_fine_stages_on_every_grid(
    shared_data: Path, tmp_path: Path
) -> None:
    """excerpt1: 60 epochs, 17 transitional (their six 5-s stages differ); a pure epoch's row
    is its one-hot stage; each shifted grid carries the fine stages it covers."""
    folder = tmp_path / "dreams"
    folder.mkdir()
    for name in ("excerpt1.txt", "Hypnogram_excerpt1.txt"):
        (folder / name).symlink_to(shared_data / "dreams-spindles" / name)
    (rec,) = load_raw("dreams", folder, PreprocessSpec.default())
    q = stage_fractions(rec)
    assert q is not None and q.shape == (60, 5)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-6)
    pure = q.max(1) == 1.0
    assert int((~pure).sum()) == 17
    np.testing.assert_array_equal(q[pure].argmax(1), rec.stages[pure])
    fine = np.asarray(rec.fine_stages)
    grid = shifted_grids(rec)[1]  # 10 s: two 5-s steps later
    qg = stage_fractions(grid)
    assert qg is not None and qg.shape == (59, 5)
    expected = np.bincount(fine[2 + 6 * 7 : 2 + 6 * 8], minlength=5) / 6
    np.testing.assert_allclose(qg[7], expected, atol=1e-6)
    assert stage_fractions(_rec_without_fine()) is None


def _rec_without_fine() -> StageRecording:
    r = _rec()
    return StageRecording(r.id, r.subject, r.dataset, r.x, r.mask, r.stages)

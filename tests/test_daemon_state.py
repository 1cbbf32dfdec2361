"""Bed state persistence: exact round trip, atomic replace, restore rules (model, age, corrupt)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rtsleep.daemon.state import (
    BedState,
    load_state,
    new_recording_path,
    request_new_recording,
    save_state,
    state_path,
    take_new_recording,
)


def make_state(bed: str = "bed1", model_id: str = "abc123") -> BedState:
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    return BedState(
        bed=bed,
        model_id=model_id,
        next_epoch=42,
        anchor_lsl=12345.678901234567,
        recurrent={
            "layers.0.conv_state": torch.randn(1, 8, 4, generator=g),
            "layers.0.ssm_state": torch.randn(1, 8, 16, generator=g, dtype=torch.float64),
        },
        pipelines={
            "C3-A1": {"zi": rng.standard_normal((3, 2)), "history": rng.standard_normal(17),
                      "n_in": 90000, "phase": 0.1 + 0.2},
            "EOG.1": {"zi": rng.standard_normal((2, 2)).astype(np.float32), "n_in": 7},
        },
        extra={"epochs_scored": 40, "epochs_unscorable": 2},
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    st = make_state()
    save_state(tmp_path, st)
    back = load_state(tmp_path, "bed1", "abc123", max_age_s=60)
    assert back is not None
    assert back.next_epoch == 42 and back.anchor_lsl == st.anchor_lsl
    assert back.extra == st.extra
    for k, t in st.recurrent.items():
        assert back.recurrent[k].dtype == t.dtype and torch.equal(back.recurrent[k], t)
    assert set(back.pipelines) == {"C3-A1", "EOG.1"}
    for label, ps in st.pipelines.items():
        for key, v in ps.items():
            got = back.pipelines[label][key]
            if isinstance(v, np.ndarray):
                assert got.dtype == v.dtype and np.array_equal(got, v)
            else:
                assert got == v and type(got) is type(v)


def test_save_replaces_atomically_without_leftovers(tmp_path: Path) -> None:
    st = make_state()
    save_state(tmp_path, st)
    st.next_epoch = 43
    save_state(tmp_path, st)
    assert sorted(p.name for p in tmp_path.iterdir()) == [state_path(tmp_path, "bed1").name]
    back = load_state(tmp_path, "bed1", "abc123", max_age_s=60)
    assert back is not None and back.next_epoch == 43


def test_state_from_another_model_is_not_restored(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    save_state(tmp_path, make_state(model_id="old-model"))
    with caplog.at_level(logging.WARNING):
        assert load_state(tmp_path, "bed1", "new-model", max_age_s=60) is None
    assert "saved by model" in caplog.text


def test_stale_state_is_not_restored(tmp_path: Path) -> None:
    st = make_state()
    save_state(tmp_path, st)
    assert load_state(tmp_path, "bed1", "abc123", max_age_s=60,
                      now_unix=st.saved_unix + 61) is None
    assert load_state(tmp_path, "bed1", "abc123", max_age_s=60,
                      now_unix=st.saved_unix + 59) is not None


def test_corrupt_state_is_moved_aside_and_ignored(tmp_path: Path) -> None:
    path = state_path(tmp_path, "bed1")
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert load_state(tmp_path, "bed1", "abc123", max_age_s=60) is None
    assert not path.exists() and path.with_name(path.name + ".corrupt").exists()


def test_missing_state_starts_fresh(tmp_path: Path) -> None:
    assert load_state(tmp_path / "none", "bed1", "abc123", max_age_s=60) is None


def test_a_new_recording_request_is_taken_once_per_bed(tmp_path: Path) -> None:
    assert take_new_recording(tmp_path, "bed1") is False
    path = request_new_recording(tmp_path, "bed1")
    assert path == new_recording_path(tmp_path, "bed1") and path.is_file()
    assert take_new_recording(tmp_path, "bed2") is False  # another bed's request is not taken
    assert take_new_recording(tmp_path, "bed1") is True
    assert take_new_recording(tmp_path, "bed1") is False
    with pytest.raises(OSError):
        request_new_recording(tmp_path / "missing-dir", "bed1")

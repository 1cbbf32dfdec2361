"""Epoch labelling: stage arrays from annotations, event flags by overlap."""

from __future__ import annotations

import numpy as np
import pytest

from rtsleep.data.errors import DataError
from rtsleep.data.labels import (
    DEFAULT_MIN_OVERLAP_S,
    annotation_epoch_counts,
    event_epoch_flags,
    stage_counts,
    stages_from_annotations,
)
from rtsleep.data.recording import Event, EventType, Stage

AP = EventType.APNEA_OBSTRUCTIVE


def test_short_event_inside_one_epoch_flags_that_epoch() -> None:
    # The seed rule round(start/30)..round(end/30) puts a 50-60 s event in epoch 2; it lies in 1.
    flags = event_epoch_flags([Event(50.0, 10.0, AP)], 4)
    np.testing.assert_array_equal(flags, [False, True, False, False])


def test_event_flags_every_epoch_it_overlaps_by_the_minimum() -> None:
    ev = Event(25.0, 40.0, AP)  # 25..65 s: 5 s in epoch 0, 30 s in epoch 1, 5 s in epoch 2
    np.testing.assert_array_equal(event_epoch_flags([ev], 4), [True, True, True, False])
    np.testing.assert_array_equal(
        event_epoch_flags([ev], 4, min_overlap_s=6.0), [False, True, False, False]
    )


def test_overlap_below_the_minimum_does_not_flag_the_neighbour() -> None:
    ev = Event(29.5, 15.0, AP)  # 0.5 s in epoch 0
    assert DEFAULT_MIN_OVERLAP_S == 1.0
    np.testing.assert_array_equal(event_epoch_flags([ev], 3), [False, True, False])


def test_event_shorter_than_min_overlap_still_flags_its_epoch() -> None:
    np.testing.assert_array_equal(
        event_epoch_flags([Event(31.0, 0.4, AP)], 3, min_overlap_s=5.0), [False, True, False]
    )


def test_point_event_flags_the_epoch_of_its_onset() -> None:
    flags = event_epoch_flags([Event(60.0, 0.0, EventType.AROUSAL)], 3)
    np.testing.assert_array_equal(flags, [False, False, True])


def test_event_type_filter_and_events_outside_the_recording() -> None:
    evs = [Event(0.0, 20.0, EventType.HYPOPNEA), Event(35.0, 20.0, AP), Event(500.0, 20.0, AP)]
    np.testing.assert_array_equal(
        event_epoch_flags(evs, 3, types=[AP]), [False, True, False]
    )
    np.testing.assert_array_equal(event_epoch_flags(evs, 3), [True, True, False])


def test_negative_min_overlap_is_rejected() -> None:
    with pytest.raises(ValueError):
        event_epoch_flags([], 3, min_overlap_s=-1.0)


def test_rk_stages_map_to_aasm_and_movement_is_unscored() -> None:
    ann = [
        (0.0, 60.0, "Sleep stage W"), (60.0, 30.0, "Sleep stage 1"), (90.0, 30.0, "Sleep stage 2"),
        (120.0, 30.0, "Sleep stage 3"), (150.0, 30.0, "Sleep stage 4"),
        (180.0, 30.0, "Sleep stage R"), (210.0, 30.0, "Movement time"),
        (240.0, 30.0, "Sleep stage ?"),
    ]
    stages = stages_from_annotations(ann)
    assert stages.dtype == np.int8
    np.testing.assert_array_equal(stages, [0, 0, 1, 2, 3, 3, 4, -1, -1])
    assert stage_counts(stages) == {"UNSCORED": 2, "W": 2, "N1": 1, "N2": 1, "N3": 2, "REM": 1}


def test_uncovered_epochs_are_unscored_and_midpoint_decides() -> None:
    ann = [(0.0, 40.0, "Sleep stage 2"), (100.0, 30.0, "Sleep stage W")]
    np.testing.assert_array_equal(
        stages_from_annotations(ann, 5),
        [Stage.N2, Stage.UNSCORED, Stage.UNSCORED, Stage.W, Stage.UNSCORED],
    )


def test_annotations_longer_than_the_recording_are_an_error() -> None:
    ann = [(0.0, 30.0 * 12, "Sleep stage W")]
    with pytest.raises(DataError, match="hyp.edf: stage annotations run to 360 s"):
        stages_from_annotations(ann, 10, source="hyp.edf")
    assert len(stages_from_annotations(ann, 10, source="hyp.edf", allow_overrun_s=60.0)) == 10


def test_raw_annotation_epoch_counts() -> None:
    ann = [(0.0, 90.0, "Sleep stage W"), (90.0, 30.0, "Sleep stage 4"),
           (120.0, 60.0, "Sleep stage W")]
    assert annotation_epoch_counts(ann) == {"Sleep stage W": 5, "Sleep stage 4": 1}

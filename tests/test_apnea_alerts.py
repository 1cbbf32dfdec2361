"""Alert state machine, stage gating and the running AHI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtsleep.apnea.aasm import AasmConfig, RespEvent, RespiratoryScorer, RespUpdate
from rtsleep.apnea.ahi import RunningAhi, ahi_from_minutes, severity_class
from rtsleep.apnea.alerts import AlertTracker
from rtsleep.data.recording import EventType, Stage


def _ev(i: int, onset: float, dur: float = 15.0, typ: EventType = EventType.APNEA) -> RespEvent:
    return RespEvent(i, onset, dur, typ, "1A", "airflow", "confirmed", desaturation_pct=4.0)


def test_alert_goes_provisional_then_confirmed_and_counts_during_sleep() -> None:
    tr = AlertTracker("bed1")
    tr.on_stage(3, Stage.N2)
    a1 = tr.on_updates([RespUpdate("onset", _ev(0, 100.0, 0.0, EventType.HYPOPNEA))])
    assert [a["state"] for a in a1] == ["provisional"]
    assert a1[0]["type"] == "undetermined" and a1[0]["duration_s"] is None
    a2 = tr.on_updates([RespUpdate("confirmed", _ev(0, 100.0))])
    assert [a["state"] for a in a2] == ["confirmed"]
    assert a2[0]["id"] == a1[0]["id"] and a2[0]["type"] == "apnea"
    assert {"onset_s", "duration_s", "type", "rule", "sensor", "state"} <= set(a2[0])
    assert tr.ahi.n_events == 1
    json.dumps(a2[0], allow_nan=False)  # publishable as is


def test_rejected_candidate_is_retracted_and_not_counted() -> None:
    tr = AlertTracker("bed1")
    tr.on_stage(0, Stage.N2)
    tr.on_updates([RespUpdate("onset", _ev(0, 10.0))])
    rej = RespEvent(0, 10.0, 8.0, EventType.HYPOPNEA, "1A", "airflow", "rejected", reason="short")
    out = tr.on_updates([RespUpdate("rejected", rej)])
    assert [a["state"] for a in out] == ["retracted"]
    assert tr.ahi.n_events == 0


def test_onset_during_known_wake_raises_no_alert_and_does_not_count() -> None:
    tr = AlertTracker("bed1")
    tr.on_stage(0, Stage.W)
    out = tr.on_updates([RespUpdate("onset", _ev(0, 5.0)), RespUpdate("confirmed", _ev(0, 5.0))])
    assert out == []
    assert tr.ahi.n_events == 0


@pytest.mark.parametrize(
    ("stage", "state"),
    [(Stage.W, "retracted"), (Stage.UNSCORED, "retracted"), (Stage.REM, "confirmed")],
)
def test_confirmation_waits_for_the_onset_epoch_stage(stage: Stage, state: str) -> None:
    tr = AlertTracker("bed1")
    assert [a["state"] for a in tr.on_updates([RespUpdate("onset", _ev(0, 65.0))])] == [
        "provisional"
    ]
    assert tr.on_updates([RespUpdate("confirmed", _ev(0, 65.0))]) == []  # epoch 2 not staged yet
    assert tr.on_stage(1, Stage.N2) == []  # another epoch decides nothing
    out = tr.on_stage(2, stage)
    assert [a["state"] for a in out] == [state]
    assert tr.ahi.n_events == (1 if state == "confirmed" else 0)


def test_without_stage_gating_confirmed_events_count_immediately() -> None:
    tr = AlertTracker("bed1", gate_by_stage=False)
    out = tr.on_updates([RespUpdate("onset", _ev(0, 5.0)), RespUpdate("confirmed", _ev(0, 5.0))])
    assert [a["state"] for a in out] == ["provisional", "confirmed"]


def test_running_ahi_is_events_per_hour_of_sleep_only() -> None:
    tr = AlertTracker("bed1")
    for k in range(120):  # 1 h of sleep, then 1 h of wake
        tr.on_stage(k, Stage.N2)
    for k in range(120, 240):
        tr.on_stage(k, Stage.W)
    for i in range(6):
        tr.on_updates([RespUpdate("confirmed", _ev(i, 60.0 * i))])
    s = tr.summary()
    assert s["ahi"] == pytest.approx(6.0) and s["severity"] == "mild" and s["sleep_h"] == 1.0


def test_ahi_is_undefined_before_sleep() -> None:
    r = RunningAhi()
    r.add_epoch(Stage.W)
    assert r.ahi is None and r.summary()["severity"] is None


def test_ahi_waits_for_min_sleep_s_so_one_early_event_is_not_severe() -> None:
    r = RunningAhi(min_sleep_s=600.0)
    r.add_epoch(Stage.N2)
    r.add_event()  # one event in 30 s of sleep would read as 120 events/h
    assert r.ahi is None and r.summary()["severity"] is None
    for _ in range(19):
        r.add_epoch(Stage.N2)
    assert r.ahi == pytest.approx(6.0) and r.summary()["severity"] == "mild"  # 1 in 10 min
    with pytest.raises(ValueError, match="min_sleep_s"):
        RunningAhi(min_sleep_s=-1.0)


@pytest.mark.parametrize(
    ("ahi", "cls"),
    [
        (0.0, "normal"),
        (4.99, "normal"),
        (5.0, "mild"),
        (14.99, "mild"),
        (15.0, "moderate"),
        (29.99, "moderate"),
        (30.0, "severe"),
    ],
)
def test_severity_class_edges(ahi: float, cls: str) -> None:
    assert severity_class(ahi) == cls


def test_ahi_from_minutes_is_apnea_minutes_per_hour() -> None:
    y = np.zeros(120, dtype=bool)
    y[:10] = True
    assert ahi_from_minutes(y) == pytest.approx(5.0)


def test_tracker_with_real_scorer_confirms_a_constructed_apnea_in_sleep() -> None:
    fs = 10.0
    env = np.ones(3000)
    env[1500:1650] = 0.0  # 15-s apnea at 150 s (epoch 5)
    sc = RespiratoryScorer(fs, AasmConfig())
    tr = AlertTracker("bed2")
    for k in range(10):
        tr.on_stage(k, Stage.N2)
    out = tr.on_updates(sc.push(env) + sc.flush())
    assert [a["state"] for a in out] == ["provisional", "confirmed"]
    assert out[1]["onset_s"] == pytest.approx(150.0) and out[1]["duration_s"] == pytest.approx(15.0)

"""AASM respiratory rules: every threshold exactly on and just off, typing, streaming exactness."""

from __future__ import annotations

import numpy as np
import pytest

from rtsleep.apnea.aasm import (
    AasmConfig,
    RespiratoryDetector,
    RespiratoryScorer,
    RespUpdate,
    detect_respiratory_events,
)
from rtsleep.data.recording import EventType

FS = 10.0
PRE = 1500  # 150 s of normal breathing before the event (baseline ready after 30 s)


def _run(
    level: float,
    n_event: int,
    *,
    rule: str = "1A",
    effort: np.ndarray | None = None,
    spo2: np.ndarray | None = None,
    post: int = 900,
) -> list[RespUpdate]:
    """Envelope 1.0, then ``level`` for ``n_event`` samples from PRE, then 1.0 again."""
    n = PRE + n_event + post
    env = np.ones(n)
    env[PRE : PRE + n_event] = level
    sc = RespiratoryScorer(
        FS,
        AasmConfig(rule=rule),
        has_effort=effort is not None,
        has_spo2=spo2 is not None,  # type: ignore[arg-type]
    )
    return sc.push(env, effort, spo2) + sc.flush()


def _final(updates: list[RespUpdate]) -> list[RespUpdate]:
    return [u for u in updates if u.kind != "onset"]


def _spo2_dip(n_event: int, at_index: int, depth: float, post: int = 900) -> np.ndarray:
    s = np.full(PRE + n_event + post, 95.0)
    s[at_index] = 95.0 - depth
    return s


def test_apnea_exactly_90_percent_for_exactly_10_s_is_confirmed() -> None:
    ups = _final(_run(0.1, 100))
    assert len(ups) == 1 and ups[0].kind == "confirmed"
    ev = ups[0].event
    assert ev.type == EventType.APNEA
    assert ev.onset_s == pytest.approx(150.0) and ev.duration_s == pytest.approx(10.0)


def test_apnea_just_under_10_s_is_rejected() -> None:
    ups = _final(_run(0.1, 99))
    assert [u.kind for u in ups] == ["rejected"]
    assert "minimum duration" in ups[0].event.reason


def test_drop_just_under_90_percent_is_a_hypopnea_not_an_apnea() -> None:
    ups = _final(_run(0.1001, 100, rule="flow"))
    assert len(ups) == 1 and ups[0].kind == "confirmed"
    assert ups[0].event.type == EventType.HYPOPNEA


def test_hypopnea_exactly_30_percent_with_exactly_3_percent_desaturation_confirms_under_1a() -> (
    None
):
    spo2 = _spo2_dip(100, PRE + 50, 3.0)
    ups = _final(_run(0.7, 100, spo2=spo2))
    assert [u.kind for u in ups] == ["confirmed"]
    assert ups[0].event.type == EventType.HYPOPNEA
    assert ups[0].event.desaturation_pct == pytest.approx(3.0)
    assert ups[0].event.rule == "1A"


def test_desaturation_just_under_3_percent_rejects_under_1a() -> None:
    spo2 = _spo2_dip(100, PRE + 50, 2.99)
    ups = _final(_run(0.7, 100, spo2=spo2))
    assert [u.kind for u in ups] == ["rejected"]


def test_rule_1b_needs_4_percent() -> None:
    assert [
        u.kind for u in _final(_run(0.7, 100, rule="1B", spo2=_spo2_dip(100, PRE + 50, 3.99)))
    ] == ["rejected"]
    assert [
        u.kind for u in _final(_run(0.7, 100, rule="1B", spo2=_spo2_dip(100, PRE + 50, 4.0)))
    ] == ["confirmed"]


def test_drop_just_under_30_percent_is_no_event() -> None:
    assert _run(0.7001, 200, rule="flow") == []


def test_hypopnea_just_under_10_s_is_rejected_even_with_desaturation() -> None:
    ups = _final(_run(0.7, 99, spo2=_spo2_dip(99, PRE + 50, 5.0)))
    assert [u.kind for u in ups] == ["rejected"]


def test_desaturation_exactly_30_s_after_the_end_counts() -> None:
    # Event [150, 160) s; the sample at 190.0 s is index 1900.
    ups = _final(_run(0.7, 100, spo2=_spo2_dip(100, 1900, 3.0)))
    assert [u.kind for u in ups] == ["confirmed"]


def test_desaturation_just_after_the_30_s_window_does_not_count() -> None:
    ups = _final(_run(0.7, 100, spo2=_spo2_dip(100, 1901, 3.0)))
    assert [u.kind for u in ups] == ["rejected"]
    assert "desaturation" in ups[0].event.reason


def test_hypopnea_without_spo2_is_rejected_under_1a_and_confirmed_under_flow_rule() -> None:
    assert [u.kind for u in _final(_run(0.7, 100))] == ["rejected"]
    ups = _final(_run(0.7, 100, rule="flow"))
    assert [u.kind for u in ups] == ["confirmed"]
    assert ups[0].event.rule == "flow"


def test_onset_is_reported_before_the_decision() -> None:
    ups = _run(0.1, 120)
    assert [u.kind for u in ups] == ["onset", "confirmed"]
    assert ups[0].event.onset_s == pytest.approx(150.0)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (1.0, 1.0, EventType.APNEA_OBSTRUCTIVE),
        (0.0, 0.0, EventType.APNEA_CENTRAL),
        (0.0, 1.0, EventType.APNEA_MIXED),
        (0.26, 0.26, EventType.APNEA_OBSTRUCTIVE),  # just above the 25 % presence threshold
        (0.24, 0.24, EventType.APNEA_CENTRAL),  # just below it
    ],
)
def test_apnea_type_follows_effort(first: float, second: float, expected: EventType) -> None:
    n_event = 200
    effort = np.ones(PRE + n_event + 900)
    effort[PRE : PRE + 100] = first
    effort[PRE + 100 : PRE + n_event] = second
    ups = _final(_run(0.0, n_event, effort=effort))
    assert [u.kind for u in ups] == ["confirmed"]
    assert ups[0].event.type == expected


def test_flat_airflow_for_minutes_is_a_lost_sensor_not_an_endless_event() -> None:
    env = np.ones(PRE + 6000)
    env[PRE:] = 0.0  # sensor off for 10 min
    sc = RespiratoryScorer(FS, AasmConfig())
    ups = sc.push(env) + sc.flush()
    assert [u.kind for u in ups] == ["onset", "rejected"]
    assert "sensor" in ups[1].event.reason and ups[1].event.duration_s == pytest.approx(120.0)


def test_bad_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="rule"):
        AasmConfig(rule="2C")  # type: ignore[arg-type]


def _breathing(
    seconds: float, flat: list[tuple[float, float, float]], fs: float = FS
) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    amp = np.ones_like(t)
    for a, b, level in flat:
        amp[(t >= a) & (t < b)] = level
    return amp * np.sin(2 * np.pi * 0.25 * t)


def test_raw_airflow_apnea_is_found_with_its_duration() -> None:
    flow = _breathing(400, [(200.0, 215.0, 0.02)])
    evs = detect_respiratory_events(flow, FS)
    assert len(evs) == 1
    assert evs[0].type == EventType.APNEA
    # The event also spans the half breath that tails off into the pause (a >= 30 % drop).
    assert evs[0].onset_s == pytest.approx(199.0, abs=1.5)
    assert evs[0].end_s == pytest.approx(215.0, abs=1.5)


def test_streaming_in_any_chunks_equals_offline() -> None:
    rng = np.random.default_rng(1)
    flow = _breathing(900, [(200.0, 215.0, 0.02), (400.0, 425.0, 0.5), (600.0, 612.0, 0.0)])
    flow += 0.01 * rng.standard_normal(flow.size)
    effort = np.stack([_breathing(900, [(600.0, 612.0, 0.0)]), _breathing(900, [])])
    spo2 = np.full(flow.size, 96.0)
    spo2[int(430 * FS) : int(440 * FS)] = 92.0
    whole = detect_respiratory_events(flow, FS, effort, spo2)
    assert len(whole) == 3
    for chunk_s in (0.1, 1.3, 30.0, 77.7):
        assert detect_respiratory_events(flow, FS, effort, spo2, chunk_s=chunk_s) == whole


def test_a_fast_airflow_is_scored_decimated_with_the_same_events_in_any_chunks() -> None:
    # 500 Hz: the rules run on every 10th envelope sample (50 Hz), ten times cheaper
    fast = 500.0
    flats = [(200.0, 215.0, 0.02), (400.0, 425.0, 0.5), (600.0, 612.0, 0.0)]
    rng = np.random.default_rng(1)
    flow = _breathing(900, flats, fast) + 0.01 * rng.standard_normal(int(900 * fast))
    spo2 = np.full(flow.size, 96.0)
    spo2[int(430 * fast) : int(440 * fast)] = 92.0
    assert RespiratoryDetector(fast).decimation == 10 and RespiratoryDetector(FS).decimation == 1
    whole = detect_respiratory_events(flow, fast, spo2=spo2)
    for chunk_s in (1.233, 30.0):  # 616.5 samples: the decimation phase crosses chunk borders
        assert detect_respiratory_events(flow, fast, spo2=spo2, chunk_s=chunk_s) == whole
    slow = detect_respiratory_events(flow[::10], 50.0, spo2=spo2[::10])  # the same breathing
    assert [e.type for e in whole] == [e.type for e in slow] and len(whole) == 3
    for a, b in zip(whole, slow, strict=True):
        assert a.onset_s == pytest.approx(b.onset_s, abs=0.05)
        assert a.end_s == pytest.approx(b.end_s, abs=0.05)


@pytest.mark.parametrize("w", [2, 3, 60, 3000])
def test_running_window_max_min_equal_the_reductions_over_every_window(w: int) -> None:
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    from rtsleep.apnea.aasm import _window_reduce

    x = np.random.default_rng(w).normal(size=w + 5000)
    x[100:130] = np.nan  # a window touching a NaN is NaN, as numpy's max over it
    x[4000] = np.nan
    win = sliding_window_view(x, w)  # (n - w + 1, w) reference windows
    np.testing.assert_array_equal(_window_reduce(x, w, maximum_filter1d), win.max(axis=1))
    np.testing.assert_array_equal(_window_reduce(x, w, minimum_filter1d), win.min(axis=1))

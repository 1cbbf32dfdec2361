"""The daemon's AASM respiratory pathway on DREAMS excerpt3: alerts, AHI, airflow gaps."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_helpers import VALIDATOR, channel_blocks, excerpt3, excerpt3_blocks

from rtsleep.daemon.epocher import EpochBlock, EpochChannel
from rtsleep.daemon.replay import load_channels
from rtsleep.daemon.respiration import BedRespiration, pick_channels
from rtsleep.daemon.scorer import EpochResult
from rtsleep.data.recording import Channel, Modality

ANCHOR = 100.0


def run(blocks: list[EpochBlock]) -> tuple[BedRespiration, list[dict[str, Any]]]:
    resp = BedRespiration("b", model_id="m")
    out: list[dict[str, Any]] = []
    for b in blocks:
        out += resp.on_block(b, ANCHOR, None)
        res = EpochResult("b", b.index, b.start_lsl, b.end_lsl, [0.0, 0.0, 1.0, 0.0, 0.0],
                          0.0, 0.0, None, b.quality)  # scored N2
        out += resp.on_result(res, ANCHOR, None)
    return resp, out


def test_excerpt3_airflow_effort_spo2_are_found(shared_data: Path) -> None:
    blocks = excerpt3_blocks(shared_data, anchor=ANCHOR)
    ch = pick_channels(blocks[0].channels)
    assert ch is not None
    assert (ch.flow, ch.effort, ch.spo2, ch.spo2_repeat) == ("NAF1", ("VAB", "VTH"), "SAO2", 1)


def test_excerpt3_alerts_are_schema_valid_and_counted_in_ahi(shared_data: Path) -> None:
    resp, alerts = run(excerpt3_blocks(shared_data, anchor=ANCHOR))
    for a in alerts:
        VALIDATOR.validate(a | {"seq": 0, "run": "t"})
        assert a["source"] == "aasm" and a["sensor"] == "NAF1"
    confirmed = [a for a in alerts if a["state"] == "confirmed"]
    assert confirmed, "excerpt3 has scored respiratory events"
    assert all(a["event"].startswith(("apnea", "hypopnea")) for a in confirmed)
    assert all(ANCHOR <= a["onset_lsl"] < ANCHOR + 1800 for a in alerts)
    summary = resp.summary()
    # 30 min of N2 -> events per hour = 2 x confirmed events
    assert summary["ahi"] == pytest.approx(2.0 * len(confirmed))
    assert summary["severity"] is not None


def test_aasm_ahi_is_not_published_before_ten_minutes_of_sleep(shared_data: Path) -> None:
    blocks = excerpt3_blocks(shared_data, anchor=ANCHOR)
    resp, _ = run(blocks[:19])  # 9.5 min of N2
    assert resp.summary()["ahi"] is None and resp.summary()["severity"] is None
    resp, _ = run(blocks[:20])
    assert resp.summary()["ahi"] is not None


def test_airflow_gap_closes_the_segment_and_rebases_later_events(shared_data: Path) -> None:
    blocks = excerpt3_blocks(shared_data, "RESP", 20, anchor=ANCHOR)
    assert blocks[20].quality.channel("NAF1").n_missing == 1500
    resp, alerts = run(blocks)
    assert resp.n_segments == 2  # a second detector segment began after the gap
    gap = (ANCHOR + 600.0, ANCHOR + 630.0)
    provisional = [a for a in alerts if a["state"] == "provisional"]
    assert not [a for a in provisional if gap[0] <= a["onset_lsl"] < gap[1]]
    later = [a for a in provisional if a["epoch"] > 21]
    assert later and all(a["onset_lsl"] >= gap[1] for a in later)


def _excerpt3_with(shared_data: Path, label: str, edit: Any) -> list[EpochBlock]:
    """excerpt3's blocks (anchor ``ANCHOR``) with channel ``label``'s samples ``edit``ed."""
    channels = load_channels(excerpt3(shared_data))
    for c in channels:
        if c.label == label:
            c.data = edit(c.data.copy())
    return channel_blocks("b", channels, anchor=ANCHOR)


def test_nan_bursts_in_airflow_are_not_scored_as_apneas(shared_data: Path) -> None:
    def bursts(x: np.ndarray) -> np.ndarray:  # 10 s of NaN every 90 s (the epocher holds them)
        for s in range(0, x.size, 50 * 90):
            x[s + 100 : s + 600] = np.nan
        return x

    clean = [a for a in run(excerpt3_blocks(shared_data, anchor=ANCHOR))[1]
             if a["state"] == "confirmed"]
    blocks = _excerpt3_with(shared_data, "NAF1", bursts)
    assert blocks[3].quality.channel("NAF1").usable  # a third NaN: still a usable epoch
    confirmed = [a for a in run(blocks)[1] if a["state"] == "confirmed"]
    apneas = [a for a in confirmed if a["event"].startswith("apnea")]
    assert len(apneas) == len([a for a in clean if a["event"].startswith("apnea")])


def test_an_airflow_stream_that_attaches_late_is_still_used(shared_data: Path) -> None:
    blocks = excerpt3_blocks(shared_data, anchor=ANCHOR)
    first = dataclasses.replace(
        blocks[0], channels=tuple(c for c in blocks[0].channels if c.modality != Modality.RESP))
    resp, alerts = run([first, *blocks[1:]])
    assert resp.active and resp.channels is not None and resp.channels.flow == "NAF1"
    assert [a for a in alerts if a["state"] == "confirmed"]


def test_spo2_that_is_not_a_percentage_is_warned_about_once(
        shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocks = _excerpt3_with(shared_data, "SAO2", lambda x: np.full_like(x, 0.96))  # a fraction
    with caplog.at_level(logging.WARNING, logger="rtsleep.daemon.respiration"):
        run(blocks[:4])
    warned = [r for r in caplog.records if "SAO2" in r.getMessage()]
    assert len(warned) == 1 and "50-100 %" in warned[0].getMessage()


def test_an_spo2_stream_that_attaches_late_is_used_from_then_on(shared_data: Path) -> None:
    blocks = excerpt3_blocks(shared_data, anchor=ANCHOR)
    early = [dataclasses.replace(b, channels=tuple(c for c in b.channels
                                                   if c.modality != Modality.SPO2))
             for b in blocks[:10]]
    resp, _ = run([*early, *blocks[10:]])
    assert resp.channels is not None and resp.channels.spo2 == "SAO2"
    assert resp.n_segments == 2  # a new segment began with the oxygen signal


def _channel(label: str, modality: Modality, fs: float, data: np.ndarray) -> EpochChannel:
    return EpochChannel(label, modality, fs, "", "s", data, np.ones(data.size, dtype=bool))


def test_spo2_faster_than_airflow_is_taken_every_kth_sample() -> None:
    flow = _channel("Flow", Modality.RESP, 10.0, np.zeros(300))
    spo2 = _channel("SpO2", Modality.SPO2, 50.0, np.arange(1500.0))
    ch = pick_channels([flow, spo2])
    assert ch is not None and ch.spo2 == "SpO2" and ch.spo2_step == 5
    at_flow = ch.spo2_at_flow_rate(spo2.data)  # (300,): the last of each 5 samples
    assert at_flow.shape == (300,) and at_flow[0] == 4.0 and at_flow[-1] == 1499.0
    slow = pick_channels([flow, _channel("SpO2", Modality.SPO2, 1.0, np.arange(30.0))])
    assert slow is not None and slow.spo2_at_flow_rate(np.arange(30.0)).shape == (300,)
    odd = pick_channels([flow, _channel("SpO2", Modality.SPO2, 3.0, np.arange(90.0))])
    assert odd is not None and odd.spo2 is None  # 10/3: no integer ratio, flow-only rule


def test_epochs_without_a_clean_airflow_are_not_sleep_time_for_the_ahi(
        shared_data: Path) -> None:
    whole, _ = run(excerpt3_blocks(shared_data, anchor=ANCHOR))
    gap, _ = run(excerpt3_blocks(shared_data, "RESP", 20, anchor=ANCHOR))
    assert whole.tracker.ahi.sleep_s == 60 * 30.0
    assert gap.tracker.ahi.sleep_s == 59 * 30.0  # epoch 20 had no airflow: not monitored


def test_events_open_when_a_late_spo2_starts_a_new_segment_are_still_decided(
        shared_data: Path) -> None:
    """The segment closed for the new SpO2 decides its open candidate in that same epoch: its
    provisional alert is confirmed or retracted, not left open for the rest of the night."""
    blocks = excerpt3_blocks(shared_data, anchor=ANCHOR)
    switch = 12  # a candidate is open at the end of epoch 11
    early = [dataclasses.replace(b, channels=tuple(c for c in b.channels
                                                   if c.modality != Modality.SPO2))
             for b in blocks[:switch]]
    resp, alerts = run([*early, *blocks[switch:]])
    assert resp.n_segments == 2
    decided = {a["onset_lsl"] for a in alerts if a["state"] != "provisional"}
    before = [a for a in alerts if a["state"] == "provisional"
              and a["onset_lsl"] < ANCHOR + switch * 30.0]
    assert before and all(a["onset_lsl"] in decided for a in before)


def test_an_spo2_that_cannot_be_aligned_is_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    flow = Channel("Flow", Modality.RESP, 10.0, "", rng.standard_normal(3000))
    spo2 = Channel("SpO2", Modality.SPO2, 3.0, "%", np.full(900, 97.0))  # 10/3: no integer ratio
    blocks = channel_blocks("b", [flow, spo2], anchor=ANCHOR)
    with caplog.at_level(logging.WARNING, logger="rtsleep.daemon.respiration"):
        resp, _ = run(blocks)
    assert len(blocks) == 10 and resp.channels is not None and resp.channels.spo2 is None
    assert len([r for r in caplog.records if "cannot be aligned" in r.getMessage()]) == 1

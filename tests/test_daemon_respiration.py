"""The daemon's AASM respiratory pathway on DREAMS excerpt3: alerts, AHI, airflow gaps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from rtsleep.daemon.epocher import BedEpocher, EpochBlock
from rtsleep.daemon.inlet import StreamLayout
from rtsleep.daemon.replay import load_channels, plan_outlets, stream_info
from rtsleep.daemon.respiration import BedRespiration, pick_channels
from rtsleep.daemon.scorer import EpochResult

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "rtsleep" / "schemas"
                     / "messages.schema.json").read_text())
ANCHOR = 100.0


def excerpt3_blocks(shared_data: Path, drop_resp_epoch: int | None = None) -> list[EpochBlock]:
    path = shared_data / "dreams-spindles" / "excerpt3.edf"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    plans = plan_outlets(path.name, load_channels(path))
    layouts = [StreamLayout.from_info(stream_info(p), p.source_id) for p in plans]
    ep = BedEpocher("b", [lay.key for lay in layouts])
    for p, lay in zip(plans, layouts, strict=True):
        ep.attach(lay.key, lay)
        idx = np.arange(p.n_samples)
        if drop_resp_epoch is not None and p.type == "RESP":
            per = int(30 * p.sfreq)
            idx = idx[(idx < drop_resp_epoch * per) | (idx >= (drop_resp_epoch + 1) * per)]
        ep.push(lay.key, p.data[idx], ANCHOR + idx / p.sfreq)
    return ep.pop_ready()


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
    blocks = excerpt3_blocks(shared_data)
    ch = pick_channels(blocks[0].channels)
    assert ch is not None
    assert (ch.flow, ch.effort, ch.spo2, ch.spo2_repeat) == ("NAF1", ("VAB", "VTH"), "SAO2", 1)


def test_excerpt3_alerts_are_schema_valid_and_counted_in_ahi(shared_data: Path) -> None:
    resp, alerts = run(excerpt3_blocks(shared_data))
    for a in alerts:
        jsonschema.validate(a | {"seq": 0, "run": "t"}, SCHEMA)
        assert a["source"] == "aasm" and a["sensor"] == "NAF1"
    confirmed = [a for a in alerts if a["state"] == "confirmed"]
    assert confirmed, "excerpt3 has scored respiratory events"
    assert all(a["event"].startswith(("apnea", "hypopnea")) for a in confirmed)
    assert all(ANCHOR <= a["onset_lsl"] < ANCHOR + 1800 for a in alerts)
    summary = resp.summary()
    # 30 min of N2 -> events per hour = 2 x confirmed events
    assert summary["ahi"] == pytest.approx(2.0 * len(confirmed))
    assert summary["severity"] is not None


def test_airflow_gap_closes_the_segment_and_rebases_later_events(shared_data: Path) -> None:
    blocks = excerpt3_blocks(shared_data, drop_resp_epoch=20)
    assert blocks[20].quality.channel("NAF1").n_missing == 1500
    resp, alerts = run(blocks)
    assert resp.n_segments == 2  # a second detector segment began after the gap
    gap = (ANCHOR + 600.0, ANCHOR + 630.0)
    provisional = [a for a in alerts if a["state"] == "provisional"]
    assert not [a for a in provisional if gap[0] <= a["onset_lsl"] < gap[1]]
    later = [a for a in provisional if a["epoch"] > 21]
    assert later and all(a["onset_lsl"] >= gap[1] for a in later)

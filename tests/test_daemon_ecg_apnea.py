"""The daemon's opt-in ECG apnea pathway on DREAMS excerpt3: probabilities per epoch, alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from daemon_helpers import VALIDATOR, channel_blocks, excerpt3, excerpt3_blocks

from rtsleep.apnea.ecg_model import load_ecg_model
from rtsleep.apnea.ecg_stream import EcgApneaStream
from rtsleep.daemon.alerts import AlertThresholds
from rtsleep.daemon.ecg_apnea import ECG_EVENT, BedEcgApnea
from rtsleep.daemon.epocher import EpochBlock
from rtsleep.daemon.replay import load_channels
from rtsleep.daemon.scorer import EpochResult


def run(blocks: list[EpochBlock], threshold: float) -> tuple[BedEcgApnea, list[dict[str, Any]]]:
    bed = BedEcgApnea("b", load_ecg_model(), AlertThresholds(apnea_prob=threshold), "m")
    out: list[dict[str, Any]] = []
    for b in blocks:
        bed.on_block(b)
        res = EpochResult("b", b.index, b.start_lsl, b.end_lsl, [0.0, 0.0, 1.0, 0.0, 0.0],
                          0.0, 0.0, None, b.quality)  # scored N2
        out += bed.on_result(res, None)
    return bed, out


def test_probabilities_match_the_apnea_stream_and_alerts_are_valid(shared_data: Path) -> None:
    blocks = excerpt3_blocks(shared_data)
    ecg = blocks[0].channel("ECG")
    ref = EcgApneaStream(load_ecg_model(), ecg.sfreq)
    want: dict[int, float] = {}
    for b in blocks:
        want.update(ref.push_ecg(b.channel("ECG").data))
    threshold = float(np.median(list(want.values())))
    bed, alerts = run(blocks, threshold)
    assert bed.active and bed.label == "ECG"
    # every probability went to its epoch and was consumed by the alert machine (one late)
    assert bed.probs == {k: p for k, p in want.items() if k >= 59}
    assert alerts, "half of the epochs are over the median threshold"
    for a in alerts:
        VALIDATOR.validate(a | {"seq": 0, "run": "t"})
        assert a["source"] == "ecg" and a["event"] == ECG_EVENT and a["sensor"] == "ECG"
    first = next(a for a in alerts if a["state"] == "provisional")
    assert want[first["epoch"]] >= threshold and first["probability"] == want[first["epoch"]]


def test_ecg_gap_restarts_the_stream(shared_data: Path) -> None:
    bed, _ = run(excerpt3_blocks(shared_data, "ECG", 30), threshold=0.99)
    # the new stream starts at epoch 31; its epochs are numbered from there
    assert bed.stream_start_epoch == 31


def test_a_flat_ecg_stretch_in_usable_epochs_does_not_stop_the_stream(shared_data: Path) -> None:
    channels = load_channels(excerpt3(shared_data))
    ecg = next(c for c in channels if c.label == "ECG")
    ecg.data = ecg.data.copy()
    ecg.data[50 * 315 : 50 * 344] = 0.0  # lead off 29 s across epochs 10 and 11, < half of each
    blocks = channel_blocks("b", channels)
    assert all(blocks[k].quality.channel("ECG").usable for k in (10, 11))
    bed, _ = run(blocks, threshold=0.99)  # raised "ECG signal is flat" (pathway disabled)
    assert bed.stream_start_epoch == 0  # one stream all night, not restarted

"""Demo helpers: summary line format, agreement with the expert, dataset guess, no-model error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rtsleep import demo

SUMMARY_RE = re.compile(
    r"^demo: (\d+) epochs scored, agreement (\d+\.\d|n/a)% with the expert hypnogram, "
    r"p99 latency (\d+\.\d|n/a) ms$"
)


def test_summary_line_has_the_promised_format() -> None:
    line = demo.summary_line(60, 83.333, 41.26)
    assert SUMMARY_RE.match(line)
    assert line == ("demo: 60 epochs scored, agreement 83.3% with the expert hypnogram, "
                    "p99 latency 41.3 ms")


def test_agreement_counts_only_epochs_scored_by_both() -> None:
    msgs = [
        {"epoch": 0, "stage": "W"},
        {"epoch": 1, "stage": "N2"},
        {"epoch": 2, "stage": None},  # unscorable: not counted
        {"epoch": 3, "stage": "R"},
        {"epoch": 4, "stage": "N3"},  # expert unscored: not counted
    ]
    expert = np.array([0, 3, 2, 4, -1])
    assert demo.agreement(msgs, expert) == pytest.approx(100.0 * 2 / 3)
    assert demo.agreement(msgs, None) is None


def test_dataset_guess_for_expert_hypnograms() -> None:
    assert demo.guess_dataset(Path("x/excerpt3.edf")) == "dreams"
    assert demo.guess_dataset(Path("SC4001E0-PSG.edf")) == "sleep-edf"
    assert demo.guess_dataset(Path("night.edf")) == "edf"


def test_missing_model_fails_with_a_clear_message(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--model", str(tmp_path / "none.safetensors")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("demo: error: ") and "no trained model installed" in err[-1]


def test_inlet_buffer_covers_a_loop_stall_at_the_replay_speed_at_most_the_night() -> None:
    assert demo.inlet_buffer_s(60, "max") == 1860  # the whole night arrives at once
    assert demo.inlet_buffer_s(60, "60") == 660  # 10 wall seconds at 60x, plus a margin
    assert demo.inlet_buffer_s(60, "1000") == 1860  # never more than the night
    assert demo.inlet_buffer_s(60, "nan") == 1860

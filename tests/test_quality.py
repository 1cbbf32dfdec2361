"""Per-channel epoch quality (gaps, NaN, flat, clipping) and the unscorable rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtsleep.daemon.quality import ChannelQuality, QualityConfig, channel_quality, epoch_quality
from rtsleep.data.recording import Modality

FS = 100.0
N = 3000


def _eeg(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 20.0, N).round(2)


def _q(x: np.ndarray, received: np.ndarray | None = None, modality: Modality = Modality.EEG,
       physical_range: tuple[float, float] | None = None) -> ChannelQuality:
    rec = np.ones(N, bool) if received is None else received
    return channel_quality("C3-A2", modality, FS, x, rec, physical_range=physical_range)


def test_clean_noise_has_no_findings() -> None:
    q = _q(_eeg())
    assert q.reasons == () and q.clean_fraction == 1.0 and q.usable


def test_nan_burst_is_counted_and_reported() -> None:
    x = _eeg()
    x[1000:1400] = np.nan
    q = _q(x)
    assert q.n_nan == 400
    assert q.clean_fraction == pytest.approx(1 - 400 / N)
    assert q.reasons == ("NaN 4.00 s",)


def test_gap_counts_missing_samples_and_gap_runs() -> None:
    rec = np.ones(N, bool)
    rec[100:150] = False
    rec[2000:2600] = False
    q = _q(_eeg(), rec)
    assert (q.n_missing, q.n_gaps) == (650, 2)
    assert q.reasons == ("gap 6.50 s",)


def test_flat_line_longer_than_threshold_is_flagged_shorter_is_not() -> None:
    x = _eeg()
    x[500:900] = 3.0  # 4 s flat
    x[2000:2100] = 3.0  # 1 s flat: below the 2-s rule
    q = _q(x)
    assert q.n_flat == 400
    assert any(r.startswith("flat") for r in q.reasons)


def test_flat_airflow_is_not_bad_signal() -> None:
    """A flat airflow is an apnea, not an artefact."""
    x = _eeg()
    x[500:2500] = 0.0
    q = _q(x, modality=Modality.RESP)
    assert q.n_flat == 0


def test_clipping_at_the_physical_range() -> None:
    x = _eeg()
    x[10] = 200.0
    x[20] = -200.0
    q = _q(x, physical_range=(-200.0, 200.0))
    assert q.n_clipped == 2


def test_repeated_extreme_values_are_clipping() -> None:
    x = _eeg()
    x[300:310] = x.max() + 50.0  # amplifier saturates for 10 samples
    q = _q(x)
    assert q.n_clipped == 10
    assert "clipped 0%" in q.reasons


def test_unscorable_when_eeg_has_too_little_clean_signal() -> None:
    x = _eeg()
    x[:2000] = np.nan
    eeg = _q(x)
    eog = channel_quality("EOG1", Modality.EOG, FS, _eeg(1), np.ones(N, bool))
    eq = epoch_quality([eeg, eog])
    assert eq.unscorable
    assert eq.reason.startswith("EEG: no channel with >= 50% clean signal")
    assert "C3-A2 33% clean (NaN 20.00 s)" in eq.reason


def test_one_clean_eeg_channel_keeps_the_epoch_scorable_and_bad_eog_is_masked() -> None:
    bad = np.full(N, np.nan)
    eeg_bad = channel_quality("C4-A1", Modality.EEG, FS, bad, np.ones(N, bool))
    eeg_ok = _q(_eeg())
    eog_bad = channel_quality("EOG1", Modality.EOG, FS, bad, np.zeros(N, bool))
    eq = epoch_quality([eeg_bad, eeg_ok, eog_bad])
    assert not eq.unscorable and eq.reason == ""
    assert eq.usable_modalities() == frozenset({Modality.EEG})


def test_exg_below_50_hz_is_not_usable_and_leaves_the_epoch_unscorable() -> None:
    """A clean EEG at 10 Hz cannot be model input (the scorer skips it), so it must not count
    as the epoch's EEG; a slow airflow channel is fine."""
    x = np.random.default_rng(0).normal(0.0, 20.0, 300)
    slow = channel_quality("C3-A2", Modality.EEG, 10.0, x, np.ones(300, bool))
    assert slow.clean_fraction == 1.0 and not slow.usable
    assert slow.reasons == ("10 Hz, below the 50-Hz ExG minimum",)
    ep = epoch_quality([slow])
    assert ep.unscorable and "10 Hz, below the 50-Hz ExG minimum" in ep.reason
    assert channel_quality("NAF", Modality.RESP, 10.0, x, np.ones(300, bool)).usable


def test_no_eeg_channel_at_all_is_unscorable() -> None:
    eog = channel_quality("EOG1", Modality.EOG, FS, _eeg(), np.ones(N, bool))
    eq = epoch_quality([eog], missing_streams=["bed1-eeg"])
    assert eq.unscorable
    assert eq.reason == "no EEG channel; no data from stream(s) bed1-eeg"


def test_required_modalities_are_configurable() -> None:
    eeg = _q(_eeg())
    cfg = QualityConfig(required_modalities=(Modality.EEG, Modality.EOG))
    assert epoch_quality([eeg], config=cfg).reason == "no EOG channel"


def test_to_dict_is_json_safe_and_reports_the_nan_samples() -> None:
    import json

    x = _eeg()
    x[:10] = np.nan
    eq = epoch_quality([_q(x)])
    text = json.dumps(eq.to_dict(), allow_nan=False)  # raises on any NaN/inf value
    assert json.loads(text)["channels"][0]["nan"] == 10


def test_real_eeg_clean_and_real_saturation_found(shared_data: Path) -> None:
    """DREAMS excerpt3: C3-A1 is clean in all 60 epochs; O1-A1 hits both rails in epoch 18."""
    from rtsleep.daemon.replay import load_channels

    chans = {c.label: c for c in load_channels(shared_data / "dreams-spindles" / "excerpt3.edf")}
    n = 1500  # 30 s at 50 Hz
    c3 = chans["C3-A1"]
    for k in range(60):
        q = channel_quality("C3-A1", Modality.EEG, 50.0, c3.data[k * n : (k + 1) * n],
                            np.ones(n, bool))
        assert q.reasons == (), (k, q.reasons)
    o1 = chans["O1-A1"].data[18 * n : 19 * n]
    q = channel_quality("O1-A1", Modality.EEG, 50.0, o1, np.ones(n, bool))
    at_rails = int(np.sum(o1 == o1.max()) + np.sum(o1 == o1.min()))
    assert o1.max() > 327.0 and o1.min() < -327.0
    assert q.n_clipped == at_rails

"""Epoch cutting on timestamps and sample indices: exactness, jitter, drift, gaps, restore.

These drive ``Dejitter`` and ``BedEpocher`` directly with synthetic timestamps (mechanics only);
tests/test_replay_lsl.py does the same over real LSL on loopback.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from rtsleep.daemon.epocher import BedEpocher, EpochBlock
from rtsleep.daemon.inlet import ChannelSpec, Dejitter, StreamLayout
from rtsleep.data.errors import DataError
from rtsleep.data.recording import Modality

T0 = 1234.5678  # LSL time of the first sample


def _layout(key: str, sfreq: float, labels: tuple[str, ...], unit: str = "uV",
            ctype: str = "EEG") -> StreamLayout:
    return StreamLayout(key, key, ctype, key, sfreq,
                        tuple(ChannelSpec(lb, unit, ctype) for lb in labels))


def _ramp(n: int, n_chans: int = 1, start: int = 0) -> np.ndarray:
    """Sample values = sample index (+ 0.25 per extra channel)."""
    idx = np.arange(start, start + n, dtype=float)
    return np.stack([idx + 0.25 * c for c in range(n_chans)], axis=1)  # (n, n_chans)


def _feed(ep: BedEpocher, key: str, x: np.ndarray, ts: np.ndarray, seed: int = 0) -> None:
    """Push in random chunk sizes, as an inlet would."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(ts):
        n = int(rng.integers(1, 700))
        ep.push(key, x[i : i + n], ts[i : i + n])
        i += n


def _check_ramp(blocks: list[EpochBlock], label: str, per_epoch: int, first: int = 0) -> None:
    for b in blocks:
        c = b.channel(label)
        expected = np.arange(b.index * per_epoch, (b.index + 1) * per_epoch, dtype=float) + first
        np.testing.assert_array_equal(c.data[c.received], expected[c.received])


def test_every_sample_lands_in_its_epoch_under_any_chunking() -> None:
    fs, n = 100.0, 3000 * 4 + 1234
    ep = BedEpocher("bed1", ["eeg"])
    ep.attach("eeg", _layout("eeg", fs, ("C3", "C4")))
    _feed(ep, "eeg", _ramp(n, 2), T0 + np.arange(n) / fs)
    blocks = ep.pop_ready(now=0.0)
    assert [b.index for b in blocks] == [0, 1, 2, 3]
    assert ep.anchor == T0
    for b in blocks:
        assert b.start_lsl == T0 + 30.0 * b.index and b.end_lsl == b.start_lsl + 30.0
        assert all(c.received.all() for c in b.channels)
        assert not b.unscorable
        np.testing.assert_array_equal(b.channel("C4").data, b.channel("C3").data + 0.25)
    _check_ramp(blocks, "C3", 3000)


def _liblsl_chunk_stamps(n: int, fs: float, chunk: int, jitter: float, seed: int) -> np.ndarray:
    """What an inlet sees when each push_chunk stamps its last sample with jitter."""
    rng = np.random.default_rng(seed)
    ts = np.empty(n)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        t_last = T0 + (e - 1) / fs + rng.uniform(-jitter, jitter)
        ts[s:e] = t_last - (e - 1 - np.arange(s, e)) / fs
    return ts


@pytest.mark.parametrize("per_sample", [False, True])
def test_jittered_timestamps_still_cut_sample_exact_epochs(per_sample: bool) -> None:
    fs, n = 50.0, 1500 * 5
    if per_sample:
        rng = np.random.default_rng(3)
        ts = T0 + np.arange(n) / fs + rng.uniform(-0.3 / fs, 0.3 / fs, n)
    else:
        ts = _liblsl_chunk_stamps(n, fs, chunk=37, jitter=0.3 / fs, seed=1)
    ts[0] = T0  # the anchor is the first sample's timestamp
    dj = Dejitter(fs)
    grid = dj.process(ts[: n // 2])
    grid = np.concatenate([grid, dj.process(ts[n // 2 :])])
    np.testing.assert_allclose(grid, T0 + np.arange(n) / fs, rtol=0, atol=1e-9)
    assert (dj.n_gaps, dj.n_jumps_back) == (0, 0)
    ep = BedEpocher("bed1", ["eeg"])
    ep.attach("eeg", _layout("eeg", fs, ("Fpz",)))
    _feed(ep, "eeg", _ramp(n), grid)
    blocks = ep.pop_ready(now=0.0)
    assert [b.index for b in blocks] == [0, 1, 2, 3, 4]
    assert all(b.channel("Fpz").received.all() for b in blocks)
    _check_ramp(blocks, "Fpz", 1500)


def test_clock_drift_slips_single_samples_and_never_fakes_a_gap() -> None:
    fs, n = 100.0, 100 * 600  # 10 min with the source clock 200 ppm slow
    ts = T0 + np.arange(n) / fs * (1 + 200e-6)
    dj = Dejitter(fs)
    grid = np.concatenate([dj.process(ts[i : i + 250]) for i in range(0, n, 250)])
    assert dj.n_gaps == 0 and dj.n_jumps_back == 0
    # 600 s * 200 ppm = 0.12 s = 12 samples of drift, absorbed one sample at a time
    assert 10 <= dj.n_slips <= 13
    assert np.max(np.abs(grid - ts)) < 1.0 / fs
    assert np.all(np.diff(grid) > 0)


def test_gap_is_flagged_filled_by_holding_and_later_samples_keep_their_index() -> None:
    fs = 100.0
    idx = np.concatenate([np.arange(0, 1000), np.arange(1250, 6000)])  # 2.5 s missing in epoch 0
    ts = T0 + idx / fs
    ts[1000:] += 0.002  # a small offset after the reconnection
    dj = Dejitter(fs)
    grid = dj.process(ts)
    assert dj.n_gaps == 1
    ep = BedEpocher("bed1", ["eeg"])
    ep.attach("eeg", _layout("eeg", fs, ("C3",)))
    ep.push("eeg", idx[:, None].astype(float), grid)
    b0, b1 = ep.pop_ready(now=0.0)
    c = b0.channel("C3")
    assert not c.received[1000:1250].any() and c.received[:1000].all() and c.received[1250:].all()
    np.testing.assert_array_equal(c.data[1000:1250], 999.0)  # held last value
    q = b0.quality.channel("C3")
    assert (q.n_missing, q.n_gaps) == (250, 1)
    assert q.reasons == ("gap 2.50 s",)
    _check_ramp([b0, b1], "C3", 3000)
    assert b1.quality.channel("C3").reasons == ()


def test_epochs_without_any_data_are_emitted_unscorable_so_indices_never_skip() -> None:
    fs = 100.0
    ep = BedEpocher("bed1", ["eeg"])
    ep.attach("eeg", _layout("eeg", fs, ("C3",)))
    ep.push("eeg", _ramp(3000), T0 + np.arange(3000) / fs)
    late = np.arange(12000, 15000)  # epochs 1-3 never arrive
    ep.push("eeg", late[:, None].astype(float), T0 + late / fs)
    blocks = ep.pop_ready(now=0.0)
    assert [b.index for b in blocks] == [0, 1, 2, 3, 4]
    for b in blocks[1:4]:
        assert b.unscorable
        assert "EEG: no channel" in b.quality.reason
        assert not b.channel("C3").received.any()
        np.testing.assert_array_equal(b.channel("C3").data, 2999.0)
    assert not blocks[4].unscorable


def test_waits_for_every_stream_then_times_out_on_a_vanished_one() -> None:
    ep = BedEpocher("bed1", ["eeg", "spo2"], timeout_s=5.0)
    ep.attach("eeg", _layout("eeg", 100.0, ("C3",)))
    ep.attach("spo2", _layout("spo2", 1.0, ("SpO2",), unit="%", ctype="SPO2"))
    ep.push("eeg", _ramp(6000), T0 + np.arange(6000) / 100.0)
    ep.push("spo2", np.full((40, 1), 97.0), T0 + np.arange(40) / 1.0)
    first = ep.pop_ready(now=100.0)
    assert [b.index for b in first] == [0]  # epoch 1 waits for spo2
    assert ep.pop_ready(now=104.9) == []
    late = ep.pop_ready(now=105.0)
    assert [b.index for b in late] == [1]
    spo2 = late[0].channel("SpO2")
    assert spo2.received[:10].all() and not spo2.received[10:].any()
    assert not late[0].unscorable  # EEG is fine, SpO2 is not required for staging
    assert late[0].quality.channel("SpO2").n_missing == 20
    # samples of the vanished stream that arrive after their epoch went out are dropped
    ep.push("spo2", np.full((10, 1), 96.0), T0 + np.arange(40, 50) / 1.0)
    assert ep.n_late == 10


def test_streams_at_different_rates_and_phases_cut_on_the_same_epoch_grid() -> None:
    ep = BedEpocher("bed1", ["eeg", "resp"])
    ep.attach("eeg", _layout("eeg", 100.0, ("C3",)))
    ep.attach("resp", _layout("resp", 10.0, ("Flow",), unit="", ctype="RESP"))
    ep.push("eeg", _ramp(9000), T0 + np.arange(9000) / 100.0)
    # the 10-Hz stream starts 0.05 s (half a sample) after the anchor
    ep.push("resp", _ramp(900), T0 + 0.05 + np.arange(900) / 10.0)
    blocks = ep.pop_ready(now=0.0)
    assert [b.index for b in blocks] == [0, 1, 2]
    _check_ramp(blocks, "Flow", 300)
    _check_ramp(blocks, "C3", 3000)
    assert blocks[0].channel("Flow").modality == Modality.RESP
    assert all(b.channel("Flow").received.all() for b in blocks)


def test_a_stream_starting_after_the_anchor_is_filled_with_its_first_value_before_it() -> None:
    """Not with 0.0: a DC offset would be a step that rings through the filters."""
    ep = BedEpocher("bed1", ["eeg", "eog"])
    ep.attach("eeg", _layout("eeg", 100.0, ("C3",)))
    ep.attach("eog", _layout("eog", 100.0, ("E1",), ctype="EOG"))
    ep.push("eeg", _ramp(9000), T0 + np.arange(9000) / 100.0)
    idx = np.arange(4250, 9000)  # from 42.5 s: epoch 0 never arrives, epoch 1 from 12.5 s
    ep.push("eog", 5000.0 + idx[:, None], T0 + idx / 100.0)
    b0, b1, b2 = ep.pop_ready(now=0.0)
    e0, e1 = b0.channel("E1"), b1.channel("E1")
    assert not e0.received.any()
    np.testing.assert_array_equal(e0.data, 0.0)  # nothing received yet: no value to hold
    assert not e1.received[:1250].any() and e1.received[1250:].all()
    np.testing.assert_array_equal(e1.data[:1250], 5000.0 + 4250)
    np.testing.assert_array_equal(e1.data[1250:], 5000.0 + np.arange(4250, 6000))
    assert b2.channel("E1").received.all()


def test_restored_anchor_continues_the_index_after_a_restart() -> None:
    fs = 10.0
    anchor = T0 - 300.0  # the previous run started 300 s (10 epochs) earlier
    ep = BedEpocher("bed1", ["eeg"], anchor=anchor, next_index=7)
    ep.attach("eeg", _layout("eeg", fs, ("C3",)))
    idx = np.arange(2850, 3300)  # from 285 s to 330 s after the anchor
    ep.push("eeg", idx[:, None].astype(float), anchor + idx / fs)
    blocks = ep.pop_ready(now=0.0)
    # epochs 7-8 fell in the downtime, 9 is partial, 10 is complete
    assert [b.index for b in blocks] == [7, 8, 9, 10]
    assert blocks[0].unscorable and blocks[1].unscorable
    assert blocks[2].channel("C3").received.sum() == 150
    _check_ramp(blocks[2:], "C3", 300)


def test_nan_samples_are_flagged_and_filled() -> None:
    fs = 100.0
    x = _ramp(3000)
    x[100:200] = np.nan
    ep = BedEpocher("bed1", ["eeg"])
    ep.attach("eeg", _layout("eeg", fs, ("C3",)))
    ep.push("eeg", x, T0 + np.arange(3000) / fs)
    (b,) = ep.pop_ready(now=0.0)
    c = b.channel("C3")
    assert np.isfinite(c.data).all()
    np.testing.assert_array_equal(c.data[100:200], 99.0)
    assert not c.received[100:200].any()
    assert b.quality.channel("C3").n_nan == 100


def test_exg_in_volts_is_converted_to_microvolts() -> None:
    ep = BedEpocher("bed1", ["eeg"])
    ep.attach("eeg", _layout("eeg", 10.0, ("C3",), unit="V"))
    ep.push("eeg", np.full((300, 1), 2e-5), T0 + np.arange(300) / 10.0)
    (b,) = ep.pop_ready(now=0.0)
    np.testing.assert_allclose(b.channel("C3").data, 20.0)
    assert b.channel("C3").unit == "uV"


def test_rate_without_whole_samples_per_epoch_is_rejected() -> None:
    ep = BedEpocher("bed1", ["x"])
    with pytest.raises(DataError, match="non-integer samples per 30-s epoch"):
        ep.attach("x", _layout("x", 333.3333, ("C3",)))


def test_modality_comes_from_the_channel_type_then_the_label() -> None:
    ep = BedEpocher("bed1", ["amp"])
    layout = StreamLayout("amp", "amp", "EEG", "amp", 10.0, (
        ChannelSpec("C3-A2", "uV", ""), ChannelSpec("LOC", "uV", ""),
        ChannelSpec("X1", "uV", "EMG"), ChannelSpec("weird", "", ""),
    ))
    ep.attach("amp", layout)
    ep.push("amp", np.zeros((300, 4)), T0 + np.arange(300) / 10.0)
    (b,) = ep.pop_ready(now=0.0)
    assert [c.modality for c in b.channels] == [
        Modality.EEG, Modality.EOG, Modality.EMG, Modality.EEG
    ]


def test_a_vanished_stream_is_waited_for_once_and_again_after_it_catches_up() -> None:
    ep = BedEpocher("bed1", ["eeg", "spo2"], timeout_s=5.0)
    ep.attach("eeg", _layout("eeg", 10.0, ("C3",)))
    ep.attach("spo2", _layout("spo2", 1.0, ("SpO2",), unit="%", ctype="SPO2"))
    ep.push("eeg", _ramp(310), T0 + np.arange(310) / 10.0)
    ep.push("spo2", np.full((31, 1), 97.0), T0 + np.arange(31) / 1.0)
    assert [b.index for b in ep.pop_ready(now=0.0)] == [0]
    ep.push("eeg", _ramp(300, start=310), T0 + np.arange(310, 610) / 10.0)
    assert ep.pop_ready(now=1.0) == []  # spo2 behind: wait
    assert [b.index for b in ep.pop_ready(now=6.0)] == [1]  # timed out
    ep.push("eeg", _ramp(300, start=610), T0 + np.arange(610, 910) / 10.0)
    assert [b.index for b in ep.pop_ready(now=6.1)] == [2]  # known to lag: no second wait
    # spo2 comes back and catches up; a later short lag is waited for again
    ep.push("spo2", np.full((70, 1), 96.0), T0 + np.arange(91, 161) / 1.0)
    ep.push("eeg", _ramp(700, start=910), T0 + np.arange(910, 1610) / 10.0)
    back = ep.pop_ready(now=7.0)
    assert [b.index for b in back] == [3, 4]
    assert back[0].channel("SpO2").received.sum() == 29 and back[1].channel("SpO2").received.all()
    ep.push("eeg", _ramp(300, start=1610), T0 + np.arange(1610, 1910) / 10.0)
    assert ep.pop_ready(now=8.0) == []
    assert ep.pop_ready(now=12.9) == []
    assert [b.index for b in ep.pop_ready(now=13.0)] == [5]


def test_a_stream_that_can_never_be_model_input_is_named_once_when_attached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its epochs only carry a reason; the log must say which stream and why, once."""
    ep = BedEpocher("bed1", ["slow", "misc", "eeg"])
    with caplog.at_level(logging.WARNING, logger="rtsleep.daemon.epocher"):
        ep.attach("slow", _layout("slow", 10.0, ("C3-A2",)))
        ep.attach("misc", _layout("misc", 100.0, ("foo", "bar"), unit="", ctype="Misc"))
        ep.attach("eeg", _layout("eeg", 100.0, ("C4-A1",)))
        ep.attach("slow", _layout("slow", 10.0, ("C3-A2",)))  # a re-attach says nothing more
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "bed bed1: stream slow: C3-A2 (EEG) at 10 Hz, below the 50-Hz ExG minimum; not model "
        "input",
        "bed bed1: stream misc: no channel maps to a modality (labels foo, bar); map them with "
        "the bed's channels = {...}",
    ]

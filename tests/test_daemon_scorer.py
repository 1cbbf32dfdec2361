"""Scorer mechanics on synthetic signals.

Unscorable epochs keep the recurrent state, batching across beds equals scoring beds alone, a
restored state continues exactly, indices never repeat or skip.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from daemon_helpers import channel_blocks

from rtsleep.daemon.epocher import BedEpocher
from rtsleep.daemon.inlet import ChannelSpec, StreamLayout
from rtsleep.daemon.scorer import Scorer, choose_primary, fill_nonfinite
from rtsleep.daemon.state import decode_state, encode_state
from rtsleep.data.preprocessing import ChannelPipeline, PreprocessSpec
from rtsleep.data.recording import Channel, Modality
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig

FS = 100.0
N_EPOCHS = 6


@pytest.fixture(scope="module")
def model() -> SleepNet:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return SleepNet(SleepNetConfig.default()).eval()


def synthetic_channels(seed: int, nan_epoch: int | None = None) -> list[Channel]:
    rng = np.random.default_rng(seed)
    n = int(N_EPOCHS * 30 * FS)
    t = np.arange(n) / FS
    eeg = 30 * np.sin(2 * np.pi * 2.0 * t) + 10 * rng.standard_normal(n)
    if nan_epoch is not None:
        eeg[int(nan_epoch * 30 * FS) : int((nan_epoch + 1) * 30 * FS)] = np.nan
    return [
        Channel("C3-A2", Modality.EEG, FS, "uV", eeg),
        Channel("E1-M2", Modality.EOG, FS, "uV", 20 * rng.standard_normal(n)),
        Channel("Chin1-Chin2", Modality.EMG, FS, "uV", 5 * rng.standard_normal(n)),
    ]


def blocks(bed: str, channels: list[Channel]) -> list:
    out = channel_blocks(bed, channels)
    assert [b.index for b in out] == list(range(N_EPOCHS))
    return out


def make_scorer(model: SleepNet, *beds: str) -> Scorer:
    sc = Scorer(model, PreprocessSpec.default(), "model-x")
    for bed in beds:
        sc.add_bed(bed)
    return sc


def test_unscorable_epoch_is_reported_and_does_not_advance_state(model: SleepNet) -> None:
    sc = make_scorer(model, "b")
    eps = blocks("b", synthetic_channels(1, nan_epoch=2))
    sc.score(eps[:2])
    before = {k: v.clone() for k, v in sc.beds["b"].state.items()}
    (res,) = sc.score(eps[2:3])
    assert not res.scored and res.probs is None
    assert res.reason is not None and "EEG" in res.reason
    for k, v in sc.beds["b"].state.items():
        assert torch.equal(v, before[k]), k
    more = sc.score(eps[3:])
    assert all(r.scored for r in more)
    assert sc.counters("b") == (5, 1)


def test_batched_beds_equal_beds_scored_alone(model: SleepNet) -> None:
    eps_a = blocks("a", synthetic_channels(1))
    eps_b = blocks("b", synthetic_channels(2))
    together = make_scorer(model, "a", "b").score(eps_a + eps_b)
    alone_a = make_scorer(model, "a").score(eps_a)
    alone_b = make_scorer(model, "b").score(eps_b)
    got = {(r.bed, r.index): r.probs for r in together}
    assert len(got) == 2 * N_EPOCHS
    for r in alone_a + alone_b:
        np.testing.assert_allclose(got[(r.bed, r.index)], r.probs, rtol=0, atol=1e-6)


def test_restored_state_continues_exactly(model: SleepNet) -> None:
    eps = blocks("b", synthetic_channels(3))
    ref = make_scorer(model, "b").score(eps)
    first = make_scorer(model, "b")
    first.score(eps[:3])
    saved = decode_state(encode_state(first.bed_state("b")))
    assert saved.next_epoch == 3 and saved.anchor_lsl == pytest.approx(1000.0)
    second = Scorer(model, PreprocessSpec.default(), "model-x")
    second.add_bed("b", saved)
    rest = second.score(eps)  # epochs 0-2 are skipped: already published
    assert [r.index for r in rest] == [3, 4, 5]
    for r, want in zip(rest, ref[3:], strict=True):
        assert r.probs == want.probs


def test_restore_refuses_state_of_another_model(model: SleepNet) -> None:
    sc = make_scorer(model, "b")
    st = sc.bed_state("b")
    st.model_id = "other"
    with pytest.raises(ValueError, match="state from model"):
        make_scorer(model).add_bed("b", st)


def test_index_jump_yields_no_data_epochs(model: SleepNet) -> None:
    eps = blocks("b", synthetic_channels(4))
    sc = make_scorer(model, "b")
    out = sc.score([eps[0], eps[4]])
    assert [r.index for r in out] == [0, 1, 2, 3, 4]
    assert [r.scored for r in out] == [True, False, False, False, True]
    assert all("no data" in (r.reason or "") for r in out[1:4])
    assert sc.score([eps[2]]) == []  # never published twice


def test_primary_channel_follows_alias_preference() -> None:
    eps = blocks("b", synthetic_channels(5) + [
        Channel("C4-A1", Modality.EEG, FS, "uV", np.zeros(int(N_EPOCHS * 30 * FS)))])
    assert choose_primary(eps[0].channels, Modality.EEG).label == "C4-A1"  # type: ignore[union-attr]
    assert choose_primary(eps[0].channels, Modality.ECG) is None


def test_fill_nonfinite_holds_last_good_value() -> None:
    x = np.array([np.nan, 1.0, 2.0, np.nan, np.inf, 5.0])
    assert fill_nonfinite(x).tolist() == [1.0, 1.0, 2.0, 2.0, 2.0, 5.0]
    assert fill_nonfinite(np.full(3, np.nan)).tolist() == [0.0, 0.0, 0.0]


def test_late_stream_gets_its_primary_channel_when_it_appears(model: SleepNet) -> None:
    sc = make_scorer(model, "b")
    eps = blocks("b", synthetic_channels(6))
    first = dataclasses.replace(eps[0], channels=tuple(
        c for c in eps[0].channels if c.modality != Modality.EEG))  # EEG stream not there yet
    (res,) = sc.score([first])
    assert Modality.EEG not in res.used
    more = sc.score(eps[1:])
    assert all(r.scored and Modality.EEG in r.used for r in more)
    assert sc.beds["b"].primary == {Modality.EEG: "C3-A2", Modality.EOG: "E1-M2",
                                    Modality.EMG: "Chin1-Chin2"}


def test_a_stream_starting_late_is_filtered_as_if_it_started_there(model: SleepNet) -> None:
    """An EOG stream with a DC offset that starts 31.5 s after the bed's anchor: its filters
    start at its first sample (not at the epocher's fill of the epoch before), so its model
    input equals the pipeline run from that sample, to float32 rounding."""
    rng = np.random.default_rng(9)
    n, start = int(3 * 30 * FS), 3150
    eeg = 30 * rng.standard_normal(n)
    eog = 5000.0 + 20 * rng.standard_normal(n)  # a DC-coupled amplifier's offset
    ep = BedEpocher("b", ["eeg", "eog"])
    for key, label, ctype in (("eeg", "C3-A2", "EEG"), ("eog", "E1-M2", "EOG")):
        ep.attach(key, StreamLayout(key, key, ctype, key, FS, (ChannelSpec(label, "uV", ctype),)))
    ep.push("eeg", eeg[:, None], 1000.0 + np.arange(n) / FS)
    ep.push("eog", eog[start:, None], 1000.0 + np.arange(start, n) / FS)
    eps = ep.pop_ready(now=0.0)
    assert [e.index for e in eps] == [0, 1, 2]
    sc = make_scorer(model, "b")
    x = np.concatenate([sc._preprocess(sc.beds["b"], e)[0][0, 1] for e in eps])  # EOG row
    expected = ChannelPipeline(PreprocessSpec.default().for_modality(Modality.EOG), FS).process(
        eog[start:])
    np.testing.assert_allclose(x[start:], expected, rtol=0, atol=1e-5)


def test_a_long_unscorable_stretch_starts_a_new_recording(model: SleepNet) -> None:
    """``context_reset_s`` (here 3 epochs) of unscorable epochs: the next scorable epoch starts
    from a fresh model state; a shorter gap keeps the context."""
    eps = blocks("b", synthetic_channels(6))
    kept = Scorer(model, PreprocessSpec.default(), "model-x", context_reset_s=91.0)  # 4 epochs
    reset = Scorer(model, PreprocessSpec.default(), "model-x", context_reset_s=90.0)  # 3 epochs
    for sc in (kept, reset):
        sc.add_bed("b")
        out = sc.score([eps[0], eps[4]])  # epochs 1-3: "no data"
        assert [r.scored for r in out] == [True, False, False, False, True]
    assert int(kept.beds["b"].state["n_epochs"]) == 2  # epochs 0 and 4 in one context
    assert int(reset.beds["b"].state["n_epochs"]) == 1  # epoch 4 opened a new one
    # the run of unscorable epochs survives a restart (it is part of the bed state)
    before = Scorer(model, PreprocessSpec.default(), "model-x", context_reset_s=90.0)
    before.add_bed("b")
    before.score([eps[0]])
    before.fail(eps[2], "model error", 0.0)  # epoch 1 "no data", epoch 2 failed: a run of 2
    saved = decode_state(encode_state(before.bed_state("b")))
    assert saved.extra["unscorable_run"] == 2
    after = Scorer(model, PreprocessSpec.default(), "model-x", context_reset_s=90.0)
    after.add_bed("b", saved)
    out = after.score([eps[4]])  # epoch 3 "no data" completes the run of 3
    assert [r.scored for r in out] == [False, True]
    assert int(after.beds["b"].state["n_epochs"]) == 1
    with pytest.raises(ValueError, match="context_reset_s"):
        Scorer(model, PreprocessSpec.default(), "model-x", context_reset_s=-1.0)


def test_a_new_recording_first_releases_what_waits_in_the_delay_line(model: SleepNet) -> None:
    delayed = SleepNet(dataclasses.replace(model.cfg, lookahead_epochs=2)).eval()
    delayed.load_state_dict(model.state_dict())
    eps = blocks("b", synthetic_channels(7))
    sc = Scorer(delayed, PreprocessSpec.default(), "model-x", context_reset_s=30.0)  # 1 epoch
    sc.add_bed("b")
    out = sc.score([eps[0], eps[2]]) + sc.flush()
    assert [r.index for r in out] == [0, 1, 2]
    assert [r.scored for r in out] == [True, False, True]
    assert int(sc.beds["b"].state["n_epochs"]) == 3  # epoch 2 and the flush's two absent epochs


def test_new_recording_releases_the_delay_line_then_starts_a_fresh_context(
    model: SleepNet,
) -> None:
    """``Scorer.new_recording`` (``rtsleep new-recording``): the epoch waiting in the delay line
    is released, the state starts from zero, the epoch indices continue."""
    delayed = SleepNet(dataclasses.replace(model.cfg, lookahead_epochs=1)).eval()
    delayed.load_state_dict(model.state_dict())
    eps = blocks("b", synthetic_channels(8))
    sc = Scorer(delayed, PreprocessSpec.default(), "model-x", context_reset_s=0.0)
    sc.add_bed("b")
    assert [r.index for r in sc.score(eps[:3])] == [0, 1]  # epoch 2 waits
    out = sc.new_recording("b")
    assert [r.index for r in out] == [2] and out[0].scored
    assert int(sc.beds["b"].state["n_epochs"]) == 0 and not sc.beds["b"].line
    assert [r.index for r in sc.score([eps[3]]) + sc.flush()] == [3]
    assert int(sc.beds["b"].state["n_epochs"]) == 2  # epoch 3 and the flush's absent epoch
    causal = make_scorer(model, "b")
    assert len(causal.score(eps[:2])) == 2
    assert causal.new_recording("b") == []
    assert int(causal.beds["b"].state["n_epochs"]) == 0

"""EEG views: a model declaring ``eeg_views`` scores every derivation of a set that a bed or
recording has, each with its own context, and publishes the mean of their stage probabilities.

The daemon's scorer and the evaluation give the same mean as scoring each derivation alone; a
model without views, or a derivation outside its sets, scores the primary EEG alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from daemon_helpers import channel_blocks

from offline.spectral_train import SEDF_EEG_VIEWS, spectral_model_config
from offline.stage_data import StageRecording
from offline.stage_eval import run_offline, run_streaming
from rtsleep.daemon.quality import QualityConfig
from rtsleep.daemon.scorer import EpochResult, Scorer, load_scoring_model
from rtsleep.daemon.state import decode_state, encode_state
from rtsleep.data.channels import eeg_views
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.recording import EXG_MODALITIES, Channel, Modality
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig

FS = 100.0
N_EPOCHS = 6
FPZ, PZ = "EEG Fpz-Cz", "EEG Pz-Oz"


def _model(views: bool) -> SleepNet:
    torch.manual_seed(0)
    cfg = spectral_model_config(running_epochs=4)
    if not views:
        cfg = dataclasses.replace(cfg, eeg_views=())
    return SleepNet(cfg).eval()


@pytest.fixture(scope="module")
def with_views() -> SleepNet:
    torch.set_num_threads(1)
    return _model(True)


def _eeg(seed: int, nan_epoch: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(N_EPOCHS * 30 * FS)
    t = np.arange(n) / FS
    x = 30 * np.sin(2 * np.pi * (1.0 + seed) * t) * (1 + np.arange(n) / n) + 10 * rng.normal(size=n)
    if nan_epoch is not None:
        x[int(nan_epoch * 30 * FS) : int((nan_epoch + 1) * 30 * FS)] = np.nan
    return x


def _blocks(bed: str, channels: list[Channel]) -> list:
    out = channel_blocks(bed, channels)
    assert [b.index for b in out] == list(range(N_EPOCHS))
    return out


def _score(model: SleepNet, beds: dict[str, list[Channel]]) -> dict[tuple[str, int], EpochResult]:
    sc = Scorer(model, PreprocessSpec.default(), "model-x")
    eps = []
    for bed, chans in beds.items():
        sc.add_bed(bed)
        eps.extend(_blocks(bed, chans))
    return {(r.bed, r.index): r for r in sc.score(eps)}


def _ch(label: str, data: np.ndarray) -> Channel:
    return Channel(label, Modality.EEG, FS, "uV", data)


def test_eeg_views_pairs_only_the_derivations_of_the_primary_set() -> None:
    sets = SEDF_EEG_VIEWS
    assert eeg_views(PZ, [FPZ, "C3-A2", "Fpz-Cz"], sets) == [FPZ]  # one per derivation
    assert eeg_views("Fpz-Cz", ["PZ-OZ"], sets) == ["PZ-OZ"]
    assert eeg_views("C3-A2", [FPZ, PZ], sets) == []
    assert eeg_views(PZ, [FPZ], ()) == []


def test_config_keeps_eeg_views_through_json_and_rejects_single_derivations() -> None:
    cfg = SleepNetConfig(eeg_views=[["Fpz-Cz", "Pz-Oz"]])  # type: ignore[arg-type]
    assert SleepNetConfig.from_json(cfg.to_json()).eeg_views == (("Fpz-Cz", "Pz-Oz"),)
    assert "eeg_views" not in SleepNetConfig().to_json()  # old configs and ids unchanged
    with pytest.raises(ValueError, match="eeg_views"):
        SleepNetConfig(eeg_views=(("Fpz-Cz",),))


def test_daemon_publishes_the_mean_of_each_derivation_scored_alone(with_views: SleepNet) -> None:
    a, b = _eeg(1), _eeg(2)
    got = _score(with_views, {"both": [_ch(FPZ, a), _ch(PZ, b)], "fpz": [_ch(FPZ, a)],
                              "pz": [_ch(PZ, b)]})
    for i in range(N_EPOCHS):
        want = (np.asarray(got[("fpz", i)].probs) + np.asarray(got[("pz", i)].probs)) / 2
        np.testing.assert_allclose(got[("both", i)].probs, want, rtol=0, atol=1e-6)
    assert not np.allclose(got[("fpz", 3)].probs, got[("pz", 3)].probs, atol=1e-3)


def test_without_views_the_daemon_scores_the_preferred_derivation_alone() -> None:
    model = _model(False)
    a, b = _eeg(1), _eeg(2)
    got = _score(model, {"both": [_ch(FPZ, a), _ch(PZ, b)], "pz": [_ch(PZ, b)]})
    for i in range(N_EPOCHS):
        np.testing.assert_allclose(got[("both", i)].probs, got[("pz", i)].probs, atol=1e-6)


def test_a_view_without_signal_is_left_out_of_that_epochs_mean(with_views: SleepNet) -> None:
    a, b = _eeg(1, nan_epoch=2), _eeg(2)
    got = _score(with_views, {"both": [_ch(FPZ, a), _ch(PZ, b)], "pz": [_ch(PZ, b)]})
    assert got[("both", 2)].scored
    np.testing.assert_allclose(got[("both", 2)].probs, got[("pz", 2)].probs, atol=1e-6)
    assert not np.allclose(got[("both", 3)].probs, got[("pz", 3)].probs, atol=1e-4)


def test_a_restored_bed_keeps_its_views_and_continues_exactly(with_views: SleepNet) -> None:
    chans = [_ch(FPZ, _eeg(1)), _ch(PZ, _eeg(2))]
    eps = _blocks("b", chans)
    ref = Scorer(with_views, PreprocessSpec.default(), "model-x")
    ref.add_bed("b")
    want = ref.score(eps)
    first = Scorer(with_views, PreprocessSpec.default(), "model-x")
    first.add_bed("b")
    first.score(eps[:3])
    saved = decode_state(encode_state(first.bed_state("b")))
    assert saved.extra["eeg_views"] == [FPZ]
    second = Scorer(with_views, PreprocessSpec.default(), "model-x")
    second.add_bed("b", saved)
    rest = second.score(eps)
    assert [r.index for r in rest] == [3, 4, 5]
    for r, w in zip(rest, want[3:], strict=True):
        assert r.probs == w.probs


def _features_recording(lp: np.ndarray, views: bool) -> StageRecording:
    n = lp.shape[1]
    return StageRecording(
        id="night", subject="s", dataset="sleep-edf-features",
        x=np.zeros((n, len(EXG_MODALITIES), 0), dtype=np.float32),
        mask=np.array([m == Modality.EEG for m in EXG_MODALITIES]),
        stages=np.zeros(n, dtype=np.int64), eeg_label=PZ, log_power=lp[1],
        view_labels=(FPZ,) if views else (), view_log_power=lp[:1] if views else None,
    )


def test_evaluation_averages_the_views_offline_and_streaming_alike(with_views: SleepNet) -> None:
    g = torch.Generator().manual_seed(0)
    lp = (torch.randn(2, 40, 4, generator=g) + 3.0).numpy()  # (channel, T, bands): Fpz, Pz
    both = _features_recording(lp, views=True)
    pz = run_offline(with_views, _features_recording(lp, views=False))
    fpz = run_offline(with_views, dataclasses.replace(
        _features_recording(lp, views=False), log_power=lp[0], eeg_label=FPZ))
    off = run_offline(with_views, both)
    np.testing.assert_allclose(off.probs, (pz.probs + fpz.probs) / 2, atol=1e-6)
    np.testing.assert_allclose(run_streaming(with_views, both).probs, off.probs, atol=1e-5)


def test_score_on_a_real_sleep_edf_psg_equals_the_evaluation_of_both_derivations(
    shared_data: Path, tmp_path: Path, with_views: SleepNet
) -> None:
    """``short_psg.edf`` (Fpz-Cz and Pz-Oz at 100 Hz): the daemon's code path (``score``) and the
    evaluation's raw path read both derivations through the same preprocessing and agree."""
    from offline.stage_data import load_raw
    from rtsleep.daemon.score import score_file
    from rtsleep.models import save_model

    path = tmp_path / "views.safetensors"
    model_id = save_model(with_views, path, PreprocessSpec.default())
    net, spec, _, dev = load_scoring_model(path, "cpu")
    folder = shared_data / "sleep-edf-sc-subset" / "psg-excerpt"
    msgs = score_file(folder / "short_psg.edf", tmp_path / "s.jsonl",
                      Scorer(net, spec, model_id, dev))
    (rec,) = load_raw("sleep-edf", folder, spec, with_views.cfg.eeg_views)
    assert rec.eeg_label == PZ and rec.view_labels == (FPZ,)
    assert rec.view_x is not None and rec.view_x.shape == (1, 10, rec.x.shape[-1])
    got = np.array([[m["probs"][k] for k in ("W", "N1", "N2", "N3", "R")] for m in msgs])
    off = run_offline(net, rec)
    np.testing.assert_allclose(got, off.probs, atol=1e-5, rtol=0)
    alone = run_offline(net, dataclasses.replace(rec, view_labels=(), view_x=None))
    assert not np.allclose(off.probs, alone.probs, atol=1e-3)


def test_an_absent_epoch_queued_before_the_views_appear_is_fed_to_every_view_row() -> None:
    """A delayed multimodal model, and a bed whose EEG streams start after an EOG-only epoch
    (scorable: this epocher requires no modality) and a missing one: the missing epoch is queued
    (one row) before the views exist (two rows), and is fed to both. From then on the bed
    publishes the mean of the two derivations alone."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SleepNetConfig.tiny(), lookahead_epochs=1,
                              eeg_views=SEDF_EEG_VIEWS)
    model = SleepNet(cfg).eval()
    eog = Channel("EOG horizontal", Modality.EOG, FS, "uV", _eeg(3))
    a, b = _eeg(1), _eeg(2)
    sc = Scorer(model, PreprocessSpec.default(), "model-x")
    got: dict[tuple[str, int], EpochResult] = {}
    for bed, eegs in {"both": [_ch(FPZ, a), _ch(PZ, b)], "fpz": [_ch(FPZ, a)],
                      "pz": [_ch(PZ, b)]}.items():
        sc.add_bed(bed)
        eog_only = channel_blocks(bed, [eog], quality=QualityConfig(required_modalities=()))[0]
        # epoch 0; epoch 1 never arrives
        later = channel_blocks(bed, [*eegs, eog])[2:]
        for r in sc.score([eog_only, *later]) + sc.flush([bed]):
            got[(r.bed, r.index)] = r
    assert [i for (bed, i) in got if bed == "both"] == list(range(N_EPOCHS))
    assert got[("both", 0)].scored and not got[("both", 1)].scored
    for i in range(2, N_EPOCHS):
        assert got[("both", i)].scored, got[("both", i)].reason
        want = (np.asarray(got[("fpz", i)].probs) + np.asarray(got[("pz", i)].probs)) / 2
        np.testing.assert_allclose(got[("both", i)].probs, want, rtol=0, atol=1e-6)

"""Spectral-model training options: per-class weight boost, stopping early on the same schedule,
and the output delay (look-ahead) trained the way the model streams."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import offline.spectral_train as st
from offline.spectral_train import Sequence, TrainConfig, class_weights, spectral_model_config
from rtsleep.models.sleepnet import SleepNet


def _seqs(n: int = 3, length: int = 12) -> list[Sequence]:
    g = torch.Generator().manual_seed(0)
    return [Sequence(f"s{i}", f"s{i}", torch.randn(length, 1, 4, generator=g),
                     torch.randint(0, 5, (length,), generator=g)) for i in range(n)]


def test_class_boost_scales_one_class_before_the_rescale() -> None:
    seqs = _seqs()
    w = class_weights(seqs, 0.5)
    wb = class_weights(seqs, 0.5, (1.0, 2.0, 1.0, 1.0, 1.0))
    ratio = (wb / w) / (wb / w)[0]
    torch.testing.assert_close(ratio, torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0]))


def test_stop_at_gives_the_weights_of_that_step_of_the_full_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    init = SleepNet(spectral_model_config()).eval()
    kw = {"steps": 4, "batch": 2, "min_len": 3, "max_len": 6, "eval_every": 1, "seed": 3}
    stopped, k = st.train_phase(copy.deepcopy(init), _seqs(), None,
                                TrainConfig(**kw, stop_at=2), "t")  # type: ignore[arg-type]
    assert k == 2
    # the whole 4-step run, with a validation score peaking at step 2, keeps the step-2 weights
    scores = iter([0.0, 0.1, 0.9, 0.2, 0.3])
    monkeypatch.setattr(st, "sequence_loss", lambda *a: (0.0, 0.0, next(scores)))
    full, best = st.train_phase(copy.deepcopy(init), _seqs(), _seqs(1),
                                TrainConfig(**kw), "t")  # type: ignore[arg-type]
    assert best == 2
    for (name, a), b in zip(stopped.state_dict().items(), full.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_band_power_path_with_absent_rows_equals_forward_with_masked_eeg() -> None:
    """Training reads precomputed band powers (NaN row = absent epoch); the daemon and evaluation
    run ``SleepNet.forward`` on samples with the EEG masked. Both must give the same logits."""
    torch.manual_seed(0)
    model = SleepNet(spectral_model_config(lookahead_epochs=2)).eval()
    with torch.no_grad():
        model.missing_embedding.normal_()  # a trained, non-zero embedding
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 7, 4, model.n_times, generator=g)  # (1, T, M, S)
    mask = torch.zeros(1, 7, 4, dtype=torch.bool)
    mask[0, :5, 0] = True  # the last two epochs are absent
    with torch.no_grad():
        out, _ = model(x, mask)
        lp = st.spectral_encoder(model).band_log_power(x[0, :, 0])  # (T, n_bands)
        lp[5:] = math.nan
        logits = st.stage_logits_from_log_power(model, lp[None])  # (1, T, 5)
    torch.testing.assert_close(logits, out.stage_logits, atol=1e-5, rtol=1e-5)


def test_lookahead_crops_read_k_epochs_past_their_labels_and_absent_rows_past_the_end() -> None:
    seqs = _seqs(n=1, length=8)
    cfg = TrainConfig(batch=16, min_len=3, max_len=8, gain_log=0.0, band_log_std=0.0,
                      noise_std=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        lp, y, _ = st._sample_batch(seqs, cfg, gen, lookahead=2)
        length = y.shape[1]
        assert lp.shape[:2] == (16, length + 2)
        src, stages = seqs[0].log_power[:, 0], seqs[0].stages
        for b in range(16):
            start = int((src == lp[b, 0]).all(dim=-1).nonzero()[0])  # rows are unique
            torch.testing.assert_close(y[b], stages[start : start + length])
            inside = min(8 - start, length + 2)
            torch.testing.assert_close(lp[b, :inside], src[start : start + inside])
            assert bool(lp[b, inside:].isnan().all())


def test_lookahead_training_scores_label_t_with_the_output_k_epochs_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loss pairs the output at arrival ``t + k`` with the label of epoch ``t``: a model whose
    logits at arrival ``i`` point at the label of epoch ``i - k`` reaches zero loss."""
    seqs = _seqs(n=2, length=10)
    model = SleepNet(spectral_model_config(lookahead_epochs=2)).eval()

    def oracle(_model: SleepNet, lp: torch.Tensor) -> torch.Tensor:
        # rows of each sequence are unique, so the row tells epoch and label; the label of epoch
        # i - 2 is written at arrival i (arrivals 0, 1 predict nothing useful)
        out = torch.zeros(*lp.shape[:2], 5)
        for b in range(lp.shape[0]):
            for i in range(2, lp.shape[1]):
                row = lp[b, i - 2]
                for s in seqs:
                    hit = (s.log_power[:, 0] == row).all(dim=-1).nonzero()
                    if len(hit):
                        out[b, i, int(s.stages[int(hit[0])])] = 50.0
        return out.requires_grad_()

    monkeypatch.setattr(st, "stage_logits_from_log_power", oracle)
    loss, acc, _ = st.sequence_loss(model, seqs, torch.ones(5))
    assert acc == 1.0 and loss < 1e-6


def test_sleep_edf_nights_keep_the_asked_wake_margin_around_the_sleep_period(
    shared_data: Path,
) -> None:
    from offline.train_default import SEDF_FEATURES

    whole = {n.id: n for n in st.load_sleep_edf_features(shared_data / SEDF_FEATURES,
                                                         wake_margin_epochs=10**6)}
    for margin in (0, 60, 240):
        for n in st.load_sleep_edf_features(shared_data / SEDF_FEATURES,
                                            wake_margin_epochs=margin):
            full = whole[n.id].stages
            sleep_full = torch.nonzero(full != 0).flatten()
            sleep = torch.nonzero(n.stages != 0).flatten()
            lead = int(sleep_full[0])
            trail = len(full) - 1 - int(sleep_full[-1])
            assert int(sleep[0]) == min(margin, lead), (n.id, margin)
            assert len(n.stages) - 1 - int(sleep[-1]) == min(margin, trail), (n.id, margin)
            assert n.log_power.shape == (len(n.stages), 2, 4)


def test_rehearsal_crops_come_from_the_earlier_phase_at_the_asked_share() -> None:
    """``rehearsal_fraction``: that share of the crops comes from the rehearsal sequences (here
    all N3), the rest from the training ones (all W); without rehearsal none does."""
    g = torch.Generator().manual_seed(0)
    train = [Sequence(f"t{i}", "t", torch.randn(30, 1, 4, generator=g),
                      torch.zeros(30, dtype=torch.int64)) for i in range(2)]
    old = [Sequence("r", "r", torch.randn(200, 2, 4, generator=g),
                    torch.full((200,), 3, dtype=torch.int64))]
    for frac, lo, hi in ((0.0, 0, 0), (0.5, 0.35, 0.65), (0.9, 0.8, 0.97)):
        cfg = TrainConfig(batch=400, min_len=10, max_len=60, rehearsal_fraction=frac)
        lp, y, _ = st._sample_batch(train, cfg, torch.Generator().manual_seed(1), 0, old)
        assert lp.shape[1] <= 30  # crops fit the shortest sequence of either pool
        share = float((y[:, 0] == 3).double().mean())
        assert lo <= share <= hi, (frac, share)
        assert bool(((y == 0) | (y == 3)).all())
    cfg = TrainConfig(batch=50, rehearsal_fraction=0.5)
    _, y, _ = st._sample_batch(train, cfg, torch.Generator().manual_seed(1), 0, None)
    assert bool((y == 0).all())  # nothing to rehearse: training crops only



def test_soft_cross_entropy_is_the_weighted_hard_loss_at_zero_and_follows_the_mixture() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 5, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    w = torch.rand(5, generator=g) + 0.5
    q = torch.rand(40, 5, generator=g)
    q = q / q.sum(1, keepdim=True)
    torch.testing.assert_close(st.soft_cross_entropy(logits, y, q, w, 0.0),
                               F.cross_entropy(logits, y, weight=w))
    # soft = 1, equal weights: the gradient pulls each row's softmax towards its mixture
    lg = logits.clone().requires_grad_(True)
    st.soft_cross_entropy(lg, y, q, torch.ones(5), 1.0).backward()
    assert lg.grad is not None
    torch.testing.assert_close(lg.grad, (torch.softmax(logits, -1) - q) / 40)
    one_hot = F.one_hot(y, 5).float()
    torch.testing.assert_close(st.soft_cross_entropy(logits, y, one_hot, w, 1.0),
                               F.cross_entropy(logits, y, weight=w))


def test_sleep_edf_feature_files_are_found_by_their_psg_names(tmp_path: Path) -> None:
    """Feature nights are named after their PSG (``SC4ssnE0``, a few ``F0``/``G0``); hypnogram
    ids, telemetry nights and other files are not taken for one."""
    names = ["SC4001E0.npz", "SC4362F0.npz", "SC4672G0.npz", "SC4001EC.npz", "ST7011J0.npz",
             "SC4001E0-PSG.npz", "notes.npz"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    found = [(p.name, m.group(1), m.group(2)) for p, m in st.sleep_edf_feature_files(tmp_path)]
    assert found == [("SC4001E0.npz", "00", "1"), ("SC4362F0.npz", "36", "2"),
                     ("SC4672G0.npz", "67", "2")]


def test_a_feature_night_without_sleep_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    for name, y in (("SC4001E0.npz", np.zeros(40)),
                    ("SC4002E0.npz", np.r_[np.zeros(20), 2 * np.ones(20)])):
        np.savez(tmp_path / name, X=rng.normal(size=(40, 72)), y=y.astype(np.int64))
    with caplog.at_level(logging.WARNING):
        nights = st.load_sleep_edf_features(tmp_path, wake_margin_epochs=None)
    assert [n.id for n in nights] == ["SC4002E0"]
    assert f"{tmp_path / 'SC4001E0.npz'}: no sleep epoch in its labels; left out" in caplog.text


def test_feature_files_in_any_letter_case_are_read_and_other_npz_files_are_named(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    features = shared_data / "sleep-edf-sc-subset" / "features"
    (tmp_path / "sc4001e0.NPZ").write_bytes((features / "SC4001E0.npz").read_bytes())
    (tmp_path / "SC4002E0_features.npz").write_bytes((features / "SC4002E0.npz").read_bytes())
    with caplog.at_level(logging.WARNING):
        nights = st.load_sleep_edf_features(tmp_path, wake_margin_epochs=None)
    assert [(n.id, n.subject, len(n.stages)) for n in nights] == [("sc4001e0", "00", 2650)]
    assert "SC4002E0_features.npz" in caplog.text

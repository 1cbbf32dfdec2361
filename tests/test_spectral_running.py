"""Running normalisation of the spectral encoder: the running mean's definition, gain
invariance, streaming (``step``, chunks, persisted state) equal to offline, and the band-power
training path equal to ``SleepNet.forward``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import offline.spectral_train as st
from offline.spectral_train import Sequence, spectral_model_config
from rtsleep.models.ensemble import SleepNetEnsemble
from rtsleep.models.sleepnet import RUNNING_COUNT_KEY, RUNNING_MEAN_KEY, SleepNet
from rtsleep.models.spectral import SpectralConfig, SpectralEncoder


def _reference_means(lp: np.ndarray, present: np.ndarray, n_cap: int) -> np.ndarray:
    """The module doc in plain numpy: the mean of the present epochs so far, then weight 1/N."""
    out, mean, count = np.zeros_like(lp), np.zeros(lp.shape[1]), 0
    for t in range(len(lp)):
        if present[t]:
            count += 1
            mean = mean + (lp[t] - mean) / min(count, n_cap)
        out[t] = mean
    return out


def _model(running: int = 4, seed: int = 0) -> SleepNet:
    torch.manual_seed(seed)
    model = SleepNet(spectral_model_config(running_epochs=running)).eval()
    with torch.no_grad():
        model.missing_embedding.normal_()  # a trained, non-zero embedding
    return model


def test_running_mean_is_the_cumulative_mean_then_exponential_and_skips_absent_epochs() -> None:
    enc = SpectralEncoder(SpectralConfig(running_epochs=4))
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(2, 11, 4, generator=g, dtype=torch.float64).float()
    present = torch.ones(2, 11, dtype=torch.bool)
    present[1, [0, 3, 4]] = False
    lp[1, 3] = math.nan  # an absent epoch's row is never read
    means, mean, count = enc.running_mean(lp, present, *enc.init_running(2))
    for b in range(2):
        want = _reference_means(np.nan_to_num(lp[b].double().numpy()), present[b].numpy(), 4)
        np.testing.assert_allclose(means[b].numpy(), want, atol=1e-5)
    # the first three present epochs: exactly the plain mean so far
    torch.testing.assert_close(means[0, 2], lp[0, :3].mean(0))
    assert count.tolist() == [11, 8]
    torch.testing.assert_close(mean, means[:, -1])


def test_running_block_ignores_a_gain_that_shifts_the_whole_recording() -> None:
    enc = SpectralEncoder(SpectralConfig(running_epochs=100))
    lp = torch.randn(1, 9, 4)
    present = torch.ones(1, 9, dtype=torch.bool)
    fa = enc.features(lp, enc.running_mean(lp, present, *enc.init_running(1))[0])
    fb = enc.features(lp + 2.0, enc.running_mean(lp + 2.0, present, *enc.init_running(1))[0])
    torch.testing.assert_close(fa[..., 8:], fb[..., 8:], atol=1e-5, rtol=0)
    assert not torch.allclose(fa[..., :4], fb[..., :4], atol=0.5)
    with pytest.raises(ValueError, match="running mean"):
        enc.features(lp)


def test_step_chunks_and_a_restored_state_equal_one_forward_pass() -> None:
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 10, 4, model.n_times, generator=g)  # (B, T, M, S)
    mask = torch.zeros(2, 10, 4, dtype=torch.bool)
    mask[:, :, 0] = True
    mask[1, [2, 6], 0] = False  # EEG lost for two epochs of bed 1
    with torch.no_grad():
        full, full_state = model(x, mask)
        state = model.init_state(2)
        stepped = [model.step(x[:, t], mask[:, t], state).stage_logits for t in range(10)]
        a, mid = model(x[:, :4], mask[:, :4])
        restored = st_load(st_save({k: v.contiguous() for k, v in mid.items()}))
        b, end = model(x[:, 4:], mask[:, 4:], restored)
    torch.testing.assert_close(torch.stack(stepped, 1), full.stage_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([a.stage_logits, b.stage_logits], 1), full.stage_logits,
                               atol=1e-5, rtol=1e-5)
    assert state[RUNNING_COUNT_KEY].tolist() == [10, 8]
    torch.testing.assert_close(state[RUNNING_MEAN_KEY], full_state[RUNNING_MEAN_KEY])
    torch.testing.assert_close(end[RUNNING_MEAN_KEY], full_state[RUNNING_MEAN_KEY])
    # the running block matters: the same epoch after another history scores otherwise
    plain = model.init_state(2)
    plain[RUNNING_MEAN_KEY].fill_(5.0)  # another history: 3 epochs at a higher level
    plain[RUNNING_COUNT_KEY].fill_(3)
    with torch.no_grad():
        other = model.step(x[:, 0], mask[:, 0], plain).stage_logits
    assert not torch.allclose(other, stepped[0], atol=1e-3)


def test_band_power_training_path_equals_forward_with_the_running_block() -> None:
    model = _model(running=3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 8, 4, model.n_times, generator=g)
    mask = torch.zeros(1, 8, 4, dtype=torch.bool)
    mask[0, :, 0] = True
    mask[0, 5, 0] = False
    with torch.no_grad():
        out, _ = model(x, mask)
        lp = st.spectral_encoder(model).band_log_power(x[0, :, 0])  # (T, n_bands)
        lp[5] = math.nan
        logits = st.stage_logits_from_log_power(model, lp[None])  # (1, T, 5)
    torch.testing.assert_close(logits, out.stage_logits, atol=1e-5, rtol=1e-5)


def test_band_power_steps_equal_forward_on_samples_for_a_model_and_an_ensemble() -> None:
    """``step_log_power`` epoch by epoch (what evaluation streams for feature files) equals
    ``forward`` on the samples, absent epoch included."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 7, 4, 3000, generator=g) * 15
    mask = torch.zeros(1, 7, 4, dtype=torch.bool)
    mask[0, :, 0] = True
    mask[0, 3, 0] = False
    for model in (_model(running=3), SleepNetEnsemble.from_members([_model(3, 0), _model(3, 1)])):
        with torch.no_grad():
            out, _ = model(x, mask)
            enc = st.spectral_encoder(model if isinstance(model, SleepNet) else model.members[0])
            lp = enc.band_log_power(x[0, :, 0])  # (T, n_bands)
            lp[3] = math.nan
            state = model.init_state(1)
            steps = [model.step_log_power(lp[t : t + 1], state) for t in range(7)]
        torch.testing.assert_close(torch.stack([o.stage_probs for o in steps], 1),
                                   out.stage_probs, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="log_power must have shape"):
        _model().step_log_power(lp[None], _model().init_state(1))  # (1, T, n_bands)


def test_standardisation_centres_all_three_feature_blocks() -> None:
    model = _model(running=50)
    g = torch.Generator().manual_seed(3)
    seqs = [Sequence(f"s{i}", f"s{i}", torch.randn(40, 2, 4, generator=g) * 2 + 3,
                     torch.zeros(40, dtype=torch.int64)) for i in range(3)]
    st.fit_standardisation(model, seqs)
    enc = st.spectral_encoder(model)
    assert enc.center.shape == (12,)
    lp = torch.stack([s.log_power[:, c] for s in seqs for c in range(2)])  # (6, 40, 4)
    means, _, _ = enc.running_mean(lp, torch.ones(6, 40, dtype=torch.bool),
                                   *enc.init_running(6))
    feats = enc.features(lp, means).reshape(-1, 12)
    torch.testing.assert_close(feats.mean(0), torch.zeros(12), atol=1e-4, rtol=0)


def test_ensemble_of_running_members_streams_with_prefixed_running_state() -> None:
    ens = SleepNetEnsemble.from_members([_model(seed=0), _model(seed=1)]).eval()
    state = ens.init_state(1)
    assert {"0.spectral.mean", "1.spectral.count"} <= set(state)
    x = torch.randn(1, 3, 4, ens.n_times)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[:, :, 0] = True
    with torch.no_grad():
        full, _ = ens(x, mask)
        stepped = [ens.step(x[:, t], mask[:, t], state).stage_probs for t in range(3)]
    torch.testing.assert_close(torch.stack(stepped, 1), full.stage_probs, atol=1e-5, rtol=1e-5)
    assert state["1.spectral.count"].tolist() == [3]

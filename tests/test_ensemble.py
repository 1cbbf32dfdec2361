"""Seed ensembles: the mean of the members, streamed like one model, stored in one checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_daemon_scorer import blocks, synthetic_channels

from offline.spectral_train import spectral_model_config
from rtsleep.daemon.scorer import Scorer, load_scoring_model
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models.checkpoint import load_checkpoint_meta, load_model, load_predictor, save_model
from rtsleep.models.ensemble import SleepNetEnsemble
from rtsleep.models.sleepnet import SleepNet


def _members(n: int = 3, lookahead: int = 0) -> list[SleepNet]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        net = SleepNet(spectral_model_config(lookahead_epochs=lookahead)).eval()
        with torch.no_grad():
            net.missing_embedding.normal_()
        out.append(net)
    return out


def _inputs(t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, t, 4, 3000, generator=g) * 20  # (B, T, M, S)
    mask = torch.zeros(2, t, 4, dtype=torch.bool)
    mask[:, :, 0] = True
    mask[1, 2, 0] = False  # one epoch without EEG
    return x, mask


def test_ensemble_probabilities_are_the_mean_of_its_members() -> None:
    members = _members()
    ens = SleepNetEnsemble.from_members(members)
    x, mask = _inputs()
    with torch.no_grad():
        out, _ = ens(x, mask)
        each = [m(x, mask)[0] for m in members]
    torch.testing.assert_close(out.stage_probs, torch.stack([o.stage_probs for o in each]).mean(0))
    torch.testing.assert_close(out.apnea_prob, torch.stack([o.apnea_prob for o in each]).mean(0))
    torch.testing.assert_close(out.stage_logits.softmax(-1), out.stage_probs)
    assert out.embedding.shape[-1] == 3 * each[0].embedding.shape[-1]


def test_ensemble_step_by_step_equals_forward_with_a_lookahead() -> None:
    ens = SleepNetEnsemble.from_members(_members(2, lookahead=1))
    x, mask = _inputs()
    with torch.no_grad():
        whole, _ = ens(x, mask)
        state = ens.init_state(2)
        steps = [ens.step(x[:, t], mask[:, t], state) for t in range(x.shape[1])]
    torch.testing.assert_close(torch.stack([s.stage_probs for s in steps], 1), whole.stage_probs,
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.stack([s.epoch_index for s in steps], 1), whole.epoch_index)
    assert whole.epoch_index[0].tolist() == [-1, 0, 1, 2, 3, 4]


def test_members_of_different_configs_are_refused() -> None:
    a, b = _members(1)[0], SleepNet(spectral_model_config(lookahead_epochs=1))
    with pytest.raises(ValueError, match="member 1"):
        SleepNetEnsemble.from_members([a, b])


def test_ensemble_checkpoint_round_trip_and_single_model_loader_refuses_it(
    tmp_path: Path,
) -> None:
    ens = SleepNetEnsemble.from_members(_members(2))
    path = tmp_path / "ens.safetensors"
    model_id = save_model(ens, path, PreprocessSpec.default())
    meta = load_checkpoint_meta(path)
    assert meta.members == 2 and meta.model_id == model_id
    back = load_predictor(path)
    assert isinstance(back, SleepNetEnsemble) and back.n_members == 2
    x, mask = _inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(back(x, mask)[0].stage_probs, ens(x, mask)[0].stage_probs)
    with pytest.raises(ValueError, match="ensemble of 2"):
        load_model(path)
    single = tmp_path / "one.safetensors"
    save_model(_members(1)[0], single, PreprocessSpec.default())
    assert load_checkpoint_meta(single).members == 1
    assert isinstance(load_predictor(single), SleepNet)


def test_daemon_scorer_streams_an_ensemble_checkpoint(tmp_path: Path) -> None:
    members = _members(2)
    path = tmp_path / "ens.safetensors"
    save_model(SleepNetEnsemble.from_members(members), path, PreprocessSpec.default())
    model, spec, model_id, _ = load_scoring_model(str(path), "cpu")
    sc = Scorer(model, spec, model_id)
    sc.add_bed("b")
    eps = blocks("b", synthetic_channels(3))
    res = sc.score(eps)
    assert all(r.scored for r in res)
    # the same epochs through each member alone, averaged
    per_member = []
    for m in members:
        one = Scorer(m, spec, "m")
        one.add_bed("b")
        per_member.append(np.array([r.probs for r in one.score(eps)]))
    np.testing.assert_allclose(np.array([r.probs for r in res]), np.mean(per_member, axis=0),
                               atol=1e-6)

"""Seed ensembles: the mean of the members, streamed like one model, stored in one checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_daemon_scorer import blocks, synthetic_channels

from offline.spectral_train import spectral_model_config
from rtsleep.daemon.scorer import Scorer, load_scoring_model
from rtsleep.data.channels import BIPOLAR, REFERENTIAL
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.recording import Channel, Modality
from rtsleep.models.checkpoint import load_checkpoint_meta, load_model, load_predictor, save_model
from rtsleep.models.ensemble import GROUP_KEY, SleepNetEnsemble, route_derivation
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


def _grouped(lookahead: int = 0) -> tuple[SleepNetEnsemble, list[SleepNet]]:
    members = _members(3, lookahead)
    return SleepNetEnsemble.from_members(members, [REFERENTIAL, BIPOLAR, BIPOLAR]), members


def test_a_grouped_ensemble_scores_each_bed_with_the_members_of_its_derivation() -> None:
    ens, members = _grouped()
    x, mask = _inputs()
    state = ens.init_state(2)
    assert state[GROUP_KEY].tolist() == [0, 0]  # fresh: group 0, the first member's
    ens.select_group(state, BIPOLAR)
    state[GROUP_KEY][0] = 0  # bed 0 referential, bed 1 bipolar
    with torch.no_grad():
        out, new = ens(x, mask, state)
        each = [m(x, mask)[0].stage_probs for m in members]
    torch.testing.assert_close(out.stage_probs[0], each[0][0])
    torch.testing.assert_close(out.stage_probs[1], (each[1][1] + each[2][1]) / 2)
    assert new[GROUP_KEY].tolist() == [0, 1]
    with torch.no_grad():  # step by step, the same
        steps = [ens.step(x[:, t], mask[:, t], state) for t in range(x.shape[1])]
    torch.testing.assert_close(torch.stack([s.stage_probs for s in steps], 1), out.stage_probs,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("label", "group", "index"), [
    ("EEG Fpz-Cz", BIPOLAR, 1), ("C3-A1", REFERENTIAL, 0), ("EEG", REFERENTIAL, 0),
    (None, REFERENTIAL, 0),
])
def test_route_derivation_follows_the_eeg_label(label: str | None, group: str,
                                                index: int) -> None:
    ens, _ = _grouped()
    state = ens.init_state(1)
    state[GROUP_KEY].fill_(1 - index)
    assert route_derivation(ens, state, label) == group
    assert state[GROUP_KEY].tolist() == [index]
    plain = SleepNetEnsemble.from_members(_members(2))  # no groups: nothing to choose
    assert route_derivation(plain, plain.init_state(1), label) is None
    assert GROUP_KEY not in plain.init_state(1)


def test_grouped_checkpoint_round_trip_keeps_the_groups_and_refuses_edited_ones(
    tmp_path: Path,
) -> None:
    ens, _ = _grouped()
    path = tmp_path / "grouped.safetensors"
    save_model(ens, path, PreprocessSpec.default())
    assert load_checkpoint_meta(path).member_groups == [REFERENTIAL, BIPOLAR, BIPOLAR]
    back = load_predictor(path)
    assert isinstance(back, SleepNetEnsemble)
    assert back.groups == (REFERENTIAL, BIPOLAR, BIPOLAR)
    # the model id covers the group names: swapping them is an edit
    from safetensors.torch import load_file, save_file

    from rtsleep.models.checkpoint import read_header

    meta = read_header(path)["__metadata__"]
    swapped = {**meta, "member_groups": '["bipolar", "referential", "referential"]'}
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(path)), str(edited), metadata=swapped)
    with pytest.raises(ValueError, match="edited.safetensors: model_id mismatch"):
        load_predictor(edited)
    short = {**meta, "member_groups": '["bipolar"]'}
    save_file(load_file(str(path)), str(edited), metadata=short)
    with pytest.raises(ValueError, match="one group name per member"):
        load_checkpoint_meta(edited)
    with pytest.raises(ValueError, match="groups names 1 members"):
        SleepNetEnsemble(ens.cfg, 3, [BIPOLAR])


def test_daemon_scorer_routes_each_bed_by_its_eeg_label_and_keeps_it_on_a_new_recording(
) -> None:
    ens, members = _grouped()
    sc = Scorer(ens, PreprocessSpec.default(), "grouped")
    sc.add_bed("central")
    sc.add_bed("frontal")
    central = blocks("central", synthetic_channels(3))  # EEG C3-A2
    frontal_channels = [
        Channel("EEG Fpz-Cz", Modality.EEG, c.sfreq, c.unit, c.data) if c.label == "C3-A2"
        else c for c in synthetic_channels(3)
    ]
    frontal = blocks("frontal", frontal_channels)
    res = sc.score(central + frontal)
    assert sc.beds["central"].state[GROUP_KEY].tolist() == [0]
    assert sc.beds["frontal"].state[GROUP_KEY].tolist() == [1]
    probs = {bed: np.array([r.probs for r in res if r.bed == bed]) for bed in ("central",
                                                                               "frontal")}
    # the same signal: the frontal bed is scored by the two bipolar members alone
    alone = []
    for m in members[1:]:
        one = Scorer(m, PreprocessSpec.default(), "m")
        one.add_bed("central")
        alone.append(np.array([r.probs for r in one.score(central)]))
    np.testing.assert_allclose(probs["frontal"], np.mean(alone, axis=0), atol=1e-6)
    assert not np.allclose(probs["central"], probs["frontal"], atol=1e-3)
    sc.new_recording("frontal")
    assert sc.beds["frontal"].state[GROUP_KEY].tolist() == [1]


def test_members_of_a_group_no_bed_uses_are_not_run_and_their_state_is_left_alone() -> None:
    ens, members = _grouped()
    x, mask = _inputs()
    state = ens.init_state(2)
    ens.select_group(state, BIPOLAR)  # both beds bipolar: member 0 idle
    idle = {k: v.clone() for k, v in state.items() if k.startswith("0.")}
    with torch.no_grad():
        for t in range(x.shape[1]):
            out = ens.step(x[:, t], mask[:, t], state)
        whole, new = ens(x, mask, ens.init_state(2))  # group 0: members 1 and 2 idle
    for k, v in idle.items():
        assert torch.equal(state[k], v), k
    assert state["1.n_epochs"].tolist() == [6, 6]
    assert new["1.n_epochs"].tolist() == [0, 0] and new["0.n_epochs"].tolist() == [6, 6]
    assert torch.equal(out.epoch_index, torch.tensor([5, 5]))
    assert out.embedding.shape[-1] == 3 * members[0].cfg.temporal.d_model
    with torch.no_grad():
        torch.testing.assert_close(whole.stage_probs, members[0](x, mask)[0].stage_probs)


def test_a_group_chosen_mid_stream_starts_its_members_context_with_the_epoch_count() -> None:
    """EEG known only from epoch 2 on: the bipolar members score epochs 2.. as from a fresh
    stream, and the epoch indices run on."""
    ens, members = _grouped()
    x, mask = _inputs()
    state = ens.init_state(2)
    with torch.no_grad():
        for t in range(2):
            ens.step(x[:, t], mask[:, t], state)
        assert ens.select_group(state, BIPOLAR) == BIPOLAR
        assert state["1.n_epochs"].tolist() == [2, 2]
        late = [ens.step(x[:, t], mask[:, t], state) for t in range(2, 6)]
        fresh = [m(x[:, 2:], mask[:, 2:])[0].stage_probs for m in members[1:]]
    torch.testing.assert_close(torch.stack([o.stage_probs for o in late], 1),
                               (fresh[0] + fresh[1]) / 2, atol=1e-5, rtol=1e-5)
    assert [int(o.epoch_index[0]) for o in late] == [2, 3, 4, 5]


def test_a_configured_derivation_overrides_a_label_that_does_not_say() -> None:
    """``[[beds]] eeg_derivation = "bipolar"``: a bare ``C3`` label would get group 0."""
    ens, _ = _grouped()
    sc = Scorer(ens, PreprocessSpec.default(), "grouped")
    sc.add_bed("told", derivation=BIPOLAR)
    sc.add_bed("guess")
    assert sc.beds["told"].state[GROUP_KEY].tolist() == [1]  # from the start
    bare = [Channel("C3", Modality.EEG, c.sfreq, c.unit, c.data) if c.label == "C3-A2" else c
            for c in synthetic_channels(3)]
    sc.score(blocks("told", bare) + blocks("guess", bare))
    assert sc.beds["told"].state[GROUP_KEY].tolist() == [1]
    assert sc.beds["guess"].state[GROUP_KEY].tolist() == [0]


def test_a_restored_bed_follows_a_changed_derivation_in_the_config() -> None:
    ens, _ = _grouped()
    sc = Scorer(ens, PreprocessSpec.default(), "grouped")
    sc.add_bed("b")
    sc.score(blocks("b", synthetic_channels(3)))  # C3-A2: referential
    saved = sc.bed_state("b")
    assert saved.recurrent[GROUP_KEY].tolist() == [0]
    again = Scorer(ens, PreprocessSpec.default(), "grouped")
    again.add_bed("b", saved, derivation=BIPOLAR)
    assert again.beds["b"].state[GROUP_KEY].tolist() == [1]
    # epoch count carried
    assert again.beds["b"].state["1.n_epochs"].tolist() == saved.recurrent["0.n_epochs"].tolist()
    assert saved.recurrent["0.n_epochs"].tolist() == [6]

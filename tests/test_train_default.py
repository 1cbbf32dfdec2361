"""``train-default`` end to end on the real shared data (few steps: mechanics, not accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from offline.train_default import train_default
from rtsleep.data.channels import BIPOLAR, REFERENTIAL
from rtsleep.models.checkpoint import load_checkpoint_meta, load_predictor
from rtsleep.models.ensemble import SleepNetEnsemble


def test_train_default_ships_a_delayed_seed_ensemble_scored_on_every_epoch(
    shared_data: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    try:
        card = train_default(shared_data, tmp_path, pretrain_steps=6, finetune_steps=2, seed=3,
                             lookahead=1, members=2, running_epochs=300,
                             wake_margin_epochs=30, rehearsal_fraction=0.25,
                             bipolar_pretrain_steps=4)
    finally:
        torch.set_num_threads(threads)
    model = load_predictor(tmp_path / "default.safetensors")
    # the two fine-tuned seeds, then the same two seeds pre-trained only, on their own
    # (4-step) pre-training (the bipolar group)
    assert isinstance(model, SleepNetEnsemble) and model.n_members == 4
    assert model.groups == (REFERENTIAL, REFERENTIAL, BIPOLAR, BIPOLAR)
    bip = load_predictor(tmp_path / "bipolar_seed3.safetensors")
    for name, v in bip.state_dict().items():
        assert torch.equal(model.members[2].state_dict()[name], v)
    base = load_predictor(tmp_path / "pretrained_seed3.safetensors").state_dict()
    assert not all(torch.equal(base[n], v) for n, v in bip.state_dict().items())
    assert card["bipolar_pretrain_steps"] == 4
    assert set(card["derivation_groups"]) == {REFERENTIAL, BIPOLAR}
    assert model.cfg.lookahead_epochs == 1
    assert model.cfg.spectral.running_epochs == 300 and card["running_epochs"] == 300
    assert "0.spectral.mean" in model.init_state(1)
    meta = load_checkpoint_meta(tmp_path / "default.safetensors")
    assert meta.card is not None
    assert meta.card["recipe"].endswith(
        "--lookahead 1 --members 2 --running-epochs 300 --wake-margin-epochs 30 --rehearsal 0.25"
        " --bipolar-pretrain-steps 4")
    assert card["wake_margin_epochs"] == 30 and card["rehearsal_fraction"] == 0.25
    assert [m["seed"] for m in card["members"]] == [3, 4]
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert cv["members"] == [3, 4] and len(cv["member_splits"]) == 2
    # the delay is flushed at each excerpt's end: all 360 scored DREAMS epochs are judged
    assert cv["pooled"]["n_epochs"] == 360
    assert cv["streaming_matches_offline"] is True
    for s in (3, 4):
        assert (tmp_path / f"pretrained_seed{s}.safetensors").is_file()


def test_train_default_rejects_a_negative_wake_margin_a_full_rehearsal_and_negative_steps(
    shared_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="wake_margin_epochs"):
        train_default(shared_data, tmp_path, pretrain_steps=1, finetune_steps=1,
                      wake_margin_epochs=-1)
    with pytest.raises(ValueError, match="rehearsal_fraction"):
        train_default(shared_data, tmp_path, pretrain_steps=1, finetune_steps=1,
                      rehearsal_fraction=1.0)
    with pytest.raises(ValueError, match="bipolar_pretrain_steps"):
        train_default(shared_data, tmp_path, pretrain_steps=1, finetune_steps=1,
                      bipolar_pretrain_steps=-1)


def test_train_default_without_bipolar_members_ships_the_fine_tuned_models_alone(
    shared_data: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    try:
        card = train_default(shared_data, tmp_path, pretrain_steps=2, finetune_steps=1,
                             members=1, bipolar_members=False)
    finally:
        torch.set_num_threads(threads)
    assert card["derivation_groups"] is None
    assert card["recipe"].endswith("--no-bipolar-members")
    assert not isinstance(load_predictor(tmp_path / "default.safetensors"), SleepNetEnsemble)


def test_train_default_pre_trains_the_bipolar_members_twice_as_long_by_default(
    shared_data: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    try:
        card = train_default(shared_data, tmp_path, pretrain_steps=2, finetune_steps=1)
    finally:
        torch.set_num_threads(threads)
    assert card["bipolar_pretrain_steps"] == 4
    assert "--bipolar-pretrain-steps" not in card["recipe"]
    history = load_checkpoint_meta(tmp_path / "bipolar_seed0.safetensors").card
    assert history is not None and history["history"]["pretrain_step"][-1] == 4

"""Spectral-model training options: per-class weight boost, stopping early on the same schedule."""

from __future__ import annotations

import copy

import pytest
import torch

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

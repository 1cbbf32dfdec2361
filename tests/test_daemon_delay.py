"""The scorer's output delay line for a model with ``lookahead_epochs = k > 0``.

Oracle: the same weights with ``k = 0`` (the causal twin). The delayed model's result for epoch
``j`` is the twin's output when epoch ``j + k`` arrives; after the end, the twin stepped with
absent epochs.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_daemon_scorer import N_EPOCHS, blocks, synthetic_channels

from offline.spectral_train import spectral_model_config
from rtsleep.daemon.scorer import EpochResult, Scorer
from rtsleep.daemon.state import decode_state, encode_state
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models.sleepnet import SleepNet

K = 2


@pytest.fixture(scope="module")
def models() -> tuple[SleepNet, SleepNet]:
    """(delayed, causal twin) with the same weights."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    delayed = SleepNet(spectral_model_config(lookahead_epochs=K)).eval()
    with torch.no_grad():
        delayed.missing_embedding.normal_()
    twin = copy.deepcopy(delayed)
    twin.cfg = spectral_model_config(lookahead_epochs=0)
    return delayed, twin


def scorer(model: SleepNet, bed: str = "b") -> Scorer:
    sc = Scorer(model, PreprocessSpec.default(), "model-x")
    sc.add_bed(bed)
    return sc


def absent_probs(sc: Scorer, n: int) -> list[list[float]]:
    """The twin's outputs for ``n`` absent epochs after what it has scored."""
    b = sc.beds["b"]
    x = torch.zeros(1, 4, sc.n_times)
    mask = torch.zeros(1, 4, dtype=torch.bool)
    with torch.no_grad():
        outs = [sc.model.step(x, mask, b.state) for _ in range(n)]  # type: ignore[operator]
    return [o.stage_probs[0].double().tolist() for o in outs]


def test_results_come_k_epochs_late_in_order_and_flush_at_the_end(
    models: tuple[SleepNet, SleepNet],
) -> None:
    delayed, twin = models
    eps = blocks("b", synthetic_channels(1))
    sc = scorer(delayed)
    released: list[list[int]] = [[r.index for r in sc.score([ep])] for ep in eps]
    assert released == [[], [], [0], [1], [2], [3]]
    assert sc.next_epoch("b") == N_EPOCHS
    tail = sc.flush()
    assert [r.index for r in tail] == [4, 5] and sc.flush() == []
    ref_sc = scorer(twin)
    ref = [r.probs for r in ref_sc.score(eps)] + absent_probs(ref_sc, K)
    got = replay(delayed, eps)
    for j, r in enumerate(got):
        assert r.index == j and r.scored
        np.testing.assert_allclose(r.probs, ref[j + K], atol=1e-6)


def replay(model: SleepNet, eps: list, bed: str = "b") -> list[EpochResult]:
    sc = scorer(model, bed)
    return sc.score(eps) + sc.flush()


def test_an_unscorable_epoch_moves_the_line_as_an_absent_epoch(
    models: tuple[SleepNet, SleepNet],
) -> None:
    delayed, twin = models
    eps = blocks("b", synthetic_channels(2, nan_epoch=2))
    sc = scorer(delayed)
    released = [[r.index for r in sc.score([ep])] for ep in eps]
    # epoch 2 cannot be scored; it is fed as absent, so epochs 0 and 1 are not held back
    assert released == [[], [], [0], [1, 2], [], [3]]
    assert [r.index for r in sc.flush()] == [4, 5]
    full = replay(delayed, eps)
    assert [r.index for r in full] == list(range(N_EPOCHS))
    assert not full[2].scored and full[2].reason is not None and "EEG" in full[2].reason
    assert sc.counters("b") == (5, 1)
    # the twin fed the same sequence: e0, e1, absent, e3, e4, e5, absent, absent
    ref_sc = scorer(twin)
    ref = [r.probs for r in ref_sc.score(eps[:2])] + absent_probs(ref_sc, 1)
    ref += [r.probs for r in ref_sc.score(eps[3:]) if r.scored] + absent_probs(ref_sc, K)
    for j in (0, 1, 3, 4, 5):
        np.testing.assert_allclose(full[j].probs, ref[j + K], atol=1e-6)


def test_unscorable_epochs_with_nothing_waiting_leave_the_state_alone(
    models: tuple[SleepNet, SleepNet],
) -> None:
    delayed, _ = models
    eps = blocks("b", synthetic_channels(3, nan_epoch=5))
    sc = scorer(delayed)
    sc.score(eps[:5])
    sc.flush()
    before = {k: v.clone() for k, v in sc.beds["b"].state.items()}
    (res,) = sc.score(eps[5:])
    assert res.index == 5 and not res.scored
    for k, v in sc.beds["b"].state.items():
        assert torch.equal(v, before[k]), k


def test_a_restart_publishes_what_waited_in_the_line(models: tuple[SleepNet, SleepNet]) -> None:
    delayed, _ = models
    eps = blocks("b", synthetic_channels(4))
    ref = replay(delayed, eps)
    first = scorer(delayed)
    assert [r.index for r in first.score(eps[:4])] == [0, 1]
    saved = decode_state(encode_state(first.bed_state("b")))
    assert saved.next_epoch == 4
    second = Scorer(delayed, PreprocessSpec.default(), "model-x")
    second.add_bed("b", saved)
    rest = second.score(eps) + second.flush()  # epochs 0-3 were consumed before the restart
    assert [r.index for r in rest] == [2, 3, 4, 5]
    for r, want in zip(rest, ref[2:], strict=True):
        assert r.probs == pytest.approx(want.probs, abs=1e-9)


def test_a_malformed_saved_line_is_refused_with_the_bed_named(
    models: tuple[SleepNet, SleepNet],
) -> None:
    delayed, _ = models
    first = scorer(delayed)
    first.score(blocks("b", synthetic_channels(5))[:3])
    st = first.bed_state("b")
    st.extra["delay_line"]["line"] = [0, 1, 2]  # longer than the delay
    with pytest.raises(ValueError, match="bed b"):
        Scorer(delayed, PreprocessSpec.default(), "model-x").add_bed("b", st)

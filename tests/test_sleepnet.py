"""SleepNet: step == forward over a long night, chunked state, state persistence, look-ahead,
parameter counts (the numbers are the spec of the presets)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rtsleep.data.recording import EXG_MODALITIES
from rtsleep.models import SleepNet, SleepNetConfig, SleepNetOutput

torch.set_num_threads(1)
M = len(EXG_MODALITIES)
S = 3000
FIELDS = ("stage_logits", "stage_probs", "apnea_prob", "hypopnea_prob", "embedding")


def _model(dtype: torch.dtype = torch.float32, **overrides: object) -> SleepNet:
    torch.manual_seed(0)
    cfg = SleepNetConfig.tiny()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return SleepNet(cfg).to(dtype).eval()


def _night(
    b: int, t: int, dtype: torch.dtype, seed: int = 1, p_present: float = 0.75
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random signals with modalities dropping in and out (and NaN where they are absent)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, M, S, generator=g, dtype=dtype)
    mask = torch.rand(b, t, M, generator=g) < p_present
    mask[:, :, 0] |= torch.rand(b, t, generator=g) > 0.1
    x[~mask] = float("nan")
    return x, mask


def _max_diff(a: SleepNetOutput, b: SleepNetOutput) -> float:
    return max(float((getattr(a, f) - getattr(b, f)).abs().max()) for f in FIELDS)


def _stack(outs: list[SleepNetOutput]) -> SleepNetOutput:
    return SleepNetOutput(
        **{
            k: torch.stack([getattr(o, k) for o in outs], dim=1)
            for k in SleepNetOutput.__annotations__
        }
    )


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_step_by_step_equals_forward_over_2000_epochs(dtype: torch.dtype, tol: float) -> None:
    net = _model(dtype)
    b, t = 2, 2000
    # mostly EEG only (keeps the test fast), with the other modalities coming and going
    x, mask = _night(b, t, dtype, p_present=0.05)
    with torch.no_grad():
        seq, _ = net(x, mask)
        state = net.init_state(b, dtype=dtype)
        stepped = _stack([net.step(x[:, i], mask[:, i], state) for i in range(t)])
    assert torch.isfinite(seq.stage_logits).all()
    assert _max_diff(seq, stepped) <= tol
    assert torch.equal(seq.epoch_index, stepped.epoch_index)
    assert int(state["n_epochs"][0]) == t


def test_two_chunks_with_carried_state_equal_one_pass() -> None:
    net = _model(torch.float64)
    x, mask = _night(2, 300, torch.float64, seed=2)
    with torch.no_grad():
        whole, whole_state = net(x, mask)
        first, state = net(x[:, :170], mask[:, :170])
        second, end_state = net(x[:, 170:], mask[:, 170:], state)
    joined = SleepNetOutput(
        **{
            k: torch.cat([getattr(first, k), getattr(second, k)], dim=1)
            for k in SleepNetOutput.__annotations__
        }
    )
    assert _max_diff(whole, joined) <= 1e-12
    assert torch.equal(whole.epoch_index, joined.epoch_index)
    for k in whole_state:
        torch.testing.assert_close(whole_state[k], end_state[k], rtol=0, atol=1e-12)


def test_forward_does_not_modify_the_given_state() -> None:
    net = _model()
    x, mask = _night(1, 5, torch.float32)
    state = net.init_state(1)
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        net(x, mask, state)
    assert all(torch.equal(before[k], state[k]) for k in state)


def test_saved_and_restored_state_continues_exactly() -> None:
    net = _model()
    x, mask = _night(3, 60, torch.float32, seed=3)
    with torch.no_grad():
        state = net.init_state(3)
        for i in range(40):
            net.step(x[:, i], mask[:, i], state)
        restored = st_load(st_save({k: v.clone() for k, v in state.items()}))
        a = [net.step(x[:, i], mask[:, i], state) for i in range(40, 60)]
        b = [net.step(x[:, i], mask[:, i], restored) for i in range(40, 60)]
    for oa, ob in zip(a, b, strict=True):
        for f in (*FIELDS, "epoch_index"):
            assert torch.equal(getattr(oa, f), getattr(ob, f))


def test_lookahead_delays_outputs_and_never_reads_the_future() -> None:
    k = 3
    net = _model(torch.float64, lookahead_epochs=k)
    x, mask = _night(1, 40, torch.float64, seed=4)
    with torch.no_grad():
        out, state = net(x, mask)
        changed = x.clone()
        changed[:, 25] = torch.randn(M, S, dtype=torch.float64)
        out2, _ = net(changed, mask)
        streamed = net.init_state(1, dtype=torch.float64)
        first = net.step(x[:, 0], mask[:, 0], streamed)
    # output at arrival i refers to epoch i - k; the first k arrivals have nothing to emit
    assert out.epoch_index[0].tolist() == list(range(-k, 40 - k))
    assert int(first.epoch_index[0]) == -k
    # arrivals before 25 cannot see epoch 25; the output for epoch 25 - k (arrival 25) can
    assert torch.equal(out.stage_logits[:, :25], out2.stage_logits[:, :25])
    assert not torch.allclose(out.stage_logits[:, 25], out2.stage_logits[:, 25])
    assert int(out2.epoch_index[0, 25]) == 25 - k
    assert int(state["n_epochs"][0]) == 40


def test_epoch_without_any_modality_still_advances_the_stream() -> None:
    net = _model()
    x, mask = _night(1, 4, torch.float32, seed=5)
    mask[:, 2] = False
    x[:, 2] = float("nan")
    with torch.no_grad():
        out, _ = net(x, mask)
    assert torch.isfinite(out.stage_probs).all()
    torch.testing.assert_close(out.stage_probs.sum(-1), torch.ones(1, 4))


def test_dual_branch_model_steps_like_it_forwards() -> None:
    net = _model(torch.float64, encoder="dual_branch")
    x, mask = _night(2, 30, torch.float64, seed=6)
    mask[0, 5, 0] = False  # an epoch without EEG
    x[0, 5, 0] = float("nan")
    with torch.no_grad():
        seq, _ = net(x, mask)
        state = net.init_state(2, dtype=torch.float64)
        stepped = _stack([net.step(x[:, i], mask[:, i], state) for i in range(30)])
    assert _max_diff(seq, stepped) <= 1e-10


def test_spectral_model_steps_like_it_forwards_and_skips_missing_eeg() -> None:
    net = _model(encoder="spectral")
    x, mask = _night(2, 40, torch.float32, seed=8)
    mask[1, 7, 0] = False  # an epoch without EEG: its samples are never read
    x[1, 7, 0] = float("nan")
    with torch.no_grad():
        seq, _ = net(x, mask)
        state = net.init_state(2)
        stepped = _stack([net.step(x[:, i], mask[:, i], state) for i in range(40)])
    assert torch.isfinite(seq.stage_logits).all()
    assert _max_diff(seq, stepped) <= 1e-5


def test_aux_features_stream_like_they_batch_and_missing_ones_are_not_read() -> None:
    from rtsleep.models.heads import HeadsConfig

    net = _model(torch.float64, heads=HeadsConfig(n_aux=2))
    x, mask = _night(1, 20, torch.float64, seed=9)
    g = torch.Generator().manual_seed(10)
    aux = torch.randn(1, 20, 2, generator=g, dtype=torch.float64)
    aux_mask = torch.rand(1, 20, 2, generator=g) > 0.3
    poisoned = torch.where(aux_mask, aux, torch.full_like(aux, float("nan")))
    with torch.no_grad():
        seq, _ = net(x, mask, aux=aux, aux_mask=aux_mask)
        state = net.init_state(1, dtype=torch.float64)
        stepped = _stack(
            [
                net.step(x[:, i], mask[:, i], state, aux=poisoned[:, i], aux_mask=aux_mask[:, i])
                for i in range(20)
            ]
        )
    assert _max_diff(seq, stepped) <= 1e-10


def test_encode_batch_does_not_change_results() -> None:
    net = _model()
    x, mask = _night(1, 12, torch.float32, seed=7)
    with torch.no_grad():
        a, _ = net(x, mask)
        net.cfg.encode_batch = 5
        b, _ = net(x, mask)
    assert _max_diff(a, b) <= 1e-6


def test_step_rejects_wrong_input_shape() -> None:
    net = _model()
    state = net.init_state(1)
    with pytest.raises(ValueError, match="x must have shape"):
        net.step(torch.randn(1, M, 2000), torch.ones(1, M, dtype=torch.bool), state)


def _n_params(cfg: SleepNetConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in SleepNet(cfg).parameters())


def test_parameter_counts_of_the_presets() -> None:
    assert _n_params(SleepNetConfig.default()) == 456_359
    assert _n_params(SleepNetConfig(encoder="dual_branch")) == 175_105
    assert _n_params(SleepNetConfig.tiny()) == 22_799
    assert _n_params(SleepNetConfig.paper()) == 294_892_159


def test_default_state_fits_the_per_bed_budget() -> None:
    net = SleepNet(SleepNetConfig.default())
    state = net.init_state(1)
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    assert nbytes == net.state_nbytes(1) == 20_488
    assert nbytes <= 100_000


def test_config_round_trips_through_json() -> None:
    for cfg in (SleepNetConfig.default(), SleepNetConfig.paper(), SleepNetConfig.tiny()):
        again = SleepNetConfig.from_json(cfg.to_json())
        assert again == cfg
        assert again.to_json() == cfg.to_json()


def test_config_rejects_unknown_fields_and_encoders() -> None:
    with pytest.raises(ValueError, match="model config"):
        SleepNetConfig.from_dict({"nonsense": 1})
    with pytest.raises(ValueError, match="encoder"):
        SleepNetConfig(encoder="lstm")

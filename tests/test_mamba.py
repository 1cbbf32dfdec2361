"""Mamba layer and temporal module: recurrent mode equals the sequence mode, exact state carry,
causality, mamba_ssm parameter names, gradients of both scans."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rtsleep.models.mamba import (
    Mamba,
    MambaConfig,
    selective_scan_chunked,
    selective_scan_sequential,
)
from rtsleep.models.temporal import MambaTemporal, TemporalConfig

D_MODEL = 16


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _temporal(dtype: torch.dtype = torch.float32, scan: str = "sequential") -> MambaTemporal:
    torch.manual_seed(0)
    model = MambaTemporal(TemporalConfig(d_model=D_MODEL, n_layers=2, scan=scan))
    with torch.no_grad():  # non-trivial D, conv and norm weights so every path matters
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                param.add_(0.3 * torch.randn_like(param))
    return model.to(dtype).eval()


def _steps(model: MambaTemporal, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run ``step`` token by token: x (B, T, D) -> (B, T, D)."""
    with torch.no_grad():
        return torch.stack([model.step(x[:, t], state) for t in range(x.shape[1])], dim=1)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_step_by_step_equals_forward_over_2000_steps(dtype: torch.dtype, tol: float) -> None:
    model = _temporal(dtype)
    x = torch.randn(2, 2000, D_MODEL, dtype=dtype)
    with torch.no_grad():
        y_seq, state_seq = model(x)
    state = model.init_state(2)
    y_step = _steps(model, x, state)
    assert (y_step - y_seq).abs().max().item() <= tol
    for key, value in state.items():
        assert (value - state_seq[key]).abs().max().item() <= tol, key


@pytest.mark.parametrize("scan", ["sequential", "chunked"])
def test_two_chunks_with_carried_state_equal_one_pass(scan: str) -> None:
    model = _temporal(torch.float64, scan=scan)
    x = torch.randn(3, 301, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        y_full, state_full = model(x)
        y_a, state_a = model(x[:, :123])
        y_b, state_b = model(x[:, 123:], state_a)
    torch.testing.assert_close(torch.cat([y_a, y_b], dim=1), y_full, rtol=0, atol=1e-12)
    for key in state_full:
        torch.testing.assert_close(state_b[key], state_full[key], rtol=0, atol=1e-12)


def test_chunk_of_one_token_equals_step() -> None:
    model = _temporal(torch.float64)
    x = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    state = model.init_state(2)
    y_step = _steps(model, x, state)
    carried = None
    outputs = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y_t, carried = model(x[:, t : t + 1], carried)
            outputs.append(y_t)
    torch.testing.assert_close(torch.cat(outputs, dim=1), y_step, rtol=0, atol=1e-12)


def test_prefill_then_step_equals_forward() -> None:
    model = _temporal(torch.float32)
    x = torch.randn(2, 300, D_MODEL)
    with torch.no_grad():
        y_full, _ = model(x)
        y_pre, state = model(x[:, :200])
    y_rest = _steps(model, x[:, 200:], state)
    assert (torch.cat([y_pre, y_rest], dim=1) - y_full).abs().max().item() <= 1e-5


def test_layer_prefill_state_matches_mamba_ssm_layout() -> None:
    """After a forward, conv_state holds the last d_conv conv inputs (in_proj's x half)."""
    torch.manual_seed(1)
    layer = Mamba(MambaConfig(d_model=D_MODEL)).double()
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, (conv_state, _) = layer(x)
        xs = layer.in_proj(x)[..., : layer.d_inner]  # (B, L, d_inner)
    torch.testing.assert_close(conv_state, xs[:, -layer.d_conv :].transpose(1, 2))
    with torch.no_grad():  # a sequence shorter than the kernel is left-padded with zeros
        _, (short_state, _) = layer(x[:, :2])
    assert torch.equal(short_state[..., :2], torch.zeros_like(short_state[..., :2]))
    torch.testing.assert_close(short_state[..., 2:], xs[:, :2].transpose(1, 2))


def test_state_restored_from_a_clone_replays_exactly() -> None:
    model = _temporal(torch.float32)
    x = torch.randn(2, 60, D_MODEL)
    state = model.init_state(2)
    _steps(model, x[:, :30], state)
    saved = {key: value.clone() for key, value in state.items()}
    y_first = _steps(model, x[:, 30:], state)
    restored = {key: value.clone() for key, value in saved.items()}
    y_again = _steps(model, x[:, 30:], restored)
    assert torch.equal(y_first, y_again)


def test_state_restored_from_safetensors_bytes_replays_exactly() -> None:
    model = _temporal(torch.float32)
    x = torch.randn(3, 50, D_MODEL)
    state = model.init_state(3)
    _steps(model, x[:, :25], state)
    blob = st_save(state)
    y_first = _steps(model, x[:, 25:], state)
    reloaded = st_load(blob)
    assert set(reloaded) == {
        f"layers.{i}.{kind}" for i in range(2) for kind in ("conv_state", "ssm_state")
    }
    y_again = _steps(model, x[:, 25:], reloaded)
    assert torch.equal(y_first, y_again)


@pytest.mark.parametrize("scan", ["sequential", "chunked"])
def test_outputs_are_causal(scan: str) -> None:
    model = _temporal(torch.float32, scan=scan)
    x = torch.randn(2, 100, D_MODEL)
    t = 57
    x_changed = x.clone()
    x_changed[:, t + 1 :] = 10 * torch.randn_like(x_changed[:, t + 1 :])
    with torch.no_grad():
        y, _ = model(x)
        y_changed, _ = model(x_changed)
    torch.testing.assert_close(y_changed[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
    assert (y_changed[:, t + 1 :] - y[:, t + 1 :]).abs().max().item() > 0.1


# The mamba_ssm v1 Mamba(d_model=48, d_state=16, d_conv=4, expand=2) parameter list, in order
# (d_inner 96, dt_rank ceil(48 / 16) = 3). This list is the spec.
# nn.Module lists its own parameters (A_log, D) before its submodules' (registration order).
MAMBA_SSM_V1_PARAMS_D48: list[tuple[str, tuple[int, ...]]] = [
    ("A_log", (96, 16)),
    ("D", (96,)),
    ("in_proj.weight", (192, 48)),
    ("conv1d.weight", (96, 1, 4)),
    ("conv1d.bias", (96,)),
    ("x_proj.weight", (35, 96)),
    ("dt_proj.weight", (96, 3)),
    ("dt_proj.bias", (96,)),
    ("out_proj.weight", (48, 96)),
]


def test_mamba_parameter_names_and_shapes_equal_mamba_ssm_v1() -> None:
    layer = Mamba(MambaConfig(d_model=48))
    got = [(name, tuple(p.shape)) for name, p in layer.named_parameters()]
    assert got == MAMBA_SSM_V1_PARAMS_D48


def test_temporal_parameter_names_follow_mamba_ssm_block() -> None:
    model = MambaTemporal(TemporalConfig(d_model=48, n_layers=2))
    got = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    expected: list[tuple[str, tuple[int, ...]]] = []
    for i in range(2):
        expected.append((f"layers.{i}.norm.weight", (48,)))
        expected += [(f"layers.{i}.mixer.{name}", shape) for name, shape in MAMBA_SSM_V1_PARAMS_D48]
    expected.append(("norm_f.weight", (48,)))
    assert got == expected


def test_mamba_init_is_s4d_real_with_dt_in_range() -> None:
    cfg = MambaConfig(d_model=32, dt_min=0.002, dt_max=0.05)
    layer = Mamba(cfg)
    expected_a_log = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(64, 16)
    torch.testing.assert_close(layer.A_log.detach(), expected_a_log)
    assert torch.equal(layer.D.detach(), torch.ones(64))
    dt = torch.nn.functional.softplus(layer.dt_proj.bias.detach())
    assert dt.min().item() >= 0.002 * (1 - 1e-4) and dt.max().item() <= 0.05 * (1 + 1e-4)
    bound = cfg.dt_rank_value**-0.5
    assert layer.dt_proj.weight.abs().max().item() <= bound


def test_state_layout_and_nbytes() -> None:
    model = MambaTemporal(TemporalConfig(d_model=128, n_layers=2))
    state = model.init_state(5, dtype=torch.float64)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "layers.0.conv_state": (5, 256, 4),
        "layers.0.ssm_state": (5, 256, 16),
        "layers.1.conv_state": (5, 256, 4),
        "layers.1.ssm_state": (5, 256, 16),
    }
    assert all(v.dtype == torch.float64 and not v.any() for v in state.values())
    # 2 layers x 256 x (4 + 16) x 4 bytes per stream in fp32
    assert model.state_nbytes() == 40_960
    assert model.state_nbytes(3) == 3 * 40_960


def _scan_inputs(
    n_batch: int, n_steps: int, d_inner: int, d_state: int, dtype: torch.dtype
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(3)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return {
        "u": rand(n_batch, n_steps, d_inner),
        "delta": rand(n_batch, n_steps, d_inner),
        "A": -torch.exp(rand(d_inner, d_state)),
        "B": rand(n_batch, n_steps, d_state),
        "C": rand(n_batch, n_steps, d_state),
        "D": rand(d_inner),
        "z": rand(n_batch, n_steps, d_inner),
        "delta_bias": rand(d_inner),
        "initial_state": rand(n_batch, d_inner, d_state),
    }


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 600])
def test_chunked_scan_equals_sequential_scan(chunk_size: int | None) -> None:
    inputs = _scan_inputs(2, 333, 8, 4, torch.float64)
    y_ref, h_ref = selective_scan_sequential(**inputs)
    y, h = selective_scan_chunked(**inputs, chunk_size=chunk_size)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)


def test_chunked_scan_stays_finite_under_strong_decay() -> None:
    """Huge delta * |A| must not overflow the chunked decay (exp of sums <= 0 only)."""
    inputs = _scan_inputs(1, 200, 4, 4, torch.float32)
    inputs["delta_bias"] = torch.full((4,), 60.0)
    y_ref, _ = selective_scan_sequential(**inputs)
    y, _ = selective_scan_chunked(**inputs, chunk_size=50)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_backward_through_512_steps_matches_between_scans() -> None:
    grads = {}
    for scan in ("sequential", "chunked"):
        model = _temporal(torch.float64, scan=scan).train()
        x = torch.randn(
            2, 512, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
        )
        x.requires_grad_(True)
        y, state = model(x)
        loss = y.square().mean() + state["layers.1.ssm_state"].square().mean()
        loss.backward()
        assert x.grad is not None
        grads[scan] = {"x": x.grad.clone()}
        grads[scan].update(
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        )
    assert set(grads["sequential"]) == set(grads["chunked"])
    assert len(grads["sequential"]) == 1 + sum(1 for _ in _temporal().parameters())
    for name, grad in grads["sequential"].items():
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grads["chunked"][name], grad, rtol=1e-9, atol=1e-12)
    # the first input influences the loss through the whole 512-step recurrence
    assert grads["sequential"]["x"][:, 0].abs().max().item() > 0


def test_gradient_flows_through_the_carried_state() -> None:
    model = _temporal(torch.float64)
    x = torch.randn(1, 20, D_MODEL, dtype=torch.float64, requires_grad=True)
    _, state = model(x[:, :10])
    y, _ = model(x[:, 10:], state)
    y.sum().backward()
    assert x.grad is not None and x.grad[:, :10].abs().max().item() > 0


def test_mamba_step_accepts_mamba_ssm_shape() -> None:
    torch.manual_seed(2)
    layer = Mamba(MambaConfig(d_model=D_MODEL)).double()
    x = torch.randn(2, 1, D_MODEL, dtype=torch.float64)
    conv_a, ssm_a = layer.allocate_inference_cache(2, max_seqlen=1)
    conv_a, ssm_a = conv_a.double(), ssm_a.double()
    conv_b, ssm_b = conv_a.clone(), ssm_a.clone()
    with torch.no_grad():
        y3 = layer.step(x, conv_a, ssm_a)
        y2 = layer.step(x[:, 0], conv_b, ssm_b)
    assert y3.shape == (2, 1, D_MODEL) and y2.shape == (2, D_MODEL)
    assert torch.equal(y3[:, 0], y2) and torch.equal(ssm_a, ssm_b) and torch.equal(conv_a, conv_b)
    assert ssm_a.abs().max().item() > 0  # updated in place


def test_bad_shapes_raise_value_errors() -> None:
    model = _temporal()
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, 5, D_MODEL + 1))
    with pytest.raises(ValueError, match="x must be"):
        model.step(torch.randn(2, 1, D_MODEL), model.init_state(2))
    with pytest.raises(ValueError, match="conv_state must be"):
        model.step(torch.randn(3, D_MODEL), model.init_state(2))
    with pytest.raises(ValueError, match="no entry"):
        model.step(torch.randn(2, D_MODEL), {})
    with pytest.raises(ValueError, match="dt_rank"):
        MambaConfig(d_model=8, dt_rank="big")
    with pytest.raises(ValueError, match="scan"):
        TemporalConfig(d_model=8, scan="parallel")


def test_cpu_path_never_imports_mamba_ssm() -> None:
    code = (
        "import sys, torch\n"
        "from rtsleep.models.temporal import MambaTemporal, TemporalConfig\n"
        "m = MambaTemporal(TemporalConfig(d_model=8, n_layers=1))\n"
        "y, s = m(torch.randn(1, 5, 8))\n"
        "m.step(torch.randn(1, 8), s)\n"
        "sys.exit(1 if 'mamba_ssm' in sys.modules else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_dt_rank_auto_is_ceil_d_model_over_16() -> None:
    for d_model in (8, 16, 17, 100):
        assert MambaConfig(d_model=d_model).dt_rank_value == math.ceil(d_model / 16)
    assert MambaConfig(d_model=100, dt_rank=5).dt_rank_value == 5


def test_streams_are_independent_rows_of_the_state() -> None:
    """A batch of beds steps like each bed alone, so beds can be added or removed by indexing."""
    model = _temporal(torch.float64)
    x = torch.randn(3, 30, D_MODEL, dtype=torch.float64)
    state = model.init_state(3)
    y_batch = _steps(model, x, state)
    for b in range(3):
        alone = model.init_state(1)
        torch.testing.assert_close(
            _steps(model, x[b : b + 1], alone), y_batch[b : b + 1], rtol=0, atol=1e-12
        )
        for key, value in alone.items():
            torch.testing.assert_close(value, state[key][b : b + 1], rtol=0, atol=1e-12)

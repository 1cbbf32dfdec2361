"""Parity with the official mamba_ssm ``Mamba`` on CUDA: the same weights give the same forward,
prefill states and recurrent steps. Skipped unless CUDA is available and mamba_ssm imports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from rtsleep.models.mamba import Mamba, MambaConfig

pytestmark = pytest.mark.gpu

TOL = 1e-3
D_MODEL = 64


def _mamba_ssm() -> Any:
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    try:
        import mamba_ssm
    except Exception as err:  # noqa: BLE001 - any import failure means the reference is absent
        pytest.skip(f"mamba_ssm does not import: {err}")
    return mamba_ssm


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def _pair(use_fast_path: bool = True) -> tuple[Mamba, Any]:
    """Our layer and mamba_ssm's, same weights, on CUDA."""
    mamba_ssm = _mamba_ssm()
    torch.manual_seed(0)
    ours = Mamba(MambaConfig(d_model=D_MODEL, use_fast_path=use_fast_path)).cuda().eval()
    ref = (
        mamba_ssm.Mamba(d_model=D_MODEL, d_state=16, d_conv=4, expand=2, layer_idx=0).cuda().eval()
    )
    ref.load_state_dict(ours.state_dict())  # strict: names and shapes must match
    return ours, ref


@pytest.mark.parametrize("use_fast_path", [True, False])
def test_forward_matches_mamba_ssm(use_fast_path: bool) -> None:
    ours, ref = _pair(use_fast_path)
    x = torch.randn(2, 500, D_MODEL, device="cuda")
    with torch.no_grad():
        y_ours, _ = ours(x)
        y_ref = ref(x)
    assert (y_ours - y_ref).abs().max().item() <= TOL


def test_step_matches_mamba_ssm_step() -> None:
    ours, ref = _pair()
    x = torch.randn(2, 200, D_MODEL, device="cuda")
    conv_o, ssm_o = ours.allocate_inference_cache(2, 200)
    conv_r, ssm_r = ref.allocate_inference_cache(2, 200)
    assert conv_o.shape == conv_r.shape and ssm_o.shape == ssm_r.shape
    worst = 0.0
    with torch.no_grad():
        for t in range(x.shape[1]):
            y_o = ours.step(x[:, t : t + 1], conv_o, ssm_o)
            y_r, _, _ = ref.step(x[:, t : t + 1], conv_r, ssm_r)
            worst = max(worst, (y_o - y_r).abs().max().item())
    assert worst <= TOL
    assert (ssm_o - ssm_r).abs().max().item() <= TOL
    assert (conv_o - conv_r).abs().max().item() <= TOL


def test_prefill_states_and_next_step_match_mamba_ssm() -> None:
    ours, ref = _pair()  # skips unless CUDA and mamba_ssm
    from mamba_ssm.utils.generation import InferenceParams

    x = torch.randn(2, 101, D_MODEL, device="cuda")
    params = InferenceParams(max_seqlen=101, max_batch_size=2)
    with torch.no_grad():
        y_ref = ref(x[:, :100], inference_params=params)
        y_ours, (conv_o, ssm_o) = ours(x[:, :100])
        conv_r, ssm_r = params.key_value_memory_dict[0]
        assert (y_ours - y_ref).abs().max().item() <= TOL
        assert (conv_o - conv_r).abs().max().item() <= TOL
        assert (ssm_o - ssm_r).abs().max().item() <= TOL
        params.seqlen_offset += 100
        next_ref = ref(x[:, 100:], inference_params=params)
        next_ours = ours.step(x[:, 100:], conv_o, ssm_o)
    assert (next_ours - next_ref).abs().max().item() <= TOL


def test_fast_path_gradients_match_pure_torch() -> None:
    ours, _ = _pair(use_fast_path=True)
    x = torch.randn(2, 300, D_MODEL, device="cuda")
    grads = []
    for fast in (True, False):
        ours.cfg.use_fast_path = fast
        ours.zero_grad(set_to_none=True)
        y, _ = ours(x)
        y.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1])
    for name, grad in grads[1].items():
        scale = max(1.0, grad.abs().max().item())
        assert (grads[0][name] - grad).abs().max().item() <= TOL * scale, name

"""Cross-validation of the ECG apnea model: subject-wise folds, no leakage, the averaged output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import offline.apnea_train as at
from offline.apnea_train import NightInputs, TraceTrainConfig, TrainConfig, cross_validate
from rtsleep.apnea.ecg_model import EcgApneaConfig, EcgApneaNet
from rtsleep.apnea.features import N_FEATURES, TRACE_LEN
from rtsleep.apnea.trace_model import EcgTraceConfig, EcgTraceNet


def _night(i: int, t: int) -> NightInputs:
    rng = np.random.default_rng(i)
    tr = rng.standard_normal((t, TRACE_LEN))
    return NightInputs(
        features=rng.standard_normal((t, N_FEATURES)) + i,  # night i is offset by i
        traces={"causal": tr, "noncausal": tr[::-1].copy()},
        labels=(rng.random(t) < 0.4).astype(np.float32),
    )


def test_cross_validation_never_trains_on_the_test_night(monkeypatch: pytest.MonkeyPatch) -> None:
    nights = [_night(i, 12 + i) for i in range(5)]
    seen: list[tuple[str, set[int]]] = []

    def fake_pair(
        train: list[NightInputs], variant: str, cfg: TrainConfig, tcfg: TraceTrainConfig
    ) -> tuple[EcgApneaNet, EcgTraceNet]:
        seen.append((variant, {int(round(float(n.features.mean()))) for n in train}))
        torch.manual_seed(0)
        gru = EcgApneaNet(EcgApneaConfig(bidirectional=variant == "noncausal")).eval()
        return gru, EcgTraceNet(EcgTraceConfig()).eval()

    monkeypatch.setattr(at, "train_variant_pair", fake_pair)
    out = cross_validate(nights, 5, TrainConfig(), TraceTrainConfig())
    # LOSO: fold f trains on every night but f, once per variant
    assert [s for _, s in seen] == [set(range(5)) - {f} for f in range(5) for _ in range(2)]
    for v in ("causal", "noncausal"):
        for i, n in enumerate(nights):
            pf, pt, pm = (out[v][p][i] for p in ("features", "trace", "model"))
            assert pf.shape == pt.shape == pm.shape == (len(n.labels),)
            np.testing.assert_allclose(pm, 0.5 * pf + 0.5 * pt)
            assert not np.allclose(pf, pt)


def test_trace_cnn_training_lowers_its_loss_on_a_learnable_pattern() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(np.float32)
    x = rng.standard_normal((400, TRACE_LEN)) * 0.3
    x[y == 1] += np.sin(np.arange(TRACE_LEN) * 2 * np.pi / 45.0)  # 45-s cycles in "apnea" minutes
    cfg = TraceTrainConfig(epochs=4, batch=32)
    untrained = EcgTraceNet(EcgTraceConfig()).eval()
    net = at.train_trace_net([x[:200], x[200:]], [y[:200], y[200:]], EcgTraceConfig(), cfg)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    with torch.no_grad():
        before = torch.nn.functional.binary_cross_entropy_with_logits(untrained(xt), yt)
        after = torch.nn.functional.binary_cross_entropy_with_logits(net(xt), yt)
        acc = ((net(xt) > 0).float() == yt).float().mean()
    assert after < 0.5 * before
    assert acc > 0.9

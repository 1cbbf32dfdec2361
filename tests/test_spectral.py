"""Spectral encoder: its band powers are exactly the Sleep-EDF feature definition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.signal import welch

from rtsleep.data.readers import read_recording
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig
from rtsleep.models.spectral import (
    SLEEP_EDF_BANDS,
    SpectralConfig,
    SpectralEncoder,
    sleep_edf_band_log_power,
)


def test_band_log_power_equals_scipy_welch_band_means() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3000)) * 2.0  # preprocessed units (20 µV each)
    enc = SpectralEncoder(SpectralConfig())
    got = enc.band_log_power(torch.tensor(x, dtype=torch.float32)).numpy()
    f, pxx = welch(x * 20.0, fs=100.0, nperseg=256)  # µV²/Hz
    want = np.stack(
        [np.log(pxx[:, (f >= lo) & (f <= hi)].mean(-1) + 1e-4) for lo, hi in SLEEP_EDF_BANDS], -1
    )
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_band_log_power_reproduces_the_shared_sleep_edf_features(shared_data: Path) -> None:
    folder = shared_data / "sleep-edf-sc-subset"
    rec = read_recording("sleep-edf", folder / "psg-excerpt" / "short_psg.edf")
    fpz = rec.channel("EEG Fpz-Cz").data  # µV at 100 Hz, 10 epochs
    enc = SpectralEncoder(SpectralConfig(input_scale_uv=1.0))
    got = enc.band_log_power(torch.tensor(fpz[:30000].reshape(10, 3000), dtype=torch.float32))
    with np.load(folder / "features" / "SC4001E0.npz") as d:
        cols = torch.tensor(d["X"][:10, 0:4])
    np.testing.assert_allclose(got.numpy(), sleep_edf_band_log_power(cols).numpy(), atol=1e-4)


def test_relative_features_ignore_the_channel_gain() -> None:
    enc = SpectralEncoder(SpectralConfig())
    x = torch.randn(2, 3000)
    a, b = enc.band_log_power(x), enc.band_log_power(3.0 * x)
    fa, fb = enc.features(a), enc.features(b)
    n = len(SLEEP_EDF_BANDS)
    torch.testing.assert_close(fa[:, n:], fb[:, n:], atol=1e-3, rtol=0)
    assert not torch.allclose(fa[:, :n], fb[:, :n], atol=0.5)


def test_spectral_sleepnet_uses_missing_embedding_without_eeg() -> None:
    torch.manual_seed(0)
    model = SleepNet(SleepNetConfig(encoder="spectral")).eval()
    x = torch.randn(2, 4, 3000)
    mask = torch.tensor([[True, False, False, False], [False, True, True, True]])
    emb = model.encode(x, mask)
    torch.testing.assert_close(emb[1], model.missing_embedding.detach())
    assert not torch.allclose(emb[0], model.missing_embedding.detach())

"""ECG pathway: chunk-exact R peaks on real ECG, HR cleaning, features, model file, stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtsleep.apnea.ecg_model import (
    EcgApneaConfig,
    EcgApneaModel,
    EcgApneaNet,
    load_ecg_model,
    save_ecg_model,
)
from rtsleep.apnea.ecg_stream import EcgApneaStream, epoch_probabilities
from rtsleep.apnea.features import (
    N_FEATURES,
    NONCAUSAL_TRACE_SHIFT_S,
    TRACE_LEN,
    sequence_features,
    sequence_traces,
    window_features,
    window_trace,
)
from rtsleep.apnea.hr import BeatCleaner, rr_to_hr, valid_beats
from rtsleep.apnea.rpeaks import StreamingRPeakDetector, detect_rpeaks
from rtsleep.apnea.trace_model import EcgTraceConfig, EcgTraceNet
from rtsleep.data.errors import DataError

torch.set_num_threads(1)


def _excerpt3_ecg(shared_data: Path) -> np.ndarray:
    import edfio

    edf = edfio.read_edf(shared_data / "dreams-spindles" / "excerpt3.edf")
    return next(s for s in edf.signals if s.label == "ECG").data


def _slpdb_ecg(shared_data: Path, name: str) -> np.ndarray:
    path = shared_data / "slpdb-annotations" / "Dataset_Modified_Form" / f"{name}.txt"
    lines = path.read_text().splitlines()
    skip = 0 if lines[0].split()[0].isdigit() else 2
    return np.loadtxt(path, skiprows=skip)[:, 1]


def _stream(det: StreamingRPeakDetector, x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 4000))
        out.append(det.push(x[i : i + n]))
        i += n
    out.append(det.flush())
    return np.concatenate(out)


def _f1(a: np.ndarray, b: np.ndarray, tol: float = 0.05) -> float:
    hits = sum(np.min(np.abs(b - t)) <= tol for t in a) if b.size else 0
    return 2 * hits / (a.size + b.size)


def test_rpeaks_chunked_equal_offline_on_dreams_ecg_at_50_hz(shared_data: Path) -> None:
    ecg = _excerpt3_ecg(shared_data)
    offline = detect_rpeaks(ecg, 50.0)
    assert offline.size > 1500  # 30 min at ~60 bpm
    np.testing.assert_array_equal(_stream(StreamingRPeakDetector(50.0), ecg, 0), offline)


def test_rpeaks_blocks_agree_with_whole_signal_sleepecg(shared_data: Path) -> None:
    import sleepecg
    from scipy.signal import resample_poly

    ecg = _excerpt3_ecg(shared_data)
    whole = sleepecg.detect_heartbeats(resample_poly(ecg, 2, 1), 100.0) / 100.0
    assert _f1(detect_rpeaks(ecg, 50.0), whole) >= 0.99  # measured 0.992


@pytest.mark.parametrize("name", ["slp01a", "slp04", "slp32"])
def test_rpeaks_chunked_equal_offline_on_slpdb_ecg_at_250_hz(shared_data: Path, name: str) -> None:
    ecg = _slpdb_ecg(shared_data, name)
    offline = detect_rpeaks(ecg, 250.0)
    assert 50 <= offline.size <= 100  # 60 s of adult sinus rhythm
    np.testing.assert_array_equal(_stream(StreamingRPeakDetector(250.0), ecg, 1), offline)


def test_rpeaks_find_no_beats_in_flat_ecg_instead_of_raising(shared_data: Path) -> None:
    # a lead off (zeros) at 50 Hz and a held value at 250 Hz, each longer than a detector window
    ecg = _excerpt3_ecg(shared_data)[: 50 * 120].copy()
    ecg[50 * 30 : 50 * 70] = 0.0
    beats = detect_rpeaks(ecg, 50.0)
    assert beats.size > 60 and not ((beats > 31.0) & (beats < 69.0)).any()
    np.testing.assert_array_equal(_stream(StreamingRPeakDetector(50.0), ecg, 2), beats)
    slp = _slpdb_ecg(shared_data, "slp01a")
    slp[250 * 10 : 250 * 40] = slp[250 * 10 - 1]
    assert not ((detect_rpeaks(slp, 250.0) > 11.0) & (detect_rpeaks(slp, 250.0) < 39.0)).any()
    assert detect_rpeaks(np.zeros(250 * 30), 250.0).size == 0


def test_rpeaks_reject_non_finite_chunk() -> None:
    with pytest.raises(DataError, match="ECG: .*NaN"):
        StreamingRPeakDetector(100.0).push(np.array([0.0, np.nan]))


def test_hr_cleaning_rejects_out_of_range_and_missed_beats() -> None:
    hr = np.full(40, 1.0)
    hr[10] = 0.5 * 1.0  # missed beat: RR doubled
    hr[20] = 100.0  # spike
    hr[30] = 1.25  # +25 %: plausible
    ok = valid_beats(hr)
    assert not ok[10] and not ok[20] and ok[30] and ok.sum() == 38


def test_streaming_cleaner_matches_offline_on_real_hr(shared_data: Path) -> None:
    d = np.load(shared_data / "apnea-ecg-hr" / "train" / "a01.npz")
    hr = d["hr"][:5000]
    cl = BeatCleaner()
    got = np.concatenate([cl.push(hr[i : i + 333]) for i in range(0, hr.size, 333)])
    np.testing.assert_array_equal(got, valid_beats(hr))
    assert 0.9 < got.mean() < 1.0  # real series holds some artefacts


def test_features_read_nothing_after_the_window_end() -> None:
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.8, 1.2, 800))
    hr = 1.0 / np.diff(np.concatenate([[0.0], t]))
    ok = valid_beats(hr)
    f_all = window_features(t, hr, ok, 400.0)
    cut = t < 400.0
    f_cut = window_features(t[cut], hr[cut], ok[cut], 400.0)
    np.testing.assert_array_equal(f_all, f_cut)
    assert np.isfinite(f_all).all()


def _untrained_model(seed: int = 0) -> EcgApneaModel:
    torch.manual_seed(seed)
    nets = [EcgApneaNet(EcgApneaConfig(bidirectional=b)) for b in (False, True)]
    for n in nets:
        n.set_normalisation(np.full(N_FEATURES, 1.0), np.full(N_FEATURES, 2.0))
        n.eval()
    cnns = [EcgTraceNet(EcgTraceConfig()).eval() for _ in range(2)]
    return EcgApneaModel(nets[0], nets[1], cnns[0], cnns[1], {"note": "test"})


def _traces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, TRACE_LEN))


def test_model_file_round_trip_has_no_pickle_and_same_outputs(tmp_path: Path) -> None:
    m = _untrained_model()
    m.trace_weight = 0.3
    p = tmp_path / "m.safetensors"
    save_ecg_model(m, p)
    assert b"pickle" not in p.read_bytes()[:2000]
    m2 = load_ecg_model(p)
    assert m2.trace_weight == 0.3
    x = np.random.default_rng(0).standard_normal((30, N_FEATURES))
    tr = _traces(30)
    for v in ("causal", "noncausal"):
        np.testing.assert_allclose(
            m2.predict_proba(x, tr, v), m.predict_proba(x, tr, v), atol=1e-7
        )


def test_model_probability_is_the_weighted_mean_of_gru_and_trace_cnn() -> None:
    m = _untrained_model(4)
    x = np.random.default_rng(1).standard_normal((25, N_FEATURES))
    tr = _traces(25, 2)
    m.trace_weight = 0.0
    p_gru = m.predict_proba(x, tr, "causal")
    m.trace_weight = 1.0
    p_cnn = m.predict_proba(x, tr, "causal")
    np.testing.assert_allclose(p_cnn, m.trace_proba(tr, "causal"), atol=1e-12)
    assert not np.allclose(p_gru, p_cnn)
    m.trace_weight = 0.5
    np.testing.assert_allclose(m.predict_proba(x, tr, "causal"), (p_gru + p_cnn) / 2, atol=1e-12)
    with pytest.raises(ValueError, match="traces"):
        m.predict_proba(x, tr[:-1], "causal")
    with pytest.raises(ValueError, match="trace_weight"):
        EcgApneaModel(m.causal, m.noncausal, m.causal_trace, m.noncausal_trace, {}, 1.5)


def test_trace_cnn_scores_each_trace_independently() -> None:
    net = EcgTraceNet(EcgTraceConfig()).eval()
    tr = torch.as_tensor(_traces(6, 5), dtype=torch.float32)
    with torch.no_grad():
        whole = net(tr.reshape(2, 3, TRACE_LEN))  # (2, 3)
        one = net(tr[4])  # ()
    assert whole.shape == (2, 3) and one.shape == ()
    assert torch.allclose(whole.reshape(6)[4], one, atol=1e-6)
    with pytest.raises(ValueError, match="samples"):
        net(tr[:, :100])


def test_window_trace_is_causal_relative_and_in_10_bpm_units() -> None:
    t = np.arange(1.0, 700.0, 1.0)  # one beat per second
    bpm = 60.0 + 10.0 * (t > 500.0)  # a 10-bpm step at 500 s
    hr = bpm / 60.0
    ok = valid_beats(hr)
    tr = window_trace(t, hr, ok, 560.0)  # covers 260-560 s
    assert tr.shape == (TRACE_LEN,)
    np.testing.assert_allclose(tr[:230], 0.0, atol=1e-9)  # below the step: at the median
    np.testing.assert_allclose(tr[-50:], 1.0, atol=1e-9)  # 10 bpm above the median = 1 unit
    cut = t < 560.0
    np.testing.assert_array_equal(tr, window_trace(t[cut], hr[cut], ok[cut], 560.0))
    np.testing.assert_array_equal(window_trace(t, hr, ok, 20.0), np.zeros(TRACE_LEN))  # < 30 beats
    shifted = sequence_traces(t, hr, ok, np.array([440.0]), NONCAUSAL_TRACE_SHIFT_S)
    np.testing.assert_array_equal(shifted[0], tr)  # 440 + 120 = 560: centred on the minute


def test_model_file_missing_or_foreign_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_ecg_model(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"), metadata={"a": "b"})
    with pytest.raises(DataError, match="not an rtsleep ECG apnea model"):
        load_ecg_model(tmp_path / "x.safetensors")


def test_causal_variant_ignores_the_future_and_noncausal_uses_it() -> None:
    m = _untrained_model(1)
    x = np.random.default_rng(2).standard_normal((40, N_FEATURES))
    y = x.copy()
    y[30:] += 3.0
    tr = _traces(40, 3)
    pc, pc2 = m.predict_proba(x, tr, "causal"), m.predict_proba(y, tr, "causal")
    np.testing.assert_allclose(pc[:30], pc2[:30], atol=1e-7)
    assert not np.allclose(
        m.predict_proba(x, tr, "noncausal")[:30], m.predict_proba(y, tr, "noncausal")[:30]
    )


def test_ecg_stream_per_epoch_equals_offline_on_real_beats(shared_data: Path) -> None:
    d = np.load(shared_data / "apnea-ecg-hr" / "train" / "a03.npz")
    hr = d["hr"][:4000]
    t = d["t"][:4000] * 60.0
    beats = np.concatenate([[t[0] - 1.0 / hr[0]], t])  # beat times back from the rates
    beats = np.unique(beats)
    m = _untrained_model(3)
    n_epochs = int(beats[-1] // 30) - 1
    offline = epoch_probabilities(beats, n_epochs, m)
    st = EcgApneaStream(m)
    got: list[tuple[int, float]] = []
    for i in range(0, beats.size, 97):
        chunk = beats[i : i + 97]
        got += st.push_beats(chunk, float(chunk[-1]))
    probs = np.array([p for k, p in got if k < n_epochs])
    assert [k for k, _ in got][:n_epochs] == list(range(n_epochs))
    np.testing.assert_allclose(probs, offline, atol=1e-5)


def test_ecg_stream_from_raw_ecg_scores_each_epoch_once(shared_data: Path) -> None:
    ecg = _excerpt3_ecg(shared_data)[: 50 * 300]  # 5 min
    st = EcgApneaStream(_untrained_model(), ecg_fs=50.0)
    got = []
    for i in range(0, ecg.size, 1500):
        got += st.push_ecg(ecg[i : i + 1500])
    ks = [k for k, _ in got]
    assert ks == list(range(len(ks))) and len(ks) >= 9  # delay <= 12 s plus one epoch
    assert all(0.0 <= p <= 1.0 for _, p in got)


def test_sequence_features_shape(shared_data: Path) -> None:
    d = np.load(shared_data / "apnea-ecg-hr" / "train" / "c01.npz")
    t, hr = d["t"] * 60.0, d["hr"]
    f = sequence_features(t, hr, valid_beats(hr), np.arange(1, 21) * 60.0 + 30.0)
    assert f.shape == (20, N_FEATURES)
    assert np.isfinite(f[5:]).all()


def test_rr_to_hr_refuses_unsorted_beats() -> None:
    with pytest.raises(DataError, match="strictly increasing"):
        rr_to_hr(np.array([1.0, 0.5]))

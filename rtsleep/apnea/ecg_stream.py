"""Per-bed streaming of the ECG apnea pathway: ECG (or beats) -> per-epoch apnea probability.

Epoch ``k`` (``[30 k, 30 k + 30)`` s from the bed's anchor) gets the causal model's probability
for the 60-s window ending at the epoch's end (the feature GRU's and the trace CNN's, averaged
as :meth:`rtsleep.apnea.ecg_model.EcgApneaModel.combine` does). Windows ending at even and odd
epochs form two sequences with the 60-s hop the model was trained on (phase ``k mod 2``), each
with its own GRU state and running-median context. An epoch is scored once every beat up to its
end is known (the R-peak detector's delay, about ``block_s + lookahead_s`` = 12 s).
"""

from __future__ import annotations

import numpy as np
import torch

from rtsleep.apnea.ecg_model import EcgApneaModel
from rtsleep.apnea.features import (
    LONG_S,
    TRACE_S,
    ContextTracker,
    sequence_traces,
    window_features,
    window_trace,
)
from rtsleep.apnea.hr import BeatCleaner, HrCleanConfig
from rtsleep.apnea.rpeaks import RPeakConfig, StreamingRPeakDetector
from rtsleep.data.errors import DataError
from rtsleep.data.recording import EPOCH_S


class EcgApneaStream:
    """One bed. Feed raw ECG with :meth:`push_ecg`, or beat times with :meth:`push_beats`."""

    def __init__(
        self,
        model: EcgApneaModel,
        ecg_fs: float | None = None,
        source: str = "ECG",
        rpeak_config: RPeakConfig | None = None,
        clean_config: HrCleanConfig | None = None,
    ) -> None:
        self.model = model
        self.net = model.causal.eval()
        self.source = source
        self._det = StreamingRPeakDetector(ecg_fs, rpeak_config, source) if ecg_fs else None
        self._cleaner = BeatCleaner(clean_config)
        self._t = np.zeros(0)  # beat times (s), trimmed to the long window
        self._hr = np.zeros(0)
        self._ok = np.zeros(0, dtype=bool)
        self._last_beat: float | None = None
        self._complete_s = 0.0
        self._next_epoch = 0
        self._ctx = [ContextTracker(), ContextTracker()]
        self._h = [self.net.init_state(), self.net.init_state()]

    @property
    def next_epoch(self) -> int:
        """Index of the next epoch to be scored."""
        return self._next_epoch

    def push_ecg(self, chunk: np.ndarray) -> list[tuple[int, float]]:
        """Raw ECG samples -> ``[(epoch, apnea probability), ...]`` newly scored."""
        if self._det is None:
            raise ValueError(f"{self.source}: stream was built without an ECG rate; use push_beats")
        beats = self._det.push(chunk)
        return self.push_beats(beats, self._det.complete_until_s)

    def push_beats(
        self, beat_times_s: np.ndarray, complete_until_s: float
    ) -> list[tuple[int, float]]:
        """New beat times (s, increasing), all beats before ``complete_until_s`` now known."""
        t = np.asarray(beat_times_s, dtype=np.float64)
        if t.size:
            prev = self._last_beat
            if (prev is not None and t[0] <= prev) or np.any(np.diff(t) <= 0):
                raise DataError(self.source, "beat times must be strictly increasing")
            full = t if prev is None else np.concatenate([[prev], t])
            times, hr = full[1:], 1.0 / np.diff(full)  # rate stamped at the later beat
            ok = self._cleaner.push(hr)
            self._t = np.concatenate([self._t, times])
            self._hr = np.concatenate([self._hr, hr])
            self._ok = np.concatenate([self._ok, ok])
            self._last_beat = float(t[-1])
        self._complete_s = max(self._complete_s, float(complete_until_s))
        return self._score_ready()

    @torch.no_grad()
    def _score_ready(self) -> list[tuple[int, float]]:
        out = []
        while (self._next_epoch + 1) * EPOCH_S <= self._complete_s:
            k = self._next_epoch
            t_end = (k + 1) * EPOCH_S
            feats = self._ctx[k % 2](window_features(self._t, self._hr, self._ok, t_end))
            x = torch.as_tensor(feats, dtype=torch.float32)[None]  # (1, F)
            prob, self._h[k % 2] = self.net.step(x, self._h[k % 2])
            trace = window_trace(self._t, self._hr, self._ok, t_end)  # (TRACE_LEN,)
            p_trace = self.model.trace_proba(trace[None], "causal")  # (1,)
            out.append((k, float(self.model.combine(prob.numpy(), p_trace)[0])))
            self._next_epoch += 1
        keep = np.searchsorted(self._t, self._next_epoch * EPOCH_S - max(LONG_S, TRACE_S) - EPOCH_S)
        if keep > 0:
            self._t, self._hr, self._ok = self._t[keep:], self._hr[keep:], self._ok[keep:]
        return out


@torch.no_grad()
def epoch_probabilities(
    beat_times_s: np.ndarray,
    n_epochs: int,
    model: EcgApneaModel,
    clean_config: HrCleanConfig | None = None,
) -> np.ndarray:
    """Offline per-epoch apnea probabilities ``(n_epochs,)`` from a night's beat times (s).

    Same windows, phases and causal model as :class:`EcgApneaStream`, computed as two whole
    sequences (for ``rtsleep score`` and for checking the stream).
    """
    from rtsleep.apnea.features import sequence_features
    from rtsleep.apnea.hr import rr_to_hr, valid_beats

    times, hr = rr_to_hr(np.asarray(beat_times_s, dtype=np.float64))
    ok = valid_beats(hr, clean_config)
    out = np.zeros(n_epochs)
    for phase in (0, 1):
        ks = np.arange(phase, n_epochs, 2)
        if ks.size == 0:
            continue
        ends = (ks + 1) * EPOCH_S  # (T,)
        feats = sequence_features(times, hr, ok, ends)  # (T, F)
        traces = sequence_traces(times, hr, ok, ends)  # (T, TRACE_LEN)
        out[ks] = model.predict_proba(feats, traces, "causal")
    return out

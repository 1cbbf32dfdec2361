"""Synthetic PSG recordings and stores for training-mechanics tests (no real data).

Each epoch's signals depend on its stage (EEG rhythm and amplitude, EOG movements, EMG tone), so
a model can learn something in a few dozen steps; the values are made up and say nothing about
real sleep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtsleep.data.recording import Channel, Event, EventType, Modality, Recording
from rtsleep.data.store import write_recording

#: EEG (frequency Hz, amplitude uV) per stage W, N1, N2, N3, R.
_EEG = {0: (10.0, 25.0), 1: (6.0, 30.0), 2: (13.0, 40.0), 3: (1.5, 90.0), 4: (5.0, 25.0)}
_EMG_AMP = {0: 30.0, 1: 15.0, 2: 10.0, 3: 8.0, 4: 2.0}
_EOG_AMP = {0: 80.0, 1: 20.0, 2: 5.0, 3: 5.0, 4: 100.0}


def synthetic_recording(
    rec_id: str,
    subject: str,
    n_epochs: int,
    seed: int,
    sfreq: float = 100.0,
    modalities: tuple[Modality, ...] = (Modality.EEG, Modality.EOG, Modality.EMG, Modality.ECG),
    apnea: bool = False,
) -> Recording:
    """A recording whose stages follow a random walk over W..R, with stage-shaped signals."""
    rng = np.random.default_rng(seed)
    stages = np.zeros(n_epochs, dtype=np.int8)
    s = 0
    for k in range(n_epochs):
        if rng.random() < 0.25:
            s = int(rng.integers(0, 5))
        stages[k] = s
    n = int(30 * sfreq)
    t = np.arange(n) / sfreq
    data: dict[Modality, list[np.ndarray]] = {m: [] for m in modalities}
    for st in stages:
        f, a = _EEG[int(st)]
        phase = rng.uniform(0, 2 * np.pi)
        eeg = a * np.sin(2 * np.pi * f * t + phase) + rng.normal(0, 8.0, n)
        eog = _EOG_AMP[int(st)] * np.sin(2 * np.pi * 0.4 * t + phase) + rng.normal(0, 5.0, n)
        emg = rng.normal(0, _EMG_AMP[int(st)], n)
        ecg = 300.0 * (np.sin(2 * np.pi * 1.1 * t + phase) > 0.97) + rng.normal(0, 10.0, n)
        sig = {Modality.EEG: eeg, Modality.EOG: eog, Modality.EMG: emg, Modality.ECG: ecg}
        for m in modalities:
            data[m].append(sig[m])
    labels = {Modality.EEG: "C4-M1", Modality.EOG: "E1-M2", Modality.EMG: "Chin",
              Modality.ECG: "ECG"}
    channels = [
        Channel(labels[m], m, sfreq, "uV", np.concatenate(data[m]).astype(np.float64))
        for m in modalities
    ]
    events = []
    if apnea:
        for k in range(2, n_epochs, 7):
            events.append(Event(30.0 * k + 5.0, 15.0, EventType.APNEA_OBSTRUCTIVE))
    return Recording(
        id=rec_id, dataset="synth", subject=subject, source=Path(f"/synthetic/{rec_id}.edf"),
        channels=channels, stages=stages, events=events, source_sha256="00" * 32,
    )


def synthetic_store(
    root: Path,
    n_recordings: int = 3,
    n_epochs: int = 24,
    seed: int = 0,
    apnea: bool = False,
) -> Path:
    """Write ``n_recordings`` synthetic recordings (one subject each) into a store at ``root``."""
    for i in range(n_recordings):
        rec = synthetic_recording(
            f"rec{i}", f"subj{i}", n_epochs, seed + i, apnea=apnea
        )
        write_recording(rec, root)
    return root

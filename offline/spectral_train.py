"""Training of the spectral stage model (``SleepNetConfig(encoder="spectral")``).

Two phases, both training the temporal module the way the daemon infers (causal Mamba, state from
zero at the start of every training sequence, random crop positions and lengths, no look-ahead
beyond the model's configured output delay ``lookahead_epochs``):

1. **Pre-training on Sleep-EDF feature sequences.** The shared Sleep-EDF nights exist only as
   per-epoch features; columns 0-3 (Fpz-Cz) and 9-12 (Pz-Oz) are the delta/theta/alpha/beta Welch
   log band powers, converted exactly to the encoder's definition by
   :func:`rtsleep.models.spectral.sleep_edf_band_log_power`. The encoder's MLP, the temporal module
   and the stage head learn on sequences of them with real hypnogram dynamics. Each sequence draws
   one of the two channels (channel robustness) and augmentations in the log-power domain: one
   gain offset per sequence (amplitude robustness), one offset per band per sequence (montage and
   sampling-rate robustness: a 50-Hz recording loses part of the beta band), and per-epoch noise.
   Nights are trimmed to 30 min of wake around the sleep period. The few rows with a time gap
   before them (at most 4 per night, see SOURCES.md) are treated as consecutive.
2. **Fine-tuning on raw staged EEG** (DREAMS): the band powers are computed by the model's own
   encoder from the preprocessed EEG (they have no parameters, so they are computed once), then
   the whole model trains on random crops with the same augmentations, with early stopping on an
   inner validation set that the caller draws from the training subjects only.

Fine-tuning also sees each training recording on 30-s grids shifted by 5, 10, ... 25 s
(:func:`offline.stage_data.shifted_grids`, :data:`offline.cv.SHIFT_S`), 6x the sequences.

Class imbalance: cross-entropy weighted by ``frequency ** -class_weight_power`` of the training
labels, divided by the mean over the five classes and clipped to 0.2-5 (:func:`class_weights`;
``class_boost`` multiplies single classes). A class absent from training counts as 1 epoch.
Pre-training (Sleep-EDF, all five classes common): power 0.5, inverse square root. Fine-tuning
(:func:`offline.cv.finetune_config`): power 1.0. On DREAMS folds without REM in training the
absent REM takes the largest weight and the clip then sets W, N1, N2 and N3 all to 0.2, i.e.
plain cross-entropy among them; with excerpt7's 5 REM epochs in training W and N1 get about 4-5x
the weight of N2 and N3. This choice was measured on the whole recipe (LOSO, seeds 0 and 1, see
docs/benchmarks.md): it beat power 0.5 on accuracy, macro-F1 and kappa with both seeds, while
plain cross-entropy (power 0) and extra N1 weight in pre-training (``class_boost`` x2, x3) were
no better or unstable across seeds.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from offline.failures import Failed, none_readable, skip_failed
from rtsleep.data.errors import DataError
from rtsleep.data.labels import sleep_period_bounds
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.recording import Modality
from rtsleep.models.heads import HeadsConfig
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig
from rtsleep.models.spectral import SpectralConfig, SpectralEncoder, sleep_edf_band_log_power
from rtsleep.models.temporal import TemporalConfig

log = logging.getLogger(__name__)

N_CLASSES = 5
SEDF_BAND_COLUMNS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3), (9, 10, 11, 12))
"""Sleep-EDF feature columns of the four bands: Fpz-Cz, then Pz-Oz."""
SEDF_EEG_VIEWS: tuple[tuple[str, ...], ...] = (("Fpz-Cz", "Pz-Oz"),)
"""``SleepNetConfig.eeg_views`` of the spectral model: it is pre-trained on both Sleep-EDF
derivations alike (one drawn per crop), and a recording with both scores better on their mean
(docs/benchmarks.md, "Which Sleep-EDF channel")."""

SEDF_FILE_NAME = re.compile(r"^SC4(\d\d)(\d)[A-Z]0\.npz$", re.IGNORECASE)
"""File name of a Sleep-EDF per-epoch feature night, named after its PSG (``SC4ssnE0.npz``:
subject ``ss``, night ``n``; a few sleep-cassette PSGs end ``F0`` or ``G0``; any letter case)."""


def spectral_model_config(
    spec: PreprocessSpec | None = None, lookahead_epochs: int = 0, running_epochs: int = 0
) -> SleepNetConfig:
    """The shipped spectral model: 32-wide embedding, 2 Mamba layers of width 32, linear head,
    output delay ``lookahead_epochs`` (30-s epochs), running normalisation over
    ``running_epochs`` (0: none; :mod:`rtsleep.models.spectral`).

    The encoder's ``input_scale_uv`` is the EEG scale of ``spec`` (default spec when None), so
    band powers come out in µV²/Hz whatever the preprocessing gain.
    """
    eeg = (spec or PreprocessSpec.default()).for_modality(Modality.EEG)
    return SleepNetConfig(
        encoder="spectral",
        spectral=SpectralConfig(
            sfreq=eeg.sfreq, n_times=eeg.n_times(), input_scale_uv=eeg.scale, hidden=64,
            d_model=32, dropout=0.1, running_epochs=running_epochs,
        ),
        temporal=TemporalConfig(d_model=32, n_layers=2, d_state=16),
        heads=HeadsConfig(hidden=0),
        lookahead_epochs=lookahead_epochs,
        eeg_views=SEDF_EEG_VIEWS,
    )


@dataclass
class Sequence:
    """One labelled sequence in the band-power domain.

    ``log_power`` float32 ``(n, C, n_bands)`` (``C`` alternative channels, one drawn per crop),
    ``stages`` int64 ``(n,)`` (-1 = unscored, ignored by the loss), ``fractions`` optional
    float32 ``(n, 5)``: each epoch's mixture of the finer expert stages it covers (see
    ``TrainConfig.soft_labels``).
    """

    id: str
    subject: str
    log_power: Tensor
    stages: Tensor
    fractions: Tensor | None = None


def sleep_edf_feature_files(folder: Path) -> list[tuple[Path, re.Match[str]]]:
    """The Sleep-EDF feature nights under ``folder`` (sorted), each with its
    :data:`SEDF_FILE_NAME` match (groups: subject, night)."""
    files = [(p, SEDF_FILE_NAME.match(p.name)) for p in _npz_files(Path(folder))]
    return [(p, m) for p, m in files if m is not None]


def _npz_files(folder: Path) -> list[Path]:
    """The ``.npz`` files under ``folder`` (sorted), the extension in any letter case."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".npz" and p.is_file())


def _read_feature_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` float64 ``(n, 72)`` and ``y`` int64 ``(n,)`` of one feature file; ``DataError``
    when it cannot be read or has another shape."""
    try:
        with np.load(path) as d:
            x, y = np.asarray(d["X"], dtype=np.float64), np.asarray(d["y"], dtype=np.int64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(path, f"unreadable feature file ({type(err).__name__}: {err})") from None
    if x.ndim != 2 or x.shape[1] < 13 or len(y) != len(x):
        raise DataError(path, f"expected X (n, 72) and y (n,), got {x.shape} and {y.shape}")
    return x, y


def load_sleep_edf_features(folder: Path, wake_margin_epochs: int | None = 60,
                            failed: Failed | None = None) -> list[Sequence]:
    """Sleep-EDF nights from ``features/SC4ssnE0.npz`` files (sorted), trimmed to the sleep period
    plus ``wake_margin_epochs`` on each side (None: every row, the whole recording). Nights
    without sleep, and ``.npz`` files with other names, are left out with a warning. Subject =
    the two digits ``ss``. An unreadable file raises ``DataError``; with a ``failed`` list it is
    logged, appended as ``(file, error)`` and left out instead (a folder with none readable
    still raises)."""
    folder = Path(folder)
    matched = sleep_edf_feature_files(folder)
    others = sorted(set(_npz_files(folder)) - {p for p, _ in matched})
    if others:
        log.warning("%s: %d .npz file(s) not named like a Sleep-EDF feature night (SC4ssnE0.npz), "
                    "left out: %s", folder, len(others), ", ".join(p.name for p in others[:5])
                    + (" ..." if len(others) > 5 else ""))
    if not matched:
        raise DataError(folder, "no Sleep-EDF feature files (SC4ssnE0.npz)")
    out: list[Sequence] = []
    for path, m in matched:
        try:
            x, y = _read_feature_file(path)
        except DataError as err:
            skip_failed(path, err, failed)
            continue
        bounds = sleep_period_bounds(
            y, len(y) if wake_margin_epochs is None else wake_margin_epochs)
        if bounds is None:
            log.warning("%s: no sleep epoch in its labels; left out", path)
            continue
        lo, hi = bounds
        cols = torch.from_numpy(x[lo:hi])
        lp = torch.stack(
            [sleep_edf_band_log_power(cols[:, list(c)]) for c in SEDF_BAND_COLUMNS], dim=1
        )  # (n, 2, 4)
        out.append(
            Sequence(
                id=path.stem, subject=m.group(1), log_power=lp,
                stages=torch.from_numpy(y[lo:hi].copy()),
            )
        )
    if not out and failed:
        raise none_readable(folder, "feature files", failed)
    return out


@dataclass
class TrainConfig:
    """One training phase. Lengths in epochs (30 s)."""

    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    min_len: int = 20
    max_len: int = 240
    #: Per-sequence gain offset: uniform in ``±gain_log`` on the natural-log power scale.
    gain_log: float = 1.0
    #: Per-sequence, per-band offset std (log power).
    band_log_std: float = 0.3
    #: Per-epoch, per-band noise std (log power).
    noise_std: float = 0.1
    eval_every: int = 100
    #: Class weights are ``frequency ** -class_weight_power`` (0.5: inverse square root).
    class_weight_power: float = 0.5
    #: Extra factor per class (W, N1, N2, N3, R) on those weights (before the mean-1 rescale).
    class_boost: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    #: Stop after this many steps of the ``steps``-long learning-rate schedule (0: run them all).
    stop_at: int = 0
    #: Share of the crops drawn from the ``rehearsal`` sequences of :func:`train_phase` (0: none).
    rehearsal_fraction: float = 0.0
    #: Soft targets: ``(1 - a) * one-hot(stage) + a * Sequence.fractions`` (0: the 30-s labels).
    soft_labels: float = 0.0
    seed: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)


def class_weights(sequences: list[Sequence], power: float = 0.5,
                  boost: tuple[float, ...] = (1.0,) * N_CLASSES) -> Tensor:
    """Weights ``(5,)`` proportional to ``boost * class frequency ** -power``, mean 1, clipped
    to ``[0.2, 5]``."""
    y = torch.cat([s.stages for s in sequences])
    counts = torch.bincount(y[y >= 0], minlength=N_CLASSES).double().clamp_min(1.0)
    w = counts.pow(-power) * torch.tensor(boost, dtype=torch.float64)
    w = w / w.mean()
    return w.clamp(0.2, 5.0).float()


def _sample_batch(
    seqs: list[Sequence], cfg: TrainConfig, gen: torch.Generator, lookahead: int = 0,
    rehearsal: list[Sequence] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random crops (one length ``L`` per batch): ``lp (B, L + lookahead, n_bands)``,
    ``y (B, L)`` and the stage fractions ``q (B, L, 5)`` (one-hot of ``y`` for a sequence
    without them; zeros where unscored).

    The labels of a crop are epochs ``[start, start + L)``; its input runs ``lookahead`` epochs
    further, and input past the end of the recording is absent (NaN rows, see
    :func:`stage_logits_from_log_power`), as at the end of a stream. With ``rehearsal`` each crop
    comes from it with probability ``cfg.rehearsal_fraction``, else from ``seqs``.
    """
    old = rehearsal if rehearsal and cfg.rehearsal_fraction > 0 else []
    max_len = min(cfg.max_len, min(len(s.stages) for s in seqs + old))
    min_len = min(cfg.min_len, max_len)
    length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
    lps, ys, qs = [], [], []
    for _ in range(cfg.batch):
        rehearse = bool(old) and float(torch.rand(1, generator=gen)) < cfg.rehearsal_fraction
        source = old if rehearse else seqs
        s = source[int(torch.randint(len(source), (1,), generator=gen))]
        n = len(s.stages)
        start = int(torch.randint(n - length + 1, (1,), generator=gen))
        ch = int(torch.randint(s.log_power.shape[1], (1,), generator=gen))
        lps.append(absent_padded(s.log_power[start : start + length + lookahead, ch],
                                  length + lookahead))  # (L + k, n_bands)
        y = s.stages[start : start + length]
        ys.append(y)
        qs.append(s.fractions[start : start + length] if s.fractions is not None else
                  F.one_hot(y.clamp_min(0), N_CLASSES).float() * (y >= 0)[:, None])  # (L, 5)
    lp = torch.stack(lps)  # (B, L + k, n_bands)
    b, _, nb = lp.shape
    gain = (torch.rand(b, 1, 1, generator=gen) * 2 - 1) * cfg.gain_log  # (B, 1, 1)
    band = torch.randn(b, 1, nb, generator=gen) * cfg.band_log_std  # (B, 1, n_bands)
    noise = torch.randn(lp.shape, generator=gen) * cfg.noise_std  # (B, L + k, n_bands)
    return lp + gain + band + noise, torch.stack(ys), torch.stack(qs)


def soft_cross_entropy(logits: Tensor, y: Tensor, fractions: Tensor, weights: Tensor,
                       soft: float) -> Tensor:
    """Class-weighted cross-entropy against ``(1 - soft) * one-hot(y) + soft * fractions``
    (``logits (n, C)``, ``y (n,)``, ``fractions (n, C)``), normalised by the summed weight of
    the targets as the weighted hard loss is; ``soft = 0`` gives ``F.cross_entropy(logits, y,
    weight=weights)``."""
    target = (1 - soft) * F.one_hot(y, logits.shape[-1]).to(logits.dtype) + soft * fractions
    wt = target * weights[None, :]  # (n, C)
    return -(wt * F.log_softmax(logits, dim=-1)).sum() / wt.sum().clamp_min(1e-12)


def absent_padded(log_power: Tensor, length: int) -> Tensor:
    """``(n, n_bands)`` -> ``(length, n_bands)``, NaN rows (absent epochs) after the end (what a
    model with an output delay is fed after the end of a recording)."""
    pad = log_power.new_full((length - log_power.shape[0], log_power.shape[1]), math.nan)
    return torch.cat([log_power, pad])


def spectral_encoder(model: SleepNet) -> SpectralEncoder:
    """The model's :class:`SpectralEncoder` (``TypeError`` for another encoder)."""
    enc = model.encoder
    if not isinstance(enc, SpectralEncoder):
        raise TypeError(f"expected a spectral model, got encoder {model.cfg.encoder!r}")
    return enc


def stage_logits_from_log_power(model: SleepNet, log_power: Tensor) -> Tensor:
    """The model's stage logits for band log powers ``(B, T, n_bands) -> (B, T, 5)``, state from
    zero (the same computation as ``SleepNet.forward`` after the Welch step).

    An epoch whose row holds a NaN is absent (no EEG): it gets the model's ``missing_embedding``,
    as ``SleepNet.encode`` gives an epoch whose EEG is masked, and leaves the running
    normalisation (if the encoder has one) unchanged. Output ``t`` refers to epoch
    ``t - lookahead_epochs`` (``SleepNet`` module doc).
    """
    # a fresh stream (running normalisation from zero), as every crop is one
    out, _ = model.forward_log_power(log_power)  # fields (B, T, ...)
    return out.stage_logits


@torch.no_grad()
def sequence_loss(
    model: SleepNet, seqs: list[Sequence], weights: Tensor
) -> tuple[float, float, float]:
    """Weighted CE, accuracy and macro-F1 over whole sequences (first channel, no augmentation;
    with a look-ahead of ``k`` epochs, ``k`` absent epochs follow the end, as in evaluation).

    Macro-F1 averages the classes present in the truth or the prediction.
    """
    was = model.training
    model.eval()
    k = model.cfg.lookahead_epochs
    tot, n, correct = 0.0, 0, 0
    cm = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.int64)  # rows truth, columns prediction
    for s in seqs:
        n_epochs = len(s.stages)
        lp = absent_padded(s.log_power[:, 0], n_epochs + k)  # (T + k, n_bands)
        logits = stage_logits_from_log_power(model, lp[None])[0, k:]  # (T, 5)
        ok = s.stages >= 0
        if not bool(ok.any()):
            continue
        tot += float(F.cross_entropy(logits[ok], s.stages[ok], weight=weights, reduction="sum"))
        n += int(ok.sum())
        pred = logits[ok].argmax(-1)
        correct += int((pred == s.stages[ok]).sum())
        cm += torch.bincount(s.stages[ok] * N_CLASSES + pred, minlength=N_CLASSES**2).view(
            N_CLASSES, N_CLASSES
        )
    model.train(was)
    tp, truth, predicted = cm.diag().double(), cm.sum(1).double(), cm.sum(0).double()
    present = (truth + predicted) > 0
    f1 = 2 * tp[present] / (truth + predicted)[present]
    mf1 = float(f1.mean()) if bool(present.any()) else 0.0
    return tot / max(n, 1), correct / max(n, 1), mf1


def train_phase(
    model: SleepNet,
    train: list[Sequence],
    val: list[Sequence] | None,
    cfg: TrainConfig,
    name: str,
    rehearsal: list[Sequence] | None = None,
) -> tuple[SleepNet, int]:
    """Train ``model`` in place on random crops of ``train`` (and, a share
    ``cfg.rehearsal_fraction`` of them, of ``rehearsal``: data of an earlier phase, so that
    fine-tuning does not forget it; the class weights come from ``train`` alone); every
    ``eval_every`` steps score ``val`` (also before the first step) and keep the best weights
    (highest macro-F1; the earliest step wins a tie).
    Returns (best model, best step);
    without ``val`` the final weights and ``cfg.steps``. Losses go to ``cfg.history``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    weights = class_weights(train, cfg.class_weight_power, cfg.class_boost)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 10)

    def lr_factor(i: int) -> float:  # linear warm-up over 10 % of the steps, then cosine to 0
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    hist = cfg.history
    for key in ("step", "train_loss", "val_loss", "val_acc", "val_macro_f1"):
        hist.setdefault(f"{name}_{key}", [])
    best = (-math.inf, 0, copy.deepcopy(model.state_dict()))
    if val:  # step 0 is a candidate too: training may not help at all
        vl, va, vf = sequence_loss(model, val, weights)
        best = (vf, 0, best[2])
        log.info("%s step 0: val %.3f acc %.3f mf1 %.3f", name, vl, va, vf)
    model.train()
    running = 0.0
    last = cfg.stop_at if 0 < cfg.stop_at < cfg.steps else cfg.steps
    for step in range(1, last + 1):
        k = model.cfg.lookahead_epochs
        lp, y, q = _sample_batch(train, cfg, gen, k, rehearsal)
        logits = stage_logits_from_log_power(model, lp)[:, k:]  # (B, L, 5)
        ok = y >= 0
        if cfg.soft_labels > 0:
            loss = soft_cross_entropy(logits[ok], y[ok], q[ok], weights, cfg.soft_labels)
        else:
            loss = F.cross_entropy(logits[ok], y[ok], weight=weights)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % cfg.eval_every == 0 or step == last:
            k = cfg.eval_every if step % cfg.eval_every == 0 else step % cfg.eval_every
            hist[f"{name}_step"].append(float(step))
            hist[f"{name}_train_loss"].append(running / k)
            running = 0.0
            if val:
                vl, va, vf = sequence_loss(model, val, weights)
                hist[f"{name}_val_loss"].append(vl)
                hist[f"{name}_val_acc"].append(va)
                hist[f"{name}_val_macro_f1"].append(vf)
                if vf > best[0]:
                    best = (vf, step, copy.deepcopy(model.state_dict()))
                log.info("%s step %d: train %.3f val %.3f acc %.3f mf1 %.3f", name, step,
                         hist[f"{name}_train_loss"][-1], vl, va, vf)
            else:
                log.info("%s step %d: train %.3f", name, step, hist[f"{name}_train_loss"][-1])
    model.eval()
    if val:
        model.load_state_dict(best[2])
        return model, best[1]
    return model, last


@torch.no_grad()
def raw_sequence(model: SleepNet, rec_id: str, subject: str, x: np.ndarray, mask: np.ndarray,
                 stages: np.ndarray, fractions: np.ndarray | None = None) -> Sequence:
    """Band log powers of a recording's EEG through the model's own encoder (``x (n, M, S)``);
    ``fractions``: the optional ``(n, 5)`` stage mixtures of :class:`Sequence`."""
    if not bool(mask[0]):
        raise DataError(rec_id, "no EEG channel; the spectral model needs EEG")
    eeg = torch.from_numpy(np.ascontiguousarray(x[:, 0]))  # (n, S)
    lp = spectral_encoder(model).band_log_power(eeg)  # (n, n_bands)
    return Sequence(
        id=rec_id, subject=subject, log_power=lp[:, None, :].float(),
        stages=torch.as_tensor(np.asarray(stages), dtype=torch.int64),
        fractions=None if fractions is None else torch.as_tensor(fractions, dtype=torch.float32),
    )


@torch.no_grad()
def fit_standardisation(model: SleepNet, seqs: list[Sequence]) -> None:
    """Set the encoder's feature standardisation from every channel of ``seqs`` (running means,
    when the encoder uses them, over each whole sequence from a fresh stream)."""
    enc = spectral_encoder(model)
    lps, means = [], []
    for s in seqs:
        nb = s.log_power.shape[-1]
        lps.append(s.log_power.reshape(-1, nb))  # (n * C, n_bands)
        if enc.running:
            lp = s.log_power.transpose(0, 1)  # (C, n, n_bands): one stream per channel
            present = torch.isfinite(lp).all(dim=-1)  # (C, n)
            m, _, _ = enc.running_mean(lp, present, *enc.init_running(lp.shape[0]))
            means.append(m.transpose(0, 1).reshape(-1, nb))  # (n * C, n_bands), rows as lps
    enc.fit_standardisation(torch.cat(lps), torch.cat(means) if means else None)


def pretrain_sleep_edf(
    nights: list[Sequence], cfg: TrainConfig, val_subjects: tuple[str, ...] = ("07",),
    lookahead_epochs: int = 0, running_epochs: int = 0,
) -> tuple[SleepNet, int]:
    """Phase 1: a fresh spectral model (output delay ``lookahead_epochs``, running normalisation
    ``running_epochs``) trained on Sleep-EDF feature nights; the nights of ``val_subjects`` are
    the validation set (model selection)."""
    torch.manual_seed(cfg.seed)
    model = SleepNet(spectral_model_config(lookahead_epochs=lookahead_epochs,
                                           running_epochs=running_epochs))
    train = [s for s in nights if s.subject not in val_subjects]
    val = [s for s in nights if s.subject in val_subjects]
    if not train:
        raise ValueError("pretrain: no training nights left after removing validation subjects")
    fit_standardisation(model, train)
    return train_phase(model, train, val or None, cfg, "pretrain")


def finetune(
    model: SleepNet, train: list[Sequence], val: list[Sequence] | None, cfg: TrainConfig,
    rehearsal: list[Sequence] | None = None,
) -> tuple[SleepNet, int]:
    """Phase 2 on a copy of ``model`` (``rehearsal``: see :func:`train_phase`)."""
    return train_phase(copy.deepcopy(model), train, val, cfg, "finetune", rehearsal)


__all__ = [
    "SEDF_BAND_COLUMNS",
    "SEDF_EEG_VIEWS",
    "SEDF_FILE_NAME",
    "absent_padded",
    "Sequence",
    "TrainConfig",
    "class_weights",
    "finetune",
    "fit_standardisation",
    "load_sleep_edf_features",
    "sleep_edf_feature_files",
    "pretrain_sleep_edf",
    "raw_sequence",
    "sequence_loss",
    "spectral_encoder",
    "soft_cross_entropy",
    "spectral_model_config",
    "stage_logits_from_log_power",
    "train_phase",
]

"""Models shared by the daemon and offline training: encoders, temporal module, heads, checkpoints.

``SleepNet`` is the full model and ``SleepNetEnsemble`` several of them averaged; ``save_model`` /
``load_model`` / ``load_predictor`` read and write the single-file, pickle-free checkpoint format
(see :mod:`rtsleep.models.checkpoint`).
"""

from rtsleep.models.checkpoint import (
    CheckpointMeta,
    Predictor,
    load_checkpoint_meta,
    load_model,
    load_predictor,
    save_model,
)
from rtsleep.models.ensemble import SleepNetEnsemble
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig, SleepNetOutput

__all__ = [
    "CheckpointMeta",
    "Predictor",
    "SleepNet",
    "SleepNetEnsemble",
    "SleepNetConfig",
    "SleepNetOutput",
    "load_checkpoint_meta",
    "load_model",
    "load_predictor",
    "save_model",
]

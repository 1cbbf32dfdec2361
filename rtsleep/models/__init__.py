"""Models shared by the daemon and offline training: encoders, temporal module, heads, checkpoints.

``SleepNet`` is the full model; ``save_model`` / ``load_model`` read and write the single-file,
pickle-free checkpoint format (see :mod:`rtsleep.models.checkpoint`).
"""

from rtsleep.models.checkpoint import (
    CheckpointMeta,
    load_checkpoint_meta,
    load_model,
    save_model,
)
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig, SleepNetOutput

__all__ = [
    "CheckpointMeta",
    "SleepNet",
    "SleepNetConfig",
    "SleepNetOutput",
    "load_checkpoint_meta",
    "load_model",
    "save_model",
]

"""Per-bed persistent state: one safetensors file per bed, written atomically after every epoch.

A file holds everything a restart needs to continue the night as if nothing happened:

- the recurrent (Mamba) state tensors, batch 1 (``"rec.<key>"``),
- every channel pipeline's ``state_dict()``: arrays as tensors (``"pipe.<i>.<key>"``), scalars in
  the JSON header, the channel label of pipeline ``i`` in the header,
- the next epoch index to publish, the bed's anchor LSL time, the model id, the save time and a
  JSON ``extra`` dict (counters, alert tracker state).

Writing: ``<bed>.state.safetensors.tmp`` + ``fsync`` + ``os.replace`` + ``fsync`` of the folder, so
a crash at any point leaves either the old or the new file, never a torn one. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

log = logging.getLogger(__name__)

STATE_FORMAT = "rtsleep-bed-state/1"
PipelineState = dict[str, Any]


@dataclass
class BedState:
    """What is persisted for one bed after each epoch.

    ``recurrent``: model state tensors with batch 1 (``SleepNet.init_state(1)`` layout).
    ``pipelines``: channel label -> ``ChannelPipeline.state_dict()``.
    ``next_epoch``: the index of the next epoch to publish (all before it are published).
    ``anchor_lsl``: LSL time of the bed's first sample (epoch 0 start), s.
    """

    bed: str
    model_id: str
    next_epoch: int
    anchor_lsl: float | None
    recurrent: dict[str, torch.Tensor]
    pipelines: dict[str, PipelineState] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    saved_unix: float = 0.0


def state_path(state_dir: Path, bed: str) -> Path:
    """The state file of ``bed`` in ``state_dir``."""
    return Path(state_dir) / f"{bed}.state.safetensors"


def new_recording_path(state_dir: Path, bed: str) -> Path:
    """The request file of ``rtsleep new-recording`` for ``bed`` in ``state_dir``."""
    return Path(state_dir) / f"{bed}.new-recording"


def request_new_recording(state_dir: Path, bed: str) -> Path:
    """Ask the daemon to start ``bed``'s model context afresh (a new sleeper): writes the request
    file, which the running daemon takes within a second and a stopped one at its next start.
    Raises ``OSError`` when the state directory cannot be written."""
    path = new_recording_path(state_dir, bed)
    path.write_text(f"{time.time():.3f}\n")
    return path


def take_new_recording(state_dir: Path, bed: str) -> bool:
    """Whether a new recording was requested for ``bed``; the request is removed (taken once).
    A request file that cannot be removed is logged and not acted on (it would repeat)."""
    path = new_recording_path(state_dir, bed)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        log.error("bed %s: cannot remove the new-recording request %s: %s", bed, path,
                  err.strerror or err)
        return False
    return True


def _to_numpy(value: Any) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy()
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    return None


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_state(state: BedState) -> bytes:
    """Serialise a :class:`BedState` to safetensors bytes."""
    arrays: dict[str, np.ndarray] = {}
    for key, t in state.recurrent.items():
        arr = _to_numpy(t)
        if arr is None:
            raise TypeError(f"recurrent state {key!r} is not a tensor")
        arrays[f"rec.{key}"] = arr
    labels: list[str] = []
    scalars: list[dict[str, Any]] = []
    for i, (label, pstate) in enumerate(state.pipelines.items()):
        labels.append(label)
        sc: dict[str, Any] = {}
        for key, value in pstate.items():
            arr = _to_numpy(value)
            if arr is not None:
                arrays[f"pipe.{i}.{key}"] = arr
            else:
                sc[key] = _json_scalar(value)
        scalars.append(sc)
    meta = {
        "format": STATE_FORMAT,
        "bed": state.bed,
        "model_id": state.model_id,
        "next_epoch": str(int(state.next_epoch)),
        "anchor_lsl": json.dumps(state.anchor_lsl),
        "saved_unix": json.dumps(state.saved_unix),
        "pipeline_labels": json.dumps(labels),
        "pipeline_scalars": json.dumps(scalars, allow_nan=True),
        "extra": json.dumps(state.extra),
    }
    return st_save(arrays, metadata=meta)


def decode_state(data: bytes, source: str = "<state>") -> BedState:
    """Inverse of :func:`encode_state`; ``ValueError`` naming ``source`` on a bad file."""
    try:
        arrays = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta: dict[str, str] = header.get("__metadata__", {})
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {STATE_FORMAT!r}")
        labels: list[str] = json.loads(meta["pipeline_labels"])
        scalars: list[dict[str, Any]] = json.loads(meta["pipeline_scalars"])
        pipelines: dict[str, PipelineState] = {label: dict(sc) for label, sc in
                                               zip(labels, scalars, strict=True)}
        recurrent: dict[str, torch.Tensor] = {}
        for name, arr in arrays.items():
            kind, _, rest = name.partition(".")
            if kind == "rec":
                recurrent[rest] = torch.from_numpy(arr.copy())
            elif kind == "pipe":
                idx, _, key = rest.partition(".")
                pipelines[labels[int(idx)]][key] = arr.copy()
            else:
                raise ValueError(f"unexpected tensor {name!r}")
        return BedState(
            bed=meta["bed"],
            model_id=meta["model_id"],
            next_epoch=int(meta["next_epoch"]),
            anchor_lsl=json.loads(meta["anchor_lsl"]),
            recurrent=recurrent,
            pipelines=pipelines,
            extra=json.loads(meta["extra"]),
            saved_unix=float(json.loads(meta["saved_unix"])),
        )
    except (KeyError, IndexError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{source}: not a valid bed state file: {err}") from None
    except Exception as err:  # safetensors raises its own error types on corrupt bytes
        raise ValueError(f"{source}: not a valid bed state file: {err}") from None


def save_state(state_dir: Path, state: BedState) -> Path:
    """Write ``state`` atomically (tmp + fsync + rename + fsync dir); stamps ``saved_unix``."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state.saved_unix = time.time()
    path = state_path(state_dir, state.bed)
    tmp = path.with_name(path.name + ".tmp")
    data = encode_state(state)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_state(
    state_dir: Path,
    bed: str,
    model_id: str,
    max_age_s: float,
    now_unix: float | None = None,
) -> BedState | None:
    """The saved state of ``bed`` when it is valid, recent and from ``model_id``; else ``None``.

    Every reason for not restoring is logged; a corrupt file is renamed to ``*.corrupt`` (kept for
    inspection) so that the next save is not blocked by it.
    """
    path = state_path(Path(state_dir), bed)
    if not path.is_file():
        log.info("bed %s: no saved state in %s, starting fresh", bed, state_dir)
        return None
    try:
        state = decode_state(path.read_bytes(), str(path))
    except (OSError, ValueError) as err:
        aside = path.with_name(path.name + ".corrupt")
        log.warning("%s; moved to %s, starting fresh", err, aside.name)
        os.replace(path, aside)
        return None
    now = time.time() if now_unix is None else now_unix
    age = now - state.saved_unix
    if state.bed != bed:
        log.warning("%s: holds bed %r, not %r; starting fresh", path, state.bed, bed)
        return None
    if state.model_id != model_id:
        log.warning("%s: saved by model %s, running %s; starting fresh", path,
                    state.model_id[:12], model_id[:12])
        return None
    if age > max_age_s:
        log.info("%s: %.0f s old (limit %.0f s); starting fresh", path, age, max_age_s)
        return None
    log.info("bed %s: restored state (next epoch %d, %.1f s old)", bed, state.next_epoch, age)
    return state

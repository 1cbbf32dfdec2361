"""Safe model checkpoints: one ``.safetensors`` file, nothing is ever unpickled.

Tensors are the model's ``state_dict`` (parameters and persistent buffers). The header metadata
(all strings) holds:

- ``format_version``: ``FORMAT_VERSION``;
- ``config``: ``SleepNetConfig.to_json()`` (every sub-config);
- ``preprocess``: ``PreprocessSpec.to_json()``;
- ``label_maps``: JSON object, e.g. ``{"stage": ["W", "N1", "N2", "N3", "R"], ...}``;
- ``model_id``: sha256 (hex) over the config JSON and every tensor (name, dtype, shape, bytes);
- ``card``: optional JSON object (the model card);
- ``members``: optional, the member count of a :class:`~rtsleep.models.ensemble.SleepNetEnsemble`
  (``config`` is then the members' config and tensors are named ``members.<i>.<name>``);
- ``member_groups``: optional, JSON list of each member's derivation group in a grouped ensemble
  (the model id then covers it too: it is computed over the config JSON followed by a newline
  and this JSON).

``load_model(path)`` rebuilds a single model from the file alone and checks, with a one-line
``ValueError`` naming the file: the safetensors framing (every tensor's dtype, shape and bytes),
the format version, the config, the preprocessing spec (well-formed, feeding the model the
samples per epoch it reads, and when given equal to the expected one), the member count, the
tensor names, shapes and dtypes (weights float32 or float64, finite) and the model id.
``load_predictor(path)`` does the same for a single model or an ensemble (what scoring reads).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.recording import STAGE_NAMES
from rtsleep.models.ensemble import SleepNetEnsemble
from rtsleep.models.sleepnet import SleepNet, SleepNetConfig

Predictor = SleepNet | SleepNetEnsemble
"""What scoring runs: one model or a seed ensemble (same ``forward``/``step``/``init_state``)."""

FORMAT_VERSION = "1"
"""Checkpoint layout version written by ``save_model`` and required by ``load_model``."""

DEFAULT_LABEL_MAPS: dict[str, list[str]] = {
    "stage": list(STAGE_NAMES),
    "apnea": ["absent", "present"],
    "hypopnea": ["absent", "present"],
}
"""Output index -> label name for each head."""

_REQUIRED_META = ("format_version", "config", "preprocess", "label_maps", "model_id")
_MAX_HEADER = 100 * 1024 * 1024
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4,
             "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per element of the safetensors dtypes this reader accepts."""
_WEIGHT_DTYPES = (torch.float32, torch.float64)
"""Floating-point dtypes a checkpoint's weights may have (the model runs in one of them)."""


def _int_list(value: Any) -> bool:
    """Whether ``value`` is a JSON list of non-negative integers."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


@dataclass
class CheckpointMeta:
    """Everything in a checkpoint's header (no tensors loaded)."""

    path: Path
    format_version: str
    model_id: str
    config: SleepNetConfig
    #: The config exactly as stored (the model id is computed over it).
    config_json: str
    preprocess: PreprocessSpec
    label_maps: dict[str, Any]
    card: dict[str, Any] | None
    #: Tensor name -> (dtype string, shape) as stored.
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    #: Ensemble member count (1: a single model).
    members: int = 1
    #: Each member's derivation group (None: not a grouped ensemble).
    member_groups: list[str] | None = None
    #: ``member_groups`` exactly as stored (the model id is computed over it).
    member_groups_json: str | None = None


def compute_model_id(config_json: str, tensors: dict[str, Tensor]) -> str:
    """sha256 hex over the config JSON and each tensor's name, dtype, shape and bytes (sorted)."""
    h = hashlib.sha256()
    h.update(config_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _id_text(config_json: str, groups_json: str | None) -> str:
    """What the model id hashes besides the tensors: the config, and a grouped ensemble's
    ``member_groups``."""
    return config_json if groups_json is None else f"{config_json}\n{groups_json}"


def _state_tensors(model: Predictor) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_model(
    model: Predictor,
    path: str | Path,
    preprocess: PreprocessSpec,
    label_maps: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
) -> str:
    """Write ``model`` (one model or an ensemble) to ``path`` (atomically: temp file + rename).
    Returns the model id."""
    path = Path(path)
    if not isinstance(model, SleepNet | SleepNetEnsemble):
        raise TypeError(f"save_model expects a SleepNet or SleepNetEnsemble, got "
                        f"{type(model).__name__}")
    if not isinstance(preprocess, PreprocessSpec):
        raise TypeError(f"preprocess must be a PreprocessSpec, got {type(preprocess).__name__}")
    _check_spec(path, model, preprocess)
    tensors = _state_tensors(model)
    config_json = model.cfg.to_json()
    groups_json = (json.dumps(list(model.groups))
                   if isinstance(model, SleepNetEnsemble) and model.grouped else None)
    model_id = compute_model_id(_id_text(config_json, groups_json), tensors)
    metadata = {
        "format_version": FORMAT_VERSION,
        "config": config_json,
        "preprocess": preprocess.to_json(),
        "label_maps": json.dumps(
            DEFAULT_LABEL_MAPS if label_maps is None else label_maps,
            sort_keys=True,
            allow_nan=False,
        ),
        "model_id": model_id,
    }
    if card is not None:
        metadata["card"] = json.dumps(card, sort_keys=True, allow_nan=False)
    if isinstance(model, SleepNetEnsemble):
        metadata["members"] = str(model.n_members)
        if groups_json is not None:
            metadata["member_groups"] = groups_json
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return model_id


def _check_spec(path: Path, model: Predictor, preprocess: PreprocessSpec) -> None:
    """``ValueError`` naming ``path`` unless ``preprocess`` feeds every modality the model reads
    with the samples per epoch it reads."""
    for modality in model.modalities:
        if modality not in preprocess:
            raise ValueError(f"{path}: preprocess spec has no {modality}, which the model reads")
        if preprocess.n_times(modality) != model.n_times:
            raise ValueError(
                f"{path}: preprocess spec gives {preprocess.n_times(modality)} samples per epoch "
                f"for {modality}, the model reads {model.n_times}"
            )


def read_header(path: str | Path) -> dict[str, Any]:
    """Parse a safetensors header (8-byte little-endian length + JSON) without loading tensors.

    Checks the framing: the JSON is an object whose entries are ``__metadata__`` (string values)
    or tensors with ``dtype``, ``shape`` and ``data_offsets`` that exactly tile the data section.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise ValueError(f"{path}: not a safetensors file (header length {n} out of range)")
            raw = f.read(n)
    except OSError as err:
        raise ValueError(f"{path}: cannot read checkpoint ({err.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ValueError(f"{path}: header metadata must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{path}: malformed header entry for tensor {name!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not (_int_list(shape) and _int_list(offsets) and len(offsets) == 2):
            raise ValueError(f"{path}: malformed shape or data offsets of tensor {name!r}")
        itemsize = _ITEMSIZE.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if itemsize is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']!r}")
        start, end = offsets
        if end - start != itemsize * math.prod(shape):
            raise ValueError(f"{path}: tensor {name!r} of shape {shape} and dtype "
                             f"{info['dtype']} does not fill its {end - start} bytes")
        spans.append((start, end))
    pos = 0
    for start, end in sorted(spans):
        if start != pos or end < start:
            raise ValueError(f"{path}: tensor data offsets do not tile the data section")
        pos = end
    if 8 + n + pos != size:
        raise ValueError(f"{path}: file size {size} does not match its header ({8 + n + pos})")
    return header


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _json_field(path: Path, meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise ValueError(f"{path}: metadata {key!r} is not valid JSON") from None


def load_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Read and validate a checkpoint's header: version, config, preprocessing spec, model id."""
    path = Path(path)
    header = read_header(path)
    meta = header.get("__metadata__", {})
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{path}: not an rtsleep checkpoint (metadata lacks {missing})")
    version = meta["format_version"]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {version!r} is not supported "
            f"(this rtsleep reads {FORMAT_VERSION!r})"
        )
    try:
        config = SleepNetConfig.from_json(meta["config"])
    except ValueError as err:
        raise ValueError(f"{path}: bad config ({err})") from None
    try:
        preprocess = PreprocessSpec.from_json(meta["preprocess"])
    except ValueError as err:
        raise ValueError(f"{path}: bad preprocess spec ({err})") from None
    label_maps = _json_field(path, meta, "label_maps")
    card = _json_field(path, meta, "card") if "card" in meta else None
    if not isinstance(label_maps, dict):
        raise ValueError(f"{path}: metadata 'label_maps' must be a JSON object")
    tensors = {
        k: (str(v["dtype"]), tuple(int(s) for s in v["shape"]))
        for k, v in header.items()
        if k != "__metadata__"
    }
    members_text = meta.get("members", "1")
    if not members_text.isdigit() or int(members_text) < 1:
        raise ValueError(f"{path}: metadata 'members' must be a positive integer, "
                         f"got {members_text!r}")
    groups = _json_field(path, meta, "member_groups") if "member_groups" in meta else None
    if groups is not None and (
        not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)
        or len(groups) != int(members_text)
    ):
        raise ValueError(f"{path}: metadata 'member_groups' must list one group name per member")
    return CheckpointMeta(
        path=path,
        format_version=version,
        model_id=meta["model_id"],
        config=config,
        config_json=meta["config"],
        preprocess=preprocess,
        label_maps=label_maps,
        card=card,
        tensors=tensors,
        members=int(members_text),
        member_groups=groups,
        member_groups_json=meta.get("member_groups"),
    )


def _check_tensors(path: Path, model: Predictor, tensors: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(
            f"unexpected tensors {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else "")
        )
    if wrong:
        problems.append("wrong shapes " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
    bad_dtype = [
        f"{k} {str(tensors[k].dtype).removeprefix('torch.')}"
        for k in sorted(set(expected) & set(tensors))
        if (tensors[k].dtype not in _WEIGHT_DTYPES if expected[k].is_floating_point()
            else tensors[k].dtype != expected[k].dtype)
    ]
    if bad_dtype:
        problems.append("wrong dtypes (weights must be float32 or float64) "
                        + "; ".join(bad_dtype[:5]) + (" ..." if len(bad_dtype) > 5 else ""))
    if problems:
        raise ValueError(f"{path}: weights do not match the config: " + ", ".join(problems))
    non_finite = [k for k in sorted(tensors)
                  if tensors[k].is_floating_point() and not bool(tensors[k].isfinite().all())]
    if non_finite:
        raise ValueError(f"{path}: non-finite weights in {non_finite[:5]}"
                         + (" ..." if len(non_finite) > 5 else ""))


def load_predictor(
    path: str | Path,
    expected_preprocess: PreprocessSpec | None = None,
    device: torch.device | str = "cpu",
) -> Predictor:
    """Rebuild a :class:`SleepNet` or :class:`SleepNetEnsemble` from a checkpoint alone, in eval
    mode.

    Raises ``ValueError`` naming ``path`` for a wrong format version, missing/unexpected tensors,
    wrong shapes, a model id that does not match the contents, or a preprocessing spec that
    differs from ``expected_preprocess``.
    """
    path = Path(path)
    meta = load_checkpoint_meta(path)
    if expected_preprocess is not None:
        diffs = expected_preprocess.mismatches(meta.preprocess)
        if diffs:
            raise ValueError(
                f"{path}: preprocessing spec does not match (expected != checkpoint): "
                + "; ".join(diffs)
            )
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors' own error types; one line naming the file
        raise ValueError(f"{path}: cannot read the tensors ({_first_line(err)})") from None
    model_id = compute_model_id(_id_text(meta.config_json, meta.member_groups_json), tensors)
    if model_id != meta.model_id:
        raise ValueError(
            f"{path}: model_id mismatch (header {meta.model_id[:12]}..., contents "
            f"{model_id[:12]}...): the file was edited or is corrupt"
        )
    member_ids = {name.split(".")[1] for name in tensors if name.startswith("members.")}
    if member_ids != ({str(i) for i in range(meta.members)} if meta.members > 1 else set()):
        raise ValueError(f"{path}: metadata 'members' is {meta.members}, the tensors hold "
                         f"{len(member_ids) or 1} model(s)")
    try:
        model: Predictor = (
            SleepNet(meta.config) if meta.members == 1
            else SleepNetEnsemble(meta.config, meta.members, meta.member_groups)
        )
    except (RuntimeError, MemoryError) as err:  # e.g. sizes too large to allocate
        raise ValueError(f"{path}: cannot build the model its config describes "
                         f"({_first_line(err)})") from None
    _check_spec(path, model, meta.preprocess)
    _check_tensors(path, model, tensors)
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(float_dtypes.pop())
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def load_model(
    path: str | Path,
    expected_preprocess: PreprocessSpec | None = None,
    device: torch.device | str = "cpu",
) -> SleepNet:
    """:func:`load_predictor` for a single model (training starts from one): an ensemble file
    raises ``ValueError`` naming ``path``."""
    model = load_predictor(path, expected_preprocess, device)
    if not isinstance(model, SleepNet):
        raise ValueError(f"{path}: holds an ensemble of {model.n_members} models; training "
                         "starts from a single model")
    return model

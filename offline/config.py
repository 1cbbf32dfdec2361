"""TOML-loadable training configs: nested dataclasses filled from a TOML file or a preset name.

``load_config(cls, source)`` reads ``source`` (a path to a ``.toml`` file, or the name of a preset
in ``offline/configs/``, e.g. ``"neuronet-paper"``) into the dataclass ``cls``: every table maps to
a nested dataclass field, lists become tuples where the field is a tuple, and an unknown key or a
wrong type raises ``ValueError`` naming the file and the key. Fields not in the file keep their
defaults (sized for 2 CPU cores).

The model section (:class:`ModelSection`) names a :class:`~rtsleep.models.SleepNetConfig` preset
(``tiny``, ``default``, ``paper``) and optional overrides merged into it, e.g.::

    [model]
    preset = "default"
    [model.overrides.temporal]
    d_model = 96
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rtsleep.models.sleepnet import SleepNetConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""Shipped presets: ``offline/configs/<name>.toml``."""

T = TypeVar("T")

MODEL_PRESETS = ("tiny", "default", "paper")


@dataclass
class ModelSection:
    """Which :class:`SleepNetConfig` to build: a preset plus nested overrides."""

    preset: str = "default"
    #: Nested dict merged into ``SleepNetConfig.<preset>().to_dict()`` (same keys as the JSON).
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.build()  # checked when the config is read, so the error names the file

    def build(self) -> SleepNetConfig:
        """The resulting :class:`SleepNetConfig` (``ValueError`` for unknown presets/keys)."""
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"model preset must be one of {MODEL_PRESETS}, got {self.preset!r}")
        base = getattr(SleepNetConfig, self.preset)().to_dict()
        try:
            return SleepNetConfig.from_dict(deep_merge(base, self.overrides))
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"overrides: {err}") from None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in recursively (``over`` wins); neither is modified."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config_path(source: str | Path) -> Path:
    """A TOML path as given, or the shipped preset ``offline/configs/<source>.toml``."""
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ValueError(f"{path}: config file not found")
        return path
    preset = CONFIG_DIR / f"{source}.toml"
    if not preset.is_file():
        have = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ValueError(f"{source}: neither a config file nor a preset (presets: {have})")
    return preset


def load_config(cls: type[T], source: str | Path | None = None) -> T:
    """Defaults of ``cls`` updated from ``source`` (TOML path or preset name; None = defaults)."""
    if source is None:
        return cls()
    path = resolve_config_path(source)
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    return from_dict(cls, table, str(path))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a nested dict; ``ValueError`` naming ``where`` and the key."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}: {name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_to_json(cfg: Any) -> str:
    """Canonical JSON of a config dataclass (sorted keys), for logs and checkpoints."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, allow_nan=False)

"""Daemon configuration: TOML file -> validated dataclasses, with environment overrides.

Layout (every section and key optional except ``[[beds]]``; see ``systemd/rtsleep.toml.example``)::

    [daemon]
    state_dir = "/var/lib/rtsleep"     # per-bed state files (StateDirectory= under systemd)
    state_max_age_s = 3600.0           # a saved state older than this is not restored
    context_reset_s = 3600.0           # no scorable epoch this long: a new recording (0: never)
    heartbeat_s = 5.0                  # status/ heartbeat period
    epoch_timeout_s = 10.0             # a stream this late past an epoch end is flagged missing
    poll_s = 0.02                      # main-loop idle sleep
    log_format = "text"                # "text" or "journal" (no timestamps: journald adds them)
    inlet_buffer_s = 3600              # liblsl queue per stream: at most this many s of data ...
    inlet_buffer_mb = 2.5              # ... and at most what fits in this many MB (0: no bound)

    [model]
    path = ""                          # empty: the bundled rtsleep/assets/default.safetensors
    device = "auto"                    # auto | cpu | cuda
    max_batch = 256                    # beds scored in one forward step
    threads = 1                        # torch CPU threads (0: torch's default)

    [zmq]
    endpoints = ["tcp://127.0.0.1:5556"]
    sndhwm = 1000                      # per subscriber; a slow one drops messages, never blocks
    curve_secret_key = ""              # server secret certificate file; "" = no CURVE
    curve_allow_dir = ""               # directory of authorised client public key files

    [alerts]
    apnea_prob = 0.5                   # per-epoch model probability that raises an alert
    hypopnea_prob = 0.5
    gate_wake = true                   # no alerts during epochs scored as wake
    aasm = true                        # AASM events from airflow/effort/SpO2 when a bed has them
    hypopnea_rule = "1A"               # 1A (>= 3 % desaturation) or 1B (>= 4 %)
    ecg = false                        # ECG apnea model alerts (about 50 ms CPU per bed-epoch)

    [[beds]]
    id = "bed1"                        # [A-Za-z0-9_.-]+ (used in topics and file names)
    streams = [{ type = "EEG", source_id = "amp1-eeg" }, { name = "amp1-ecg" }]
    channels = { "C3-A2" = "EEG" }     # label -> modality overrides of the alias table
    eeg_derivation = "auto"            # auto (from the EEG label), referential or bipolar

Environment overrides: ``RTSLEEP_<SECTION>_<KEY>`` (``RTSLEEP_MODEL_DEVICE=cpu``,
``RTSLEEP_DAEMON_STATE_DIR=/tmp/s``); lists are comma-separated (``RTSLEEP_ZMQ_ENDPOINTS``).
Beds are not overridable from the environment.

Every problem raises :class:`ConfigError` with the one-line message ``"<file>: <key>: <problem>"``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtsleep.data.channels import DERIVATION_KINDS
from rtsleep.data.recording import Modality

ENV_PREFIX = "RTSLEEP_"
BED_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
AUTO_DERIVATION = "auto"
"""``[[beds]] eeg_derivation`` default: the kind is read from the EEG channel's label."""
_TCP_RE = re.compile(r"^tcp://(\*|[A-Za-z0-9_.\-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")
_IPC_RE = re.compile(r"^ipc://.+$")
_INPROC_RE = re.compile(r"^inproc://[A-Za-z0-9_.\-]+$")
#: Upper bound of ``daemon.inlet_buffer_s``: one day of data per stream.
MAX_INLET_BUFFER_S = 86400


class ConfigError(ValueError):
    """Invalid configuration: ``"<file>: <key>: <problem>"``."""

    def __init__(self, source: str | Path, key: str, problem: str) -> None:
        self.source = str(source)
        self.key = key
        self.problem = problem
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        super().__init__(where + problem)


@dataclass
class DaemonSection:
    """Process-level settings; durations in seconds."""

    state_dir: Path = Path("/var/lib/rtsleep")
    state_max_age_s: float = 3600.0
    #: A bed with no scorable epoch for this long starts its model context afresh at the next
    #: one (a new recording; ``rtsleep.daemon.scorer`` module doc); 0 = never.
    context_reset_s: float = 3600.0
    heartbeat_s: float = 5.0
    epoch_timeout_s: float = 10.0
    poll_s: float = 0.02
    log_format: str = "text"
    #: Upper bound (whole s) of the data liblsl queues per inlet while the loop is busy; beyond
    #: it the oldest samples are dropped. liblsl preallocates the queue, so it is also bounded by
    #: ``inlet_buffer_mb`` per stream (never below 60 s, twice the unit's WatchdogSec=30: a loop
    #: stalled longer is restarted by systemd and its queues are lost anyway). The defaults keep
    #: a 4-channel 256-Hz bed near 2.5 MB (610 s) and hold a whole 30-min 50-Hz PSG replayed at
    #: ``--speed max``; longer or wider replays faster than real time need larger values.
    inlet_buffer_s: int = 3600
    #: Memory bound (MB, 1e6 bytes) of each stream's liblsl queue; 0 = bounded by time only.
    inlet_buffer_mb: float = 2.5


@dataclass
class ModelSection:
    """Which model to load and where to run it."""

    path: str = ""
    device: str = "auto"
    max_batch: int = 256
    threads: int = 1


@dataclass
class ZmqSection:
    """Publishing endpoints and optional CURVE authentication."""

    endpoints: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:5556"])
    sndhwm: int = 1000
    curve_secret_key: str = ""
    curve_allow_dir: str = ""

    @property
    def curve_enabled(self) -> bool:
        return bool(self.curve_secret_key)


@dataclass
class AlertsSection:
    """Respiratory alerts: model-probability thresholds and the AASM signal pathway."""

    apnea_prob: float = 0.5
    hypopnea_prob: float = 0.5
    gate_wake: bool = True
    aasm: bool = True
    hypopnea_rule: str = "1A"
    ecg: bool = False


@dataclass
class StreamSpec:
    """LSL stream selector; every given field must match, at least one is required."""

    name: str = ""
    type: str = ""
    source_id: str = ""


@dataclass
class BedConfig:
    """One bed: the streams that feed it, channel-label -> modality overrides, and the kind of
    its EEG derivation (``"auto"``: read from the EEG channel's label; or
    ``rtsleep.data.channels.REFERENTIAL`` / ``BIPOLAR``, for labels that do not say, such as a
    bare ``C3``), which picks the model's derivation group."""

    id: str
    streams: list[StreamSpec]
    channels: dict[str, Modality] = field(default_factory=dict)
    eeg_derivation: str = AUTO_DERIVATION


@dataclass
class Config:
    """The whole daemon configuration."""

    daemon: DaemonSection = field(default_factory=DaemonSection)
    model: ModelSection = field(default_factory=ModelSection)
    zmq: ZmqSection = field(default_factory=ZmqSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    beds: list[BedConfig] = field(default_factory=list)
    #: The file this was loaded from (for messages).
    source: str = "<config>"


MAX_THREADS = 1024
"""Largest ``model.threads`` accepted (a typo of a huge count fails at model load)."""

MAX_SNDHWM = 1_000_000
"""Largest ``zmq.sndhwm`` accepted (messages queued per subscriber)."""

_SECTIONS: dict[str, type] = {
    "daemon": DaemonSection,
    "model": ModelSection,
    "zmq": ZmqSection,
    "alerts": AlertsSection,
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, src: str, key: str) -> Any:
    """Check ``value`` against the annotated field type ``tp`` (TOML values, no guessing)."""
    origin = typing.get_origin(tp)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(src, key, f"expected a non-empty path string, got {value!r}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(src, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(src, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(src, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(src, key, f"expected a string, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(src, key, f"expected a list, got {value!r}")
        return [_coerce(v, item_tp, src, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"union config fields are not supported ({key})")
    raise TypeError(f"unsupported config field type {_type_name(tp)} ({key})")


def _build_section(cls: type, table: Any, src: str, prefix: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(src, prefix, f"expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(src, f"{prefix}.{key}", f"unknown key (known: {sorted(names)})")
        kwargs[key] = _coerce(value, hints[key], src, f"{prefix}.{key}")
    return cls(**kwargs)


def _parse_env(raw: str, tp: Any, src: str, key: str) -> Any:
    """Convert an environment string to the field type, then validate like TOML input."""
    value: Any
    if tp is bool:
        low = raw.strip().lower()
        if low not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(src, key, f"expected a boolean, got {raw!r}")
        value = low in ("1", "true", "yes")
    elif tp is int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(src, key, f"expected an integer, got {raw!r}") from None
    elif tp is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(src, key, f"expected a number, got {raw!r}") from None
    elif typing.get_origin(tp) is list:
        value = [s.strip() for s in raw.split(",") if s.strip()]
    else:
        value = raw
    return _coerce(value, tp, src, key)


def _apply_env(cfg: Config, env: Mapping[str, str]) -> dict[str, str]:
    """Apply the ``RTSLEEP_<SECTION>_<KEY>`` overrides; returns ``{"section.key": variable}``
    of those applied. A variable that names a section but no key of it is a ``ConfigError``
    (a typo must not be ignored silently)."""
    applied: dict[str, str] = {}
    for section, cls in _SECTIONS.items():
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(cls)
        names = {f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}": f.name
                 for f in dataclasses.fields(cls)}
        for var in sorted(v for v in env if v.startswith(f"{ENV_PREFIX}{section.upper()}_")):
            if var not in names:
                raise ConfigError(var, "",
                                  f"unknown setting; [{section}] has {sorted(names.values())}")
            name = names[var]
            setattr(obj, name, _parse_env(env[var], hints[name], var, f"{section}.{name}"))
            applied[f"{section}.{name}"] = var
    return applied


def _build_beds(value: Any, src: str) -> list[BedConfig]:
    if not isinstance(value, list):
        raise ConfigError(src, "beds", "expected an array of tables ([[beds]])")
    beds: list[BedConfig] = []
    seen: set[str] = set()
    for i, table in enumerate(value):
        key = f"beds[{i}]"
        if not isinstance(table, Mapping):
            raise ConfigError(src, key, "expected a table")
        unknown = set(table) - {"id", "streams", "channels", "eeg_derivation"}
        if unknown:
            raise ConfigError(src, f"{key}.{sorted(unknown)[0]}", "unknown key (known: "
                              "['channels', 'eeg_derivation', 'id', 'streams'])")
        bed_id = table.get("id")
        if not isinstance(bed_id, str) or not BED_ID_RE.match(bed_id):
            raise ConfigError(src, f"{key}.id", f"expected 1-64 of [A-Za-z0-9_.-], got {bed_id!r}")
        if bed_id in seen:
            raise ConfigError(src, f"{key}.id", f"duplicate bed id {bed_id!r}")
        seen.add(bed_id)
        streams_raw = table.get("streams")
        if not isinstance(streams_raw, list) or not streams_raw:
            raise ConfigError(src, f"{key}.streams", "expected a non-empty array of selectors")
        streams = [
            _build_section(StreamSpec, s, src, f"{key}.streams[{j}]")
            for j, s in enumerate(streams_raw)
        ]
        for j, s in enumerate(streams):
            if not (s.name or s.type or s.source_id):
                raise ConfigError(src, f"{key}.streams[{j}]",
                                  "a selector needs at least one of name, type, source_id")
            for field_name in ("name", "type", "source_id"):
                value = getattr(s, field_name)
                if value and any(ord(c) < 32 or ord(c) == 127 for c in value):
                    raise ConfigError(src, f"{key}.streams[{j}].{field_name}",
                                      f"has control characters: {value!r}")
        channels_raw = table.get("channels", {})
        if not isinstance(channels_raw, Mapping):
            raise ConfigError(src, f"{key}.channels", "expected a table label = modality")
        channels: dict[str, Modality] = {}
        for label, mod in channels_raw.items():
            try:
                channels[str(label)] = Modality(str(mod).upper())
            except ValueError:
                raise ConfigError(src, f"{key}.channels.{label}",
                                  f"unknown modality {mod!r} (known: "
                                  f"{[m.value for m in Modality]})") from None
        derivation = table.get("eeg_derivation", AUTO_DERIVATION)
        allowed = (AUTO_DERIVATION, *DERIVATION_KINDS)
        if derivation not in allowed:
            raise ConfigError(src, f"{key}.eeg_derivation",
                              f"expected one of {list(allowed)}, got {derivation!r}")
        beds.append(BedConfig(id=bed_id, streams=streams, channels=channels,
                              eeg_derivation=derivation))
    return beds


def check_endpoint(endpoint: str) -> str | None:
    """The problem with a ZeroMQ bind endpoint, or ``None`` when it is valid."""
    m = _TCP_RE.match(endpoint)
    if m:
        port = int(m.group(2))
        return None if 1 <= port <= 65535 else f"port {port} outside 1-65535"
    if _IPC_RE.match(endpoint) or _INPROC_RE.match(endpoint):
        return None
    return f"expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {endpoint!r}"


def validate(cfg: Config) -> None:
    """Cross-field checks; raises :class:`ConfigError`."""
    src = cfg.source
    d, m, z, a = cfg.daemon, cfg.model, cfg.zmq, cfg.alerts
    for key, v, most in (("daemon.heartbeat_s", d.heartbeat_s, 3600.0),
                         ("daemon.epoch_timeout_s", d.epoch_timeout_s, 3600.0),
                         ("daemon.poll_s", d.poll_s, 1.0),
                         ("daemon.state_max_age_s", d.state_max_age_s, 7 * 86400.0)):
        if not 0 < v <= most:
            raise ConfigError(src, key, f"must be > 0 and <= {most:g} s, got {v}")
    if not 0 <= d.context_reset_s < math.inf:
        raise ConfigError(src, "daemon.context_reset_s", f"must be >= 0 s (0: never), got "
                          f"{d.context_reset_s}")
    if not 1 <= d.inlet_buffer_s <= MAX_INLET_BUFFER_S:
        raise ConfigError(src, "daemon.inlet_buffer_s", f"must be in 1..{MAX_INLET_BUFFER_S} s, "
                          f"got {d.inlet_buffer_s}")
    if not 0 <= d.inlet_buffer_mb <= 10_000:
        raise ConfigError(src, "daemon.inlet_buffer_mb", f"must be in 0..10000 MB, "
                          f"got {d.inlet_buffer_mb}")
    if d.log_format not in ("text", "journal"):
        raise ConfigError(src, "daemon.log_format", f"expected 'text' or 'journal', got "
                          f"{d.log_format!r}")
    if m.device not in ("auto", "cpu", "cuda") and not re.match(r"^cuda:\d+$", m.device):
        raise ConfigError(src, "model.device", f"expected auto, cpu, cuda or cuda:N, got "
                          f"{m.device!r}")
    if m.max_batch < 1:
        raise ConfigError(src, "model.max_batch", f"must be >= 1, got {m.max_batch}")
    if not 0 <= m.threads <= MAX_THREADS:
        raise ConfigError(src, "model.threads", f"must be in 0..{MAX_THREADS}, got {m.threads}")
    if not z.endpoints:
        raise ConfigError(src, "zmq.endpoints", "at least one endpoint is needed")
    for i, ep in enumerate(z.endpoints):
        problem = check_endpoint(ep)
        if problem:
            raise ConfigError(src, f"zmq.endpoints[{i}]", problem)
    if not 1 <= z.sndhwm <= MAX_SNDHWM:
        raise ConfigError(src, "zmq.sndhwm", f"must be in 1..{MAX_SNDHWM}, got {z.sndhwm}")
    if bool(z.curve_secret_key) != bool(z.curve_allow_dir):
        raise ConfigError(src, "zmq.curve_allow_dir" if z.curve_secret_key else
                          "zmq.curve_secret_key",
                          "CURVE needs both curve_secret_key and curve_allow_dir")
    for key, p in (("alerts.apnea_prob", a.apnea_prob), ("alerts.hypopnea_prob",
                   a.hypopnea_prob)):
        if not 0.0 < p <= 1.0:
            raise ConfigError(src, key, f"must be in (0, 1], got {p}")
    if a.hypopnea_rule not in ("1A", "1B"):
        raise ConfigError(src, "alerts.hypopnea_rule", f"expected '1A' or '1B', got "
                          f"{a.hypopnea_rule!r}")
    if not cfg.beds:
        raise ConfigError(src, "beds", "at least one [[beds]] entry is needed")


def config_from_dict(data: Mapping[str, Any], source: str = "<config>",
                     env: Mapping[str, str] | None = None) -> Config:
    """Build and validate a :class:`Config` from parsed TOML; ``env`` overrides (default none)."""
    cfg = Config(source=source)
    for key, value in data.items():
        if key in _SECTIONS:
            setattr(cfg, key, _build_section(_SECTIONS[key], value, source, key))
        elif key == "beds":
            cfg.beds = _build_beds(value, source)
        else:
            raise ConfigError(source, key, f"unknown section (known: "
                              f"{sorted([*_SECTIONS, 'beds'])})")
    from_env = _apply_env(cfg, env) if env is not None else {}
    try:
        validate(cfg)
    except ConfigError as err:
        if err.key not in from_env:
            raise
        raise ConfigError(from_env[err.key], err.key, err.problem) from None
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a TOML config; ``env`` defaults to ``os.environ``.

    Raises :class:`ConfigError` (a ``ValueError``) naming the file and key on any problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(path, "", f"cannot read: {err.strerror or err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", f"malformed TOML: {err}") from None
    return config_from_dict(data, source=str(path), env=os.environ if env is None else env)

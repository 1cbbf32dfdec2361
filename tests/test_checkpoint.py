"""Checkpoints: round trip (also in a fresh process), no pickle, clear mismatch errors."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.data.recording import EXG_MODALITIES, Modality
from rtsleep.models import SleepNet, SleepNetConfig, load_checkpoint_meta, load_model, save_model
from rtsleep.models.checkpoint import FORMAT_VERSION, compute_model_id, read_header

torch.set_num_threads(1)
M = len(EXG_MODALITIES)
S = 3000


def _net(seed: int = 0, **overrides: object) -> SleepNet:
    torch.manual_seed(seed)
    cfg = SleepNetConfig.tiny()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    net = SleepNet(cfg)
    # move BatchNorm statistics off their initial values so that buffers are checked too
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 3, M, S), torch.ones(2, 3, M, dtype=torch.bool))
    return net.eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, M, S, generator=g)
    mask = torch.rand(2, 6, M, generator=g) > 0.3
    return x, mask


Tensors = dict[str, torch.Tensor]


def _rewrite(
    src: Path,
    dst: Path,
    metadata_update: dict[str, str],
    tensors_update: Callable[[Tensors], Tensors] | None = None,
) -> None:
    header = read_header(src)
    meta = dict(header["__metadata__"])
    meta.update(metadata_update)
    tensors = load_file(str(src))
    if tensors_update is not None:
        tensors = tensors_update(tensors)
    save_file(tensors, str(dst), metadata=meta)


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[SleepNet, Path, str]:
    net = _net()
    path = tmp_path / "model.safetensors"
    model_id = save_model(net, path, PreprocessSpec.default(), card={"name": "tiny test"})
    return net, path, model_id


def test_round_trip_gives_identical_outputs(saved: tuple[SleepNet, Path, str]) -> None:
    net, path, _ = saved
    loaded = load_model(path)
    x, mask = _inputs()
    with torch.no_grad():
        a, _ = net(x, mask)
        b, _ = loaded(x, mask)
    assert not loaded.training
    assert torch.equal(a.stage_logits, b.stage_logits)
    assert torch.equal(a.apnea_prob, b.apnea_prob)
    assert torch.equal(a.hypopnea_prob, b.hypopnea_prob)


def test_fresh_process_loads_identical_model(
    saved: tuple[SleepNet, Path, str], tmp_path: Path
) -> None:
    net, path, _ = saved
    x, mask = _inputs(2)
    save_file({"x": x, "mask": mask}, str(tmp_path / "inputs.safetensors"))
    script = f"""
import torch
from safetensors.torch import load_file, save_file
from rtsleep.models import load_model
torch.set_num_threads(1)
net = load_model({str(path)!r})
inp = load_file({str(tmp_path / "inputs.safetensors")!r})
with torch.no_grad():
    out, state = net(inp["x"], inp["mask"])
save_file({{"stage_logits": out.stage_logits, "apnea_prob": out.apnea_prob,
           "ssm": state["layers.0.ssm_state"]}}, {str(tmp_path / "out.safetensors")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[1])
    theirs = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        ours, state = net(x, mask)
    assert torch.equal(ours.stage_logits, theirs["stage_logits"])
    assert torch.equal(ours.apnea_prob, theirs["apnea_prob"])
    assert torch.equal(state["layers.0.ssm_state"], theirs["ssm"])


def test_file_is_plain_safetensors_without_pickle(saved: tuple[SleepNet, Path, str]) -> None:
    net, path, model_id = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert raw[:2] != b"\x80\x02" and not raw.startswith(b"PK")  # neither pickle nor torch zip
    assert raw[8:9] == b"{"
    meta = header.pop("__metadata__")
    assert set(meta) == {"format_version", "config", "preprocess", "label_maps", "model_id", "card"}
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model_id"] == model_id
    assert json.loads(meta["label_maps"])["stage"] == ["W", "N1", "N2", "N3", "R"]
    assert set(header) == set(net.state_dict())
    end = 0
    for info in header.values():
        assert set(info) == {"dtype", "shape", "data_offsets"}
        end = max(end, info["data_offsets"][1])
    assert 8 + n + end == len(raw)


def test_meta_gives_model_id_config_and_spec_without_weights(
    saved: tuple[SleepNet, Path, str],
) -> None:
    net, path, model_id = saved
    meta = load_checkpoint_meta(path)
    assert meta.model_id == model_id
    assert meta.config == net.cfg
    assert meta.preprocess == PreprocessSpec.default()
    assert meta.card == {"name": "tiny test"}


def test_model_id_depends_on_weights_and_config() -> None:
    a, b = _net(0), _net(1)
    ta, tb = a.state_dict(), b.state_dict()
    assert compute_model_id(a.cfg.to_json(), ta) != compute_model_id(a.cfg.to_json(), tb)
    assert compute_model_id(a.cfg.to_json(), ta) == compute_model_id(a.cfg.to_json(), dict(ta))
    other_cfg = dataclasses.replace(a.cfg, lookahead_epochs=1)
    assert compute_model_id(a.cfg.to_json(), ta) != compute_model_id(other_cfg.to_json(), ta)


def test_save_rejects_a_spec_that_does_not_feed_the_model(tmp_path: Path) -> None:
    spec = PreprocessSpec.default()
    no_ecg = dataclasses.replace(
        spec, modalities=tuple(m for m in spec.modalities if m.modality != Modality.ECG)
    )
    with pytest.raises(ValueError, match="ECG"):
        save_model(_net(), tmp_path / "m.safetensors", no_ecg)
    assert not (tmp_path / "m.safetensors").exists()


def test_float64_model_round_trips_in_float64(tmp_path: Path) -> None:
    net = _net().double()
    save_model(net, tmp_path / "m64.safetensors", PreprocessSpec.default())
    loaded = load_model(tmp_path / "m64.safetensors")
    assert loaded.input_proj.weight.dtype == torch.float64


def test_wrong_format_version_is_rejected(
    saved: tuple[SleepNet, Path, str], tmp_path: Path
) -> None:
    _, path, _ = saved
    bad = tmp_path / "v99.safetensors"
    _rewrite(path, bad, {"format_version": "99"})
    with pytest.raises(ValueError, match=r"v99\.safetensors: .*format_version '99'"):
        load_model(bad)


def test_preprocess_mismatch_is_rejected(saved: tuple[SleepNet, Path, str]) -> None:
    _, path, _ = saved
    spec = PreprocessSpec.default()
    eeg = spec.for_modality(Modality.EEG)
    other = dataclasses.replace(
        spec,
        modalities=tuple(
            dataclasses.replace(m, band_hz=(0.5, 40.0)) if m is eeg else m for m in spec.modalities
        ),
    )
    with pytest.raises(ValueError, match=r"model\.safetensors: preprocessing spec .*EEG\.band_hz"):
        load_model(path, expected_preprocess=other)
    assert isinstance(load_model(path, expected_preprocess=PreprocessSpec.default()), SleepNet)


def _with_consistent_id(src: Path, dst: Path, tensors_update: Callable[[Tensors], Tensors]) -> None:
    """Rewrite ``src`` with changed tensors and a model id that matches them."""
    meta = dict(read_header(src)["__metadata__"])
    tensors = tensors_update(load_file(str(src)))
    meta["model_id"] = compute_model_id(meta["config"], tensors)
    save_file(tensors, str(dst), metadata=meta)


def test_wrong_tensor_shape_is_rejected(saved: tuple[SleepNet, Path, str], tmp_path: Path) -> None:
    _, path, _ = saved
    bad = tmp_path / "shape.safetensors"
    wider = _net(0, heads=dataclasses.replace(SleepNetConfig.tiny().heads, n_outputs=6))
    _with_consistent_id(
        path, bad, lambda t: {**t, "heads.stage.weight": wider.state_dict()["heads.stage.weight"]}
    )
    with pytest.raises(
        ValueError, match=r"shape\.safetensors: .*wrong shapes heads\.stage\.weight"
    ):
        load_model(bad)


def test_missing_and_unexpected_tensors_are_rejected(
    saved: tuple[SleepNet, Path, str], tmp_path: Path
) -> None:
    _, path, _ = saved
    missing = tmp_path / "missing.safetensors"
    _with_consistent_id(
        path, missing, lambda t: {k: v for k, v in t.items() if k != "heads.apnea.bias"}
    )
    with pytest.raises(ValueError, match=r"missing tensors \['heads\.apnea\.bias'\]"):
        load_model(missing)
    extra = tmp_path / "extra.safetensors"
    _with_consistent_id(path, extra, lambda t: {**t, "surprise": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected tensors \['surprise'\]"):
        load_model(extra)


def test_edited_weights_fail_the_model_id_check(
    saved: tuple[SleepNet, Path, str], tmp_path: Path
) -> None:
    _, path, _ = saved
    bad = tmp_path / "edited.safetensors"
    _rewrite(path, bad, {}, lambda t: {**t, "heads.apnea.bias": t["heads.apnea.bias"] + 1})
    with pytest.raises(ValueError, match=r"edited\.safetensors: model_id mismatch"):
        load_model(bad)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x80\x04\x95 pickled", "header length"),
        (b"abc", "shorter than 8 bytes"),
        (struct.pack("<Q", 5) + b"nope!", "not JSON"),
    ],
)
def test_non_safetensors_files_are_rejected(tmp_path: Path, content: bytes, problem: str) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=rf"bad\.safetensors: .*{problem}"):
        load_model(bad)


def test_plain_safetensors_without_metadata_is_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(bad))
    with pytest.raises(ValueError, match="not an rtsleep checkpoint"):
        load_model(bad)


def _edit_header(src: Path, dst: Path, edit: Callable[[dict[str, object]], None]) -> None:
    """Copy ``src`` to ``dst`` with its safetensors header JSON changed by ``edit``."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("data_offsets", [0], "malformed shape or data offsets"),
        ("data_offsets", ["a", "b"], "malformed shape or data offsets"),
        ("data_offsets", None, "malformed shape or data offsets"),
        ("shape", None, "malformed shape or data offsets"),
        ("shape", ["a"], "malformed shape or data offsets"),
        ("shape", [-1], "malformed shape or data offsets"),
        ("shape", [2], "does not fill its"),
        ("dtype", "Q99", "unsupported dtype"),
        ("dtype", 5, "unsupported dtype"),
    ],
)
def test_malformed_tensor_entries_are_one_line_errors_naming_the_file(
    saved: tuple[SleepNet, Path, str], tmp_path: Path, field: str, value: object, problem: str
) -> None:
    # they escaped as TypeError, a ValueError without the file, or safetensors' own error
    _, path, _ = saved
    bad = tmp_path / "entry.safetensors"
    _edit_header(path, bad, lambda h: h["heads.apnea.bias"].__setitem__(field, value))  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=rf"entry\.safetensors: .*{problem}"):
        load_model(bad)


@pytest.mark.parametrize(
    ("cast", "problem"),
    [
        (lambda t: {k: v.half() if v.is_floating_point() else v for k, v in t.items()},
         "wrong dtypes .*float16"),
        (lambda t: {k: v.bfloat16() if v.is_floating_point() else v for k, v in t.items()},
         "wrong dtypes .*bfloat16"),
        (lambda t: {**t, "heads.stage.weight": t["heads.stage.weight"].to(torch.int32)},
         r"wrong dtypes .*heads\.stage\.weight int32"),
        (lambda t: {**t, "heads.stage.bias": t["heads.stage.bias"] * float("nan")},
         r"non-finite weights in \['heads\.stage\.bias'\]"),
    ],
)
def test_weights_the_model_cannot_run_are_rejected_on_load(
    saved: tuple[SleepNet, Path, str], tmp_path: Path,
    cast: Callable[[Tensors], Tensors], problem: str,
) -> None:
    # float16 weights loaded and then failed at every step (float32 input); int weights were
    # cast silently; NaN weights gave NaN probabilities
    _, path, _ = saved
    bad = tmp_path / "dtype.safetensors"
    _with_consistent_id(path, bad, cast)
    with pytest.raises(ValueError, match=rf"dtype\.safetensors: .*{problem}"):
        load_model(bad)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda s: s["modalities"][0].__setitem__("sfreq", "100"), "bad preprocess spec"),
        (lambda s: s["modalities"][0].pop("sfreq"), "bad preprocess spec"),
        (lambda s: s["modalities"].__setitem__(0, 1), "bad preprocess spec"),
        (lambda s: s.__setitem__("epoch_s", None), "bad preprocess spec"),
        (lambda s: s["modalities"][0].__setitem__("sfreq", 200.0),
         "gives 6000 samples per epoch for EEG, the model reads 3000"),
        (lambda s: s.__setitem__("epoch_s", 15.0), "gives 1500 samples per epoch"),
        (lambda s: s["modalities"].pop(0), "preprocess spec has no EEG"),
    ],
)
def test_a_tampered_preprocess_spec_is_rejected_on_load(
    saved: tuple[SleepNet, Path, str], tmp_path: Path,
    edit: Callable[[dict[str, Any]], None], problem: str,
) -> None:
    # ill-typed fields escaped as TypeError; a spec that does not feed the model loaded and
    # failed at every epoch
    _, path, _ = saved
    spec = json.loads(read_header(path)["__metadata__"]["preprocess"])
    edit(spec)
    bad = tmp_path / "spec.safetensors"
    _rewrite(path, bad, {"preprocess": json.dumps(spec)})
    with pytest.raises(ValueError, match=rf"spec\.safetensors: .*{problem}"):
        load_model(bad)


def test_config_fields_of_the_wrong_type_and_a_wrong_member_count_are_rejected(
    saved: tuple[SleepNet, Path, str], tmp_path: Path
) -> None:
    _, path, _ = saved
    cfg = json.loads(read_header(path)["__metadata__"]["config"])
    cfg["lookahead_epochs"] = 1.5
    bad = tmp_path / "cfg.safetensors"
    _rewrite(path, bad, {"config": json.dumps(cfg)})
    with pytest.raises(ValueError, match=r"cfg\.safetensors: bad config .*lookahead_epochs"):
        load_model(bad)
    many = tmp_path / "members.safetensors"
    _rewrite(path, many, {"members": "100000"})  # was 100000 models built before any check
    with pytest.raises(ValueError, match=r"members\.safetensors: metadata 'members' is 100000"):
        load_model(many)

"""``rtsleep score``: one schema-valid stage line per epoch, the daemon's code path, a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from typer.testing import CliRunner

from rtsleep.cli import app
from rtsleep.daemon.replay import load_channels
from rtsleep.daemon.score import iter_results, score_file
from rtsleep.daemon.scorer import Scorer, load_scoring_model, trained_heads
from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models import SleepNet, SleepNetConfig, save_model

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "rtsleep" / "schemas"
                     / "messages.schema.json").read_text())


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(SleepNet(SleepNetConfig.default()).eval(), path, PreprocessSpec.default())
    return path


def excerpt3(shared_data: Path) -> Path:
    return shared_data / "dreams-spindles" / "excerpt3.edf"


def test_score_writes_one_valid_line_per_epoch_equal_to_the_scorer(
    shared_data: Path, model_path: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    edf = excerpt3(shared_data)
    net, spec, model_id, dev = load_scoring_model(model_path, "cpu")
    out = tmp_path / "s.jsonl"
    assert trained_heads(model_path) == {"stage"}
    msgs = score_file(edf, out, Scorer(net, spec, model_id, dev, max_batch=1,
                                       heads=trained_heads(model_path)))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == msgs and len(lines) == 60
    assert [m["epoch"] for m in lines] == list(range(60))
    assert [m["seq"] for m in lines] == list(range(60))
    for m in lines:
        jsonschema.validate(m, SCHEMA)
        assert m["model_id"] == model_id and m["latency_ms"] is None
        assert m["start_lsl"] == 30.0 * m["epoch"]  # offline: seconds from the start
        # the card does not say the apnea/hypopnea heads were trained: not reported
        assert m["apnea_prob"] is None and m["hypopnea_prob"] is None
    again = list(iter_results(Scorer(net, spec, model_id, dev, heads=trained_heads(model_path)),
                              str(edf), load_channels(edf)))
    assert [r.probs for r in again] == [
        None if m["probs"] is None else [m["probs"][k] for k in ("W", "N1", "N2", "N3", "R")]
        for m in lines
    ]


def test_score_with_a_delayed_model_scores_every_epoch_equal_to_the_offline_forward(
    shared_data: Path, tmp_path: Path
) -> None:
    """``rtsleep score`` flushes a model's output delay at the end of the file: all 60 epochs,
    each equal to ``SleepNet.forward`` over the epochs the daemon fed, 2 absent ones after."""
    from offline.spectral_train import spectral_model_config
    from offline.stage_data import load_raw
    from offline.stage_eval import run_offline

    torch.set_num_threads(1)
    torch.manual_seed(2)
    path = tmp_path / "delayed.safetensors"
    save_model(SleepNet(spectral_model_config(lookahead_epochs=2)).eval(), path,
               PreprocessSpec.default())
    net, spec, model_id, dev = load_scoring_model(path, "cpu")
    edf = excerpt3(shared_data)
    msgs = score_file(edf, tmp_path / "d.jsonl", Scorer(net, spec, model_id, dev))
    assert [m["epoch"] for m in msgs] == list(range(60))
    assert all(m["status"] == "scored" for m in msgs)
    folder = tmp_path / "dreams"
    folder.mkdir()
    for name in ("excerpt3.edf", "Hypnogram_excerpt3.txt"):
        (folder / name).symlink_to(edf.parent / name)
    (rec,) = load_raw("dreams", folder, spec)
    off = run_offline(net, rec)  # the same causal preprocessing, then 2 absent epochs
    got = [[m["probs"][k] for k in ("W", "N1", "N2", "N3", "R")] for m in msgs]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64),
                               torch.from_numpy(off.probs).double(),
                               atol=1e-5, rtol=0)


def test_score_cli_png_and_errors(shared_data: Path, model_path: Path, tmp_path: Path) -> None:
    edf = excerpt3(shared_data)
    out = tmp_path / "night.jsonl"
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(edf), "--out", str(out), "--model", str(model_path),
                              "--png", "--dataset", "dreams"])
    assert res.exit_code == 0, res.output
    assert "60 epochs" in res.output
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["score", str(tmp_path / "missing.edf"), "--out", str(out),
                              "--model", str(model_path)])
    assert res.exit_code == 1 and "missing.edf" in res.output
    res = runner.invoke(app, ["score", str(tmp_path), "--out", str(out), "--model",
                              str(model_path)])
    assert res.exit_code == 1 and f"{tmp_path}: is a folder; give one recording file" in res.output
    res = runner.invoke(app, ["score", str(edf), "--out", str(out), "--model",
                              str(tmp_path / "none.safetensors")])
    assert res.exit_code == 1 and "model file not found" in res.output
    res = runner.invoke(app, ["score", str(edf), "--out", str(out), "--model", str(tmp_path)])
    assert res.exit_code == 1 and f"{tmp_path}: not a regular file" in res.output


def test_score_of_a_recording_whose_eeg_is_too_slow_scores_nothing_and_exits_1(
    model_path: Path, tmp_path: Path
) -> None:
    """An EEG below the 50-Hz ExG minimum cannot be model input: every epoch is unscorable
    with that reason (not scored as if the EEG were clean), and the exit status says so."""
    import edfio
    import numpy as np

    rng = np.random.default_rng(0)
    n_s = 300.0
    edf = tmp_path / "slow.edf"
    edfio.Edf([
        edfio.EdfSignal(rng.normal(0, 20, int(10 * n_s)), sampling_frequency=10, label="C3-A1",
                        physical_dimension="uV", physical_range=(-500, 500)),
        edfio.EdfSignal(rng.normal(0, 20, int(100 * n_s)), sampling_frequency=100,
                        label="EOG1-A1", physical_dimension="uV", physical_range=(-500, 500)),
    ], data_record_duration=1.0).write(edf)
    out = tmp_path / "slow.jsonl"
    res = CliRunner().invoke(app, ["score", str(edf), "--out", str(out), "--model",
                                   str(model_path)])
    assert res.exit_code == 1, res.output
    assert "no epoch could be scored" in res.output and "10 Hz, below the 50-Hz" in res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 10 and all(m["status"] == "unscorable" for m in lines)
    assert all("C3-A1" in m["reason"] and "ExG minimum" in m["reason"] for m in lines)


def test_a_score_run_that_fails_midway_leaves_the_previous_output_as_it_was(
    shared_data: Path, model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtsleep.daemon.score as score

    out = tmp_path / "night.jsonl"
    out.write_text("previous run\n")
    real = score.iter_results

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        yield next(real(*args, **kwargs))
        raise RuntimeError("scorer failed")

    monkeypatch.setattr(score, "iter_results", failing)
    net, spec, model_id, dev = load_scoring_model(model_path, "cpu")
    with pytest.raises(RuntimeError, match="scorer failed"):
        score_file(excerpt3(shared_data), out, Scorer(net, spec, model_id, dev, max_batch=1))
    assert out.read_text() == "previous run\n"
    assert [p.name for p in tmp_path.iterdir()] == ["night.jsonl"]


def test_score_cli_entry_point_runs_as_a_module() -> None:
    res = subprocess.run([sys.executable, "-m", "rtsleep.cli", "score", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--png" in res.stdout

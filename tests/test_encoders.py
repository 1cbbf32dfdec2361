"""Epoch encoders: shapes for every modality subset, masking, token masking, heads' aux input."""

from __future__ import annotations

import itertools

import pytest
import torch

from rtsleep.data.recording import EXG_MODALITIES
from rtsleep.models.dual_branch import DualBranchConfig, DualBranchEncoder
from rtsleep.models.frame_encoder import FrameEncoder, FrameEncoderConfig
from rtsleep.models.fusion import FusionConfig, MultimodalFusion
from rtsleep.models.heads import HeadsConfig, SleepHeads
from rtsleep.models.sleepnet import SleepNetConfig

torch.set_num_threads(1)
M = len(EXG_MODALITIES)
S = 3000


def _tiny_fusion() -> MultimodalFusion:
    torch.manual_seed(0)
    return MultimodalFusion(SleepNetConfig.tiny().fusion).eval()


ALL_SUBSETS = [subset for r in range(M + 1) for subset in itertools.combinations(range(M), r)]


@pytest.mark.parametrize("per_frame", [False, True])
def test_frame_encoder_returns_cls_and_frame_tokens(per_frame: bool) -> None:
    cfg = FrameEncoderConfig(per_frame=per_frame, d_model=32, n_heads=4, n_layers=1)
    enc = FrameEncoder(cfg).eval()
    x = torch.randn(3, S)
    with torch.no_grad():
        feats = enc.frame_features(x)
        tokens = enc(x)
    assert cfg.n_frames == 14  # 4-s frames every 2 s in 30 s
    assert feats.shape == (3, cfg.n_frames, cfg.n_features)
    assert tokens.shape == (3, 1 + cfg.n_frames, 32)
    assert torch.isfinite(tokens).all()


def test_frame_encoder_frame_count_follows_seconds() -> None:
    cfg = FrameEncoderConfig(frame_s=4.0, hop_s=1.0, stem_stride=5, stem_kernel=11)
    assert (cfg.frame_len, cfg.hop_len, cfg.n_frames) == (400, 100, 27)


def test_frame_encoder_hidden_frames_do_not_reach_visible_tokens() -> None:
    enc = FrameEncoder(FrameEncoderConfig(d_model=16, n_heads=2, n_layers=2)).eval()
    feats = torch.randn(2, enc.cfg.n_frames, enc.cfg.n_features)
    hidden = torch.zeros(2, enc.cfg.n_frames, dtype=torch.bool)
    hidden[:, ::2] = True
    changed = feats.clone()
    changed[hidden] = 1e3 * torch.randn(int(hidden.sum()), enc.cfg.n_features)
    with torch.no_grad():
        a = enc.encode_features(feats, hidden)
        b = enc.encode_features(changed, hidden)
        unmasked = enc.encode_features(changed)
    visible = torch.cat([torch.ones(2, 1, dtype=torch.bool), ~hidden], dim=1)
    torch.testing.assert_close(a[visible], b[visible], rtol=0, atol=1e-6)
    assert not torch.allclose(unmasked[:, 0], b[:, 0])


def test_frame_encoder_rejects_wrong_epoch_length() -> None:
    enc = FrameEncoder(FrameEncoderConfig())
    with pytest.raises(ValueError, match="3000"):
        enc(torch.randn(2, 2999))


def test_frame_encoder_config_rejects_frames_off_the_cnn_stride() -> None:
    with pytest.raises(ValueError, match="stride"):
        FrameEncoderConfig(frame_s=4.0, hop_s=1.5)


def test_dual_branch_exposes_both_views_and_fused_embedding() -> None:
    cfg = DualBranchConfig(d_model=32, n_layers=1)
    enc = DualBranchEncoder(cfg).eval()
    with torch.no_grad():
        out = enc(torch.randn(4, S))
    assert cfg.n_stft_frames == 29 and cfg.n_freqs == 101
    assert out.embedding.shape == out.raw_embedding.shape == out.spec_embedding.shape == (4, 32)
    assert out.spec_tokens.shape == (4, 29, 32)
    assert not torch.allclose(out.raw_embedding, out.spec_embedding)


def test_dual_branch_spectrogram_peaks_at_the_signal_frequency() -> None:
    enc = DualBranchEncoder(DualBranchConfig())
    t = torch.arange(S) / 100.0
    spec = enc.spectrogram(torch.sin(2 * torch.pi * 12.0 * t)[None])  # (1, 29, 101)
    assert int(spec[0].mean(dim=0).argmax()) == 24  # 12 Hz at 0.5 Hz per bin


@pytest.mark.parametrize("subset", ALL_SUBSETS, ids=lambda s: "+".join(str(i) for i in s) or "none")
def test_fusion_shapes_and_masked_modalities_are_ignored(subset: tuple[int, ...]) -> None:
    fusion = _tiny_fusion()
    cfg = fusion.cfg
    b = 2
    mask = torch.zeros(b, M, dtype=torch.bool)
    mask[:, list(subset)] = True
    x = torch.randn(b, M, S)
    garbage = x.clone()
    garbage[~mask] = float("nan")
    with torch.no_grad():
        out = fusion(x, mask)
        out_garbage = fusion(garbage, mask)
    d = cfg.d_model
    assert out.embedding.shape == (b, d)
    assert out.modality_pooled.shape == (b, M, d)
    assert out.modality_tokens.shape == (b, M, cfg.n_tokens, d)
    assert out.encoder_tokens.shape == (b, M, cfg.n_tokens, cfg.frame.d_model)
    assert torch.isfinite(out_garbage.embedding).all()
    assert torch.equal(out.embedding, out_garbage.embedding)
    present = mask[:, :, None, None].expand_as(out.modality_tokens)
    assert torch.equal(out.modality_tokens[present], out_garbage.modality_tokens[present])


def test_fusion_bed_with_only_eeg_matches_it_alone_in_a_mixed_batch() -> None:
    fusion = _tiny_fusion()
    x = torch.randn(2, M, S)
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    with torch.no_grad():
        mixed = fusion(x, mask).embedding
        alone = fusion(x[:1], mask[:1]).embedding
        full_alone = fusion(x[1:], mask[1:]).embedding
    torch.testing.assert_close(mixed[:1], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1:], full_alone, rtol=0, atol=1e-6)
    assert not torch.allclose(mixed[0], mixed[1])


def test_fusion_each_modality_tokens_come_from_that_modality() -> None:
    fusion = _tiny_fusion()
    x = torch.randn(1, M, S)
    mask = torch.ones(1, M, dtype=torch.bool)
    with torch.no_grad():
        base = fusion(x, mask)
        x2 = x.clone()
        x2[:, 2] = torch.randn(S)  # change EMG only
        moved = fusion(x2, mask)
    enc_delta = (base.encoder_tokens - moved.encoder_tokens).abs().amax(dim=(2, 3))[0]
    assert enc_delta[2] > 0
    assert torch.equal(enc_delta[[0, 1, 3]], torch.zeros(3))


def test_fusion_modality_tokens_are_sliced_per_modality() -> None:
    """With no fusion layers, modality j's output tokens are exactly its own projected tokens."""
    import dataclasses

    cfg = dataclasses.replace(SleepNetConfig.tiny().fusion, n_layers=0)
    fusion = MultimodalFusion(cfg).eval()
    x = torch.randn(2, M, S)
    mask = torch.ones(2, M, dtype=torch.bool)
    with torch.no_grad():
        out = fusion(x, mask)
        for j, name in enumerate(cfg.modalities):
            own = fusion.encoders[name](x[:, j])  # (B, L, Df)
            tok = fusion.token_mlps[name](own) + fusion.modality_tokens[j] + fusion.positions
            expected = fusion.transformer.norm(tok)
            torch.testing.assert_close(out.encoder_tokens[:, j], own, rtol=0, atol=1e-6)
            torch.testing.assert_close(out.modality_tokens[:, j], expected, rtol=0, atol=1e-6)


def test_fusion_token_mask_hides_tokens_from_the_shared_transformer() -> None:
    fusion = _tiny_fusion()
    cfg = fusion.cfg
    x = torch.randn(1, M, S)
    mask = torch.ones(1, M, dtype=torch.bool)
    token_mask = torch.zeros(1, M, cfg.n_tokens, dtype=torch.bool)
    token_mask[:, 1:] = True  # hide EOG, EMG, ECG entirely
    with torch.no_grad():
        hidden = fusion(x, mask, token_mask).embedding
        eeg_only = fusion(x, torch.tensor([[True, False, False, False]])).embedding
    torch.testing.assert_close(hidden, eeg_only, rtol=0, atol=1e-6)


def test_fusion_rejects_wrong_mask_shape() -> None:
    fusion = _tiny_fusion()
    with pytest.raises(ValueError, match="mask"):
        fusion(torch.randn(2, M, S), torch.ones(2, 3, dtype=torch.bool))


def test_fusion_config_round_trips_through_dict() -> None:
    cfg = FusionConfig(d_model=32)
    import dataclasses

    again = FusionConfig(**{**dataclasses.asdict(cfg), "frame": dataclasses.asdict(cfg.frame)})
    assert again == cfg


def test_heads_missing_aux_uses_learned_value_not_input() -> None:
    heads = SleepHeads(HeadsConfig(n_aux=3), d_in=8).eval()
    with torch.no_grad():
        heads.aux_missing.copy_(torch.tensor([0.5, -1.0, 2.0]))
    h = torch.randn(4, 8)
    aux = torch.randn(4, 3)
    aux_mask = torch.tensor([True, False, True]).expand(4, 3)
    poisoned = aux.clone()
    poisoned[:, 1] = float("nan")
    with torch.no_grad():
        a = heads(h, aux, aux_mask)
        b = heads(h, poisoned, aux_mask)
        zero_filled = heads(h, torch.where(aux_mask, aux, 0.0), torch.ones(4, 3, dtype=torch.bool))
        none = heads(h)
    assert torch.equal(a.stage_logits, b.stage_logits)
    assert not torch.allclose(a.stage_logits, zero_filled.stage_logits)
    assert none.stage_logits.shape == (4, 5)
    assert a.apnea_logit.shape == a.hypopnea_logit.shape == (4,)


def test_heads_without_aux_reject_aux_input() -> None:
    heads = SleepHeads(HeadsConfig(), d_in=8)
    with pytest.raises(ValueError, match="n_aux=0"):
        heads(torch.randn(2, 8), torch.randn(2, 1))

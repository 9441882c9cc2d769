"""Pretraining of the image encoder: its checkpoint loads into AIM as a CLIP backbone does, frozen Stage 1 on it trains only
the adapters, temporal embedding, final norm and head, and its frames are drawn apart from the benchmark's clips."""
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tfcovr.core import rng
from tfcovr.data.render import render_video, sample_frame
from tfcovr.data.synth import ACTIONS, plan_synth, tiny_config
from tfcovr.models.aim import AIMConfig, create_aim, load_backbone
from tfcovr.toys import toy_clips
from tfcovr.train.pretrain import FrameEncoder, frame_targets, load_frame_encoder, render_frames, save_backbone
from tfcovr.train.stage1 import Stage1Config, train_stage1

NEW = ("t_adapter", "s_adapter", "mlp_adapter")


def _trained_only(name: str) -> bool:
    "The parameters the published recipe trains on a frozen backbone."
    return any(f".{a}." in name for a in NEW) or name == "temporal_embedding" or name.split(".")[0] in ("norm", "head")


def test_checkpoint_round_trips_into_create_aim(tmp_path):
    torch.manual_seed(0)
    net = FrameEncoder("aim-tiny")
    path = save_backbone(net, tmp_path / "backbone.safetensors", {"seed": 0})
    model = create_aim("aim-tiny", num_frames=8, num_classes=42)
    missing = load_backbone(model, path)
    assert missing and all(any(a in k for a in NEW) or k in ("temporal_embedding", "head.weight", "head.bias") for k in missing)
    own = model.state_dict()
    for k, v in net.backbone.state_dict().items(): assert torch.equal(own[k], v), k
    m = create_aim("aim-tiny", num_frames=8, num_classes=42, checkpoint_path=path)   # the Stage-1 call
    assert m.freeze_backbone and sorted(n for n, p in m.named_parameters() if p.requires_grad and not any(a in n for a in NEW)) == \
        ["head.bias", "head.weight", "norm.bias", "norm.weight", "temporal_embedding"]
    x = torch.randn(3, 3, 64, 64)
    assert torch.allclose(load_frame_encoder(path)(x), net.eval()(x), atol=1e-6)


def test_frozen_stage1_changes_only_adapters_temporal_embedding_ln_post_head(tmp_path):
    torch.manual_seed(0)
    ckpt = save_backbone(FrameEncoder("aim-tiny"), tmp_path / "backbone.safetensors")
    labels = toy_clips(tmp_path / "v", classes=("down", "up", "left"), per_split={"train": 4, "val": 2})
    cfg = Stage1Config(AIMConfig("aim-tiny", num_frames=4, checkpoint_path=ckpt, freeze_backbone=True), epochs=2, batch_size=4,
                       lr=1e-2, warmup_epochs=0.0, hflip=False, crop_scale=(1.0, 1.0), device="cpu", amp="none")
    train_stage1(cfg, labels, tmp_path / "v", tmp_path / "run", seed=0, progress=False, log_every=0)
    before = create_aim("aim-tiny", num_frames=4, num_classes=3, checkpoint_path=ckpt).state_dict()
    after = load_file(tmp_path / "run" / "last" / "model.safetensors")
    assert set(before) == set(after)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(_trained_only(k) for k in changed), sorted(k for k in changed if not _trained_only(k))
    assert {"temporal_embedding", "head.weight", "norm.weight"} <= changed
    assert any(".mlp_adapter.fc2." in k for k in changed)            # a zero-initialised adapter has started to train


def test_pretraining_frames_are_not_benchmark_clips_and_carry_targets():
    cfg = tiny_config()
    plan = plan_synth(cfg, seed=0)
    bench = np.concatenate([render_video(ACTIONS[c.label].motion, c.scene, c.look, cfg.num_frames, cfg.frame_size) for c in plan])
    fs = render_frames(200, cfg.frame_size, seed=0)
    flat = bench.reshape(len(bench), -1)
    for f in fs.frames: assert not (flat == f.reshape(-1)).all(1).any()          # no pretraining frame is a benchmark frame
    looks = {c.look.noise_seed for c in plan}
    drawn = [sample_frame(rng(0, "pretrain", "train", k), cfg.frame_size) for k in range(50)]
    assert not looks & {t["look"].noise_seed for _, t in drawn}                 # nor is any of their looks a benchmark clip's
    f, t = drawn[7]
    assert np.array_equal(fs.frames[7], f)                                       # frame k comes from rng(seed, "pretrain", "train", k)
    expected = frame_targets([{k: v for k, v in t.items() if k not in ("motion", "look")}], cfg.frame_size)
    for k, v in expected.items(): assert np.allclose(fs.targets[k][7], v[0]), k
    assert len(set(fs.targets["scene"].tolist())) == 6 and fs.targets["joints"].std(0).min() > 0

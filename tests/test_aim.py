"""The AIM video encoder: init equals the plain ViT per frame, trainable set, frame order, checkpoint formats, counts."""
import dataclasses
import re

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from tfcovr.models import aim
from tfcovr.models.aim import (AIM, AIMConfig, AIMVariant, aim_cfg, create_aim, list_aims, load_backbone, preprocess,
                        read_state_dict, register_aim)
from tfcovr.models.io import ModelFileError
from tfcovr.core import ParamsError, from_dict

NEW = re.compile(r"(^|\.)(t_adapter|s_adapter|mlp_adapter)\.|^temporal_embedding$|^head\.")


@pytest.fixture
def frames():
    return torch.randn(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # [B, T, 3, H, W]


def plain_vit(num_classes=5, seed=1, **over):
    "A timm ViT with the aim-tiny backbone."
    torch.manual_seed(seed)
    return VisionTransformer(num_classes=num_classes, **{**aim_cfg("aim-tiny").vit_kwargs(), **over}).eval()


def per_frame(vit, x):
    "The plain ViT's per-frame CLS features averaged over time: [B, D]."
    return vit.forward_head(vit.forward_features(x.flatten(0, 1)), pre_logits=True).unflatten(0, x.shape[:2]).mean(1)


def to_openai_clip(sd):
    "A timm ViT state dict renamed to OpenAI CLIP's `visual.*` layout, plus a text-tower key."
    out = {"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(10, 8)}
    for k, v in sd.items():
        if k == "cls_token": out["visual.class_embedding"] = v[0, 0]; continue
        if k == "pos_embed": out["visual.positional_embedding"] = v[0]; continue
        if k == "head.weight": out["visual.proj"] = v.t().contiguous(); continue
        if k == "head.bias": continue
        k = k.replace("patch_embed.proj", "conv1").replace("norm_pre", "ln_pre")
        k = re.sub(r"^norm\.", "ln_post.", k)
        k = re.sub(r"^blocks\.(\d+)\.norm(\d)", r"transformer.resblocks.\1.ln_\2", k)
        k = re.sub(r"^blocks\.", "transformer.resblocks.", k)
        k = k.replace("attn.qkv.", "attn.in_proj_").replace("attn.proj", "attn.out_proj")
        k = k.replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj")
        out["visual." + k] = v
    return out


def test_registry():
    assert {"aim-b16", "aim-b16-1f", "aim-tiny", "aim-tiny-1f", "aim-tiny-clip"} <= set(list_aims())
    clip = aim_cfg("aim-tiny-clip")   # aim-b16's layout, tiny: the published-checkpoint tests use it
    assert (clip.pre_norm, clip.act_layer, clip.num_frames, clip.img_size) == (True, "quick_gelu", 3, 32)
    with pytest.raises(ValueError, match="known: .*aim-b16"): create_aim("aim-b8")
    with pytest.raises(ValueError, match="already registered"): register_aim(aim_cfg("aim-tiny"))
    b16 = aim_cfg("aim-b16")
    assert (b16.num_frames, b16.temporal, b16.input_size) == (12, True, (3, 224, 224))
    assert (aim_cfg("aim-b16-1f").num_frames, aim_cfg("aim-b16-1f").temporal) == (1, False)
    assert b16.mean == timm.data.OPENAI_CLIP_MEAN and b16.std == timm.data.OPENAI_CLIP_STD
    assert create_aim("aim-tiny").pretrained_cfg["mean"] == b16.mean


def test_shapes(frames):
    m = create_aim("aim-tiny", num_classes=7).eval()
    with torch.no_grad():
        assert m(frames).shape == (2, 7)
        assert m.forward_features(frames).shape == (2, 64)
        assert torch.allclose(m.encode(frames).norm(dim=-1), torch.ones(2))
        assert not torch.allclose(m.forward_features(frames).norm(dim=-1), torch.ones(2))  # unnormalised
    with pytest.raises(ValueError, match="for 8 frames, got 3"): m(frames[:, :3])
    with pytest.raises(ValueError, match=r"\[B, T, 3, 64, 64\]"): m(frames[0])
    assert create_aim("aim-tiny-1f", num_classes=7)(frames[:, :3]).shape == (2, 7)


@pytest.mark.parametrize("name", ["aim-tiny", "aim-tiny-1f"])
def test_init_equals_plain_vit_per_frame(frames, name):
    m = create_aim(name, num_frames=8, num_classes=5).eval()
    vit = plain_vit()
    vit.load_state_dict({k: v for k, v in m.state_dict().items() if k in vit.state_dict()})
    with torch.no_grad():
        assert torch.allclose(m.forward_features(frames), per_frame(vit, frames), atol=1e-6, rtol=0)
        assert torch.allclose(m(frames), vit.head(per_frame(vit, frames)), atol=1e-6, rtol=0)
    fc2 = [p for n, p in m.named_parameters() if "adapter.fc2" in n]
    assert len(fc2) == (12 if name == "aim-tiny" else 8) and all((p == 0).all() for p in fc2)
    assert all((p != 0).any() for n, p in m.named_parameters() if "adapter.fc1.weight" in n)


def test_frozen_backbone_trains_only_adapters(frames):
    m = create_aim("aim-tiny", num_classes=5, freeze_backbone=True)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    F.cross_entropy(m(frames), torch.tensor([1, 3])).backward()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in m.named_parameters() if NEW.search(n) or n.startswith("norm.")}
    assert {n for n, p in m.named_parameters() if p.grad is not None} == trainable
    opt.step()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("t_adapter.fc2" in n for n in changed)
    assert m.set_trainable(False).param_counts()["frozen"] == 0


def perturb(model, temporal_embedding=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if NEW.search(n) and (temporal_embedding or n != "temporal_embedding"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif not NEW.search(n) and p.ndim > 1: p.mul_(10)
    return model.eval()


def test_frame_order(frames):
    perm = torch.tensor([7, 0, 5, 1, 2, 6, 3, 4])
    with torch.no_grad():
        m = perturb(create_aim("aim-tiny"))
        assert (m(frames[:, perm]) - m(frames)).abs().max() > 0.1
        m = perturb(create_aim("aim-tiny"), temporal_embedding=False)   # attention across time alone is order-blind
        assert torch.allclose(m(frames[:, perm]), m(frames), atol=1e-5)
        m = perturb(create_aim("aim-tiny-1f"))
        assert torch.allclose(m(frames[:, perm]), m(frames), atol=1e-5)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "openai", "wrapped"])
def test_backbone_checkpoint_formats(tmp_path, frames, fmt):
    vit = plain_vit(num_classes=10)
    sd = vit.state_dict()
    path = tmp_path / f"ckpt.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors": save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "openai": torch.save(to_openai_clip(sd), path)
    elif fmt == "wrapped": torch.save({"state_dict": sd}, path)
    else: torch.save(sd, path)
    m = create_aim("aim-tiny", num_classes=5, checkpoint_path=path).eval()
    assert m.freeze_backbone
    with torch.no_grad(): assert torch.allclose(m.forward_features(frames), per_frame(vit, frames), atol=1e-6, rtol=0)
    missing = load_backbone(create_aim("aim-tiny", num_classes=5), path)
    assert missing and all(NEW.search(k) for k in missing)
    assert {"temporal_embedding", "head.weight", "blocks.1.t_adapter.fc2.bias"} <= set(missing)


def test_bad_checkpoints(tmp_path):
    sd = plain_vit().state_dict()
    cases = {
        "shape": (plain_vit(embed_dim=32).state_dict(), "shape mismatch, checkpoint vs model"),
        "deeper": (plain_vit(depth=3).state_dict(), "unexpected keys (12): blocks.2."),
        "lacking": ({k: v for k, v in sd.items() if k != "blocks.0.mlp.fc1.weight"}, "backbone keys missing (1): blocks.0.mlp.fc1.weight"),
    }
    for name, (bad, msg) in cases.items():
        torch.save(bad, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=re.escape(msg)) as e:
            create_aim("aim-tiny", checkpoint_path=tmp_path / f"{name}.pth")
        assert f"{name}.pth" in str(e.value)
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.bin: not readable as a state dict"): read_state_dict(tmp_path / "junk.bin")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"): read_state_dict(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="no such file"): create_aim("aim-tiny", checkpoint_path=tmp_path / "x.pth")


@pytest.mark.parametrize("cut", ["empty", "half", "tail"])
def test_truncated_checkpoints_are_one_line_naming_the_file(tmp_path, cut):
    "A .safetensors or .pth backbone cut short (or empty) raises one ModelFileError line that names the file."
    sd = {k: v.contiguous() for k, v in plain_vit().state_dict().items()}
    save_file(sd, str(tmp_path / "full.safetensors")); torch.save(sd, tmp_path / "full.pth")
    for suffix in (".safetensors", ".pth"):
        data = (tmp_path / f"full{suffix}").read_bytes()
        bad = tmp_path / f"{cut}{suffix}"
        bad.write_bytes({"empty": b"", "half": data[:len(data) // 2], "tail": data[:-16]}[cut])
        with pytest.raises(ModelFileError) as e: create_aim("aim-tiny", checkpoint_path=bad)
        msg = str(e.value)
        assert str(bad) in msg and "\n" not in msg, msg
        assert ("empty file" if cut == "empty" and suffix == ".safetensors" else "truncated" if suffix == ".safetensors"
                else "not readable as a state dict") in msg, msg


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_backbone_weights_are_refused(tmp_path, suffix):
    sd = {k: v.clone().contiguous() for k, v in plain_vit().state_dict().items()}
    sd["blocks.0.mlp.fc2.bias"][3] = float("inf")
    path = tmp_path / f"diverged{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(ModelFileError, match=re.escape(f"{path}: tensor 'blocks.0.mlp.fc2.bias' holds 1 NaN or infinite value")):
        create_aim("aim-tiny", checkpoint_path=path)


def test_clip_length_is_bounded():
    with pytest.raises(ValueError, match=r"num_frames must be in 1\.\.64, got 65"): create_aim("aim-tiny", num_frames=65)
    with pytest.raises(ValueError, match=r"num_frames must be in 1\.\.64"): AIMConfig(num_frames=10**9)


def test_pretrained_from_hf_cache(tmp_path, monkeypatch, frames):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download timm/vit_base_patch16_clip_224.openai"):
        create_aim("aim-b16", pretrained=True, device="meta")
    v = dataclasses.replace(aim_cfg("aim-tiny"), name="aim-tiny-cached", hf_hub_id="test-org/aim-tiny")
    monkeypatch.setitem(aim._AIMS, v.name, v)
    snap = tmp_path / "models--test-org--aim-tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (tmp_path / "models--test-org--aim-tiny" / "refs").mkdir()
    (tmp_path / "models--test-org--aim-tiny" / "refs" / "main").write_text("abc123")
    vit = plain_vit()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(snap / "model.safetensors"))
    m = create_aim("aim-tiny-cached", pretrained=True).eval()
    with torch.no_grad(): assert torch.allclose(m.forward_features(frames), per_frame(vit, frames), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="has no pretrained weights"): create_aim("aim-tiny", pretrained=True)


def test_aim_b16_parameter_counts():
    m = create_aim("aim-b16", num_classes=306, freeze_backbone=True, device="meta")
    n = m.param_counts()
    assert abs(n["frozen"] - 86e6) < 0.5e6 and abs(n["trainable"] - 11e6) < 0.5e6, n
    assert n == {"trainable": 10_897_458, "frozen": 85_797_888}
    ref = timm.create_model("vit_base_patch16_clip_224", num_classes=306, device="meta").state_dict()
    own = {k: v.shape for k, v in m.state_dict().items() if not NEW.search(k) or k.startswith("head.")}
    assert own == {k: v.shape for k, v in ref.items()}
    assert type(m.blocks[0].mlp.act).__name__ == "QuickGELU"


def test_training_modes(frames):
    m = create_aim("aim-tiny", num_classes=5, drop_path_rate=0.5, drop_rate=0.5)
    perturb(m)
    with torch.no_grad():
        assert torch.equal(m.eval()(frames), m(frames))                # eval: deterministic
        assert not torch.equal(m.train()(frames), m.train()(frames))   # stochastic depth + dropout in training
        m.eval().set_grad_checkpointing(True)
        a = m(frames)
        m.set_grad_checkpointing(False)
        assert torch.allclose(a, m(frames), atol=1e-6)
    assert "temporal_embedding" in m.no_weight_decay()


def test_preprocess():
    u8 = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 20, 3), dtype=np.uint8)
    x = preprocess(u8, "aim-b16")
    assert x.shape == (2, 4, 3, 16, 20) and x.dtype == torch.float32
    mean, std = np.array(aim_cfg("aim-b16").mean), np.array(aim_cfg("aim-b16").std)
    ref = ((u8 / 255.0 - mean) / std).transpose(0, 1, 4, 2, 3)
    assert np.allclose(x.numpy(), ref, atol=1e-5)
    assert torch.equal(preprocess(torch.from_numpy(u8[0]), aim_cfg("aim-b16")), x[0])
    with pytest.raises(TypeError, match="uint8"): preprocess(u8.astype(np.float32), "aim-b16")


def test_config(frames):
    good = dict(name="aim-tiny", num_frames=8, pretrained=False, checkpoint_path=None, freeze_backbone=False,
                drop_path_rate=0.1, drop_rate=0.5)
    cfg = from_dict(AIMConfig, good, "aim")
    m = cfg.build(num_classes=4)
    assert m(frames).shape == (2, 4) and not m.freeze_backbone
    for bad, msg in [({"name": "aim-x"}, "unknown AIM variant"), ({"freeze_backbone": True}, "frozen random backbone"),
                     ({"num_frames": 0}, r"num_frames must be in 1\.\.64, got 0"), ({"drop_rate": 1.0}, "drop_rate must be in"),
                     ({"num_frames": 1_000_000_000}, r"aim: num_frames must be in 1\.\.64, got 1000000000")]:
        with pytest.raises(ParamsError, match=msg): from_dict(AIMConfig, {**good, **bad}, "aim")


def test_config_freeze_follows_the_weights(tmp_path, frames):
    path = tmp_path / "vit.pth"
    torch.save(plain_vit().state_dict(), path)
    base = dict(name="aim-tiny", num_frames=8, pretrained=False, checkpoint_path=None, freeze_backbone=None,
                drop_path_rate=0.0, drop_rate=0.0)
    cases = [(None, None, False), (None, path, True), (False, path, False), (True, path, True), (False, None, False)]
    for freeze, ckpt, frozen in cases:
        cfg = from_dict(AIMConfig, {**base, "freeze_backbone": freeze, "checkpoint_path": ckpt and str(ckpt)}, "aim")
        m = cfg.build(num_classes=3)
        assert cfg.frozen == m.freeze_backbone == frozen, (freeze, ckpt)
        assert (m.param_counts()["frozen"] > 0) == frozen
    with pytest.raises(ParamsError, match="frozen random backbone"): from_dict(AIMConfig, {**base, "freeze_backbone": True}, "aim")
    with pytest.raises(ParamsError, match="expected bool or None"): from_dict(AIMConfig, {**base, "freeze_backbone": "yes"}, "aim")


def test_temporal_branch_matches_explicit_loop():
    torch.manual_seed(0)
    m = perturb(create_aim("aim-tiny", num_frames=3))
    blk, (B, T, N, D) = m.blocks[0], (2, 3, 5, 64)
    x = torch.randn(B * T, N, D)                                       # [B*T, N, D], clip-major
    with torch.no_grad():
        out = blk._temporal(x)
        for b in range(B):
            for n in range(N):
                seq = x[b * T:(b + 1) * T, n][None]                   # token n of clip b over time: [1, T, D]
                ref = blk.t_adapter(blk.attn(blk.norm1(seq)))[0]
                assert torch.allclose(out[b * T:(b + 1) * T, n], ref, atol=1e-4)   # values up to ~30: batched vs single kernels differ by ~1e-5


def test_clips_do_not_interact(frames):
    m = perturb(create_aim("aim-tiny", num_classes=5))
    with torch.no_grad():
        assert torch.allclose(m(frames)[:1], m(frames[:1]), atol=1e-5)
        assert torch.allclose(m(frames)[1:], m(frames[1:]), atol=1e-5)


@pytest.mark.parametrize("name", ["aim-small", "aim-small-1f"])
def test_aim_small_shapes(frames, name):
    v = aim_cfg(name)
    assert (v.img_size, v.patch_size, v.embed_dim, v.num_heads) == (64, 8, 96, 4)
    assert (v.num_frames, v.temporal) == ((8, True) if name == "aim-small" else (1, False))
    m = create_aim(name, num_frames=8, num_classes=34).eval()
    assert m.patch_embed.num_patches == 64 and m.param_counts()["frozen"] == 0
    with torch.no_grad():
        assert m(frames).shape == (2, 34)
        assert m.forward_features(frames).shape == (2, 96)
    assert (m.temporal_embedding is None) == (name == "aim-small-1f")

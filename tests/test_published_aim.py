"""Published TF-CoVR Stage-1 checkpoints (OpenAI CLIP layout + AIM adapters, saved by Lightning) load into our AIM,
and the loaded model computes what the published module computes."""
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from tfcovr.models.aim import AIMConfig, create_aim, load_backbone, published_name
from tfcovr.models.io import ModelFileError

T, D, DEPTH, HEADS, SIZE, PATCH, CLASSES = 3, 64, 2, 4, 32, 16, 5   # the `aim-tiny-clip` variant


# ---- a separate implementation of the published `ViT_CLIP`, written from its description ----------------------------
class QuickGELU(nn.Module):
    def forward(self, x): return x * torch.sigmoid(1.702 * x)


class RefAdapter(nn.Module):
    "D_fc1 (D -> D/4), GELU, D_fc2 (-> D); with `skip`, x + that."
    def __init__(self, d, skip):
        super().__init__()
        self.skip = skip
        self.D_fc1, self.act, self.D_fc2 = nn.Linear(d, d // 4), nn.GELU(), nn.Linear(d // 4, d)

    def forward(self, x):
        y = self.D_fc2(self.act(self.D_fc1(x)))
        return x + y if self.skip else y


class RefBlock(nn.Module):
    "A CLIP residual block with AIM's adapters; tokens sequence-first [1+HW, B*T, D]."
    def __init__(self, d, heads, frames, scale=0.5):
        super().__init__()
        self.frames, self.scale = frames, scale
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(d, 4 * d), gelu=QuickGELU(), c_proj=nn.Linear(4 * d, d)))
        self.T_Adapter, self.S_Adapter, self.MLP_Adapter = RefAdapter(d, False), RefAdapter(d, True), RefAdapter(d, False)

    def attention(self, x): return self.attn(x, x, x, need_weights=False)[0]

    def forward(self, x):
        n, bt, d = x.shape
        t = self.frames
        xt = x.reshape(n, bt // t, t, d).permute(2, 1, 0, 3).reshape(t, -1, d)   # 'n (b t) d -> t (b n) d'
        xt = self.T_Adapter(self.attention(self.ln_1(xt)))
        xt = xt.reshape(t, bt // t, n, d).permute(2, 1, 0, 3).reshape(n, bt, d)  # 't (b n) d -> n (b t) d'
        x = x + xt
        x = x + self.S_Adapter(self.attention(self.ln_1(x)))
        xn = self.ln_2(x)
        return x + self.mlp(xn) + self.scale * self.MLP_Adapter(xn)


class RefViTCLIP(nn.Module):
    "OpenAI CLIP's visual layout with a temporal embedding, AIM blocks and a classifier `fc_cls`; frames [B, T, 3, H, W]."
    def __init__(self, size=SIZE, patch=PATCH, width=D, layers=DEPTH, heads=HEADS, frames=T, classes=CLASSES):
        super().__init__()
        self.frames = frames
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.temporal_embedding = nn.Parameter(torch.zeros(1, frames, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[RefBlock(width, heads, frames) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.fc_cls = nn.Linear(width, classes)

    def features(self, x):  # [B, T, 3, H, W] -> [B, D]
        b, t = x.shape[:2]
        x = self.conv1(x.reshape(b * t, *x.shape[2:]))                          # [B*T, D, h, w]
        x = x.reshape(b * t, x.shape[1], -1).permute(0, 2, 1)                   # [B*T, HW, D]
        cls = self.class_embedding + torch.zeros(b * t, 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding              # [B*T, 1+HW, D]
        n, d = x.shape[1:]
        x = x.reshape(b, t, n, d).permute(0, 2, 1, 3).reshape(b * n, t, d)     # '(b t) n d -> (b n) t d'
        x = x + self.temporal_embedding
        x = x.reshape(b, n, t, d).permute(0, 2, 1, 3).reshape(b * t, n, d)     # '(b n) t d -> (b t) n d'
        x = self.ln_pre(x)
        x = self.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_post(x)[:, 0]                                               # [B*T, D]
        return x.reshape(b, t, d).mean(1)

    def forward(self, x): return self.fc_cls(self.features(x))


def reference(seed=0):
    "The published module filled with random non-zero weights everywhere (adapters' D_fc2 and temporal embedding too)."
    torch.manual_seed(seed)
    ref = RefViTCLIP()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if re.search(r"ln_\w+\.weight$|ln_\d\.weight$", n) else 0.2 * noise)
    assert all(bool((p != 0).all()) for p in ref.parameters())
    return ref.eval()


def lightning_file(path, sd, **extra):
    "Save `sd` the way Lightning saves a module holding it as `model`."
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 99, "global_step": 4321,
                "pytorch-lightning_version": "2.1.0", "optimizer_states": [], "lr_schedulers": [], **extra}, path)
    return path


@pytest.fixture
def frames():
    return torch.randn(2, T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def ckpt(tmp_path):
    ref = reference()
    return ref, lightning_file(tmp_path / "best_val.ckpt", ref.state_dict())


# ---- the tests ---------------------------------------------------------------------------------------------------------
def test_published_checkpoint_computes_the_published_model(ckpt, frames):
    ref, path = ckpt
    m = create_aim("aim-tiny-clip", num_classes=CLASSES, checkpoint_path=path).eval()
    with torch.no_grad():
        want_feat, want_logits = ref.features(frames), ref(frames)
        assert want_logits.abs().max() > 1                                       # a non-trivial output to match
        assert torch.allclose(m.forward_features(frames), want_feat, atol=1e-5, rtol=1e-5)
        assert torch.allclose(m(frames), want_logits, atol=1e-4, rtol=1e-5)
        assert not torch.allclose(m(frames[:, [2, 0, 1]]), want_logits, atol=1e-2)   # frame order matters (temporal embedding)
    assert m.freeze_backbone                                                      # weights given: the AIM recipe
    trainable = {re.sub(r"^blocks\.\d+\.", "", n).split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"t_adapter", "s_adapter", "mlp_adapter", "temporal_embedding", "norm", "head"}


def test_every_tensor_comes_from_the_file(ckpt):
    ref, path = ckpt
    m = create_aim("aim-tiny-clip", num_classes=CLASSES, checkpoint_path=path)
    pub = ref.state_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v.flatten(), pub[published_name(k)].flatten()), k
    assert sorted(published_name(k) for k in m.state_dict()) == sorted(pub)   # the mapping is one to one
    assert load_backbone(create_aim("aim-tiny-clip", num_classes=CLASSES), path) == []   # nothing left at init


def test_fabric_and_bare_layouts(tmp_path, frames):
    ref = reference(seed=3)
    sd = ref.state_dict()
    torch.save({"model": sd, "iter_num": 7}, tmp_path / "fabric.pth")
    torch.save(sd, tmp_path / "bare.pth")
    with torch.no_grad():
        for name in ("fabric.pth", "bare.pth"):
            m = create_aim("aim-tiny-clip", num_classes=CLASSES, checkpoint_path=tmp_path / name).eval()
            assert torch.allclose(m(frames), ref(frames), atol=1e-4, rtol=1e-5), name


def test_aim_b16_has_the_published_layout():
    with torch.device("meta"): ref = RefViTCLIP(224, 16, 768, 12, 12, 12, 306)
    m = create_aim("aim-b16", num_frames=12, num_classes=306, freeze_backbone=True, device="meta")
    ours = {published_name(k): tuple(v.shape) for k, v in m.state_dict().items()}
    pub = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    squeeze = {"class_embedding": (768,), "positional_embedding": (197, 768)}
    assert {k: squeeze.get(k, s) for k, s in ours.items()} == pub
    n = m.param_counts()
    assert n == {"trainable": 10_897_458, "frozen": 85_797_888}


@pytest.mark.parametrize("fault", ["missing", "unexpected", "classes", "no_head", "frames", "layout", "nan"])
def test_files_that_do_not_fit(tmp_path, fault):
    sd = dict(reference().state_dict())
    kw = dict(name="aim-tiny-clip", num_classes=CLASSES)
    if fault == "missing":
        del sd["transformer.resblocks.1.T_Adapter.D_fc2.weight"]
        msg = "missing keys (1): model.transformer.resblocks.1.T_Adapter.D_fc2.weight"
    elif fault == "unexpected":
        sd["transformer.resblocks.0.T_Adapter_in.D_fc1.weight"] = torch.ones(D // 4, D)   # the published 2-adapter option
        msg = "unexpected keys (1): model.transformer.resblocks.0.T_Adapter_in.D_fc1.weight"
    elif fault == "classes":
        kw["num_classes"] = 306
        msg = "its classifier model.fc_cls has 5 classes, this model 306: build it with num_classes=5"
    elif fault == "no_head":
        kw["num_classes"] = 0
        msg = "build it with num_classes=5"
    elif fault == "frames":
        kw["num_frames"] = 4
        msg = "shape mismatch, file vs model (1): model.temporal_embedding [1, 3, 64] vs [1, 4, 64]"
    elif fault == "layout":
        kw.update(name="aim-tiny", img_size=SIZE, num_heads=HEADS, num_frames=T)   # no ln_pre: not CLIP's layout
        msg = "unexpected keys (2): model.ln_pre.weight, model.ln_pre.bias"
    else:
        sd["ln_post.weight"] = sd["ln_post.weight"].clone()
        sd["ln_post.weight"][0] = float("nan")
        msg = "tensor 'ln_post.weight' holds 1 NaN"
    path = lightning_file(tmp_path / f"{fault}.ckpt", sd)
    name = kw.pop("name")
    with pytest.raises(ModelFileError, match=re.escape(msg)) as e: create_aim(name, checkpoint_path=path, **kw)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_mixed_prefixes_are_refused(tmp_path):
    sd = {f"model.{k}": v for k, v in reference().state_dict().items()}
    sd["fc_cls.weight"] = sd.pop("model.fc_cls.weight")
    torch.save({"state_dict": sd}, tmp_path / "mixed.ckpt")
    with pytest.raises(ModelFileError, match=re.escape("mixes keys with Lightning's 'model.' prefix and keys without (1): fc_cls.weight")):
        create_aim("aim-tiny-clip", num_classes=CLASSES, checkpoint_path=tmp_path / "mixed.ckpt")


def to_openai_visual(ref):
    "The published module's CLIP backbone alone, as OpenAI's CLIP state dict (`visual.*`, a `proj`, a text-tower key)."
    keep = {k: v for k, v in ref.state_dict().items() if not re.search(r"_Adapter\.|^temporal_embedding$|^fc_cls\.", k)}
    return {"visual.proj": torch.randn(D, 32), "logit_scale": torch.tensor(4.6), **{f"visual.{k}": v for k, v in keep.items()}}


@pytest.mark.parametrize("wrap", ["openai", "visual_only"])
def test_plain_clip_backbone_still_loads_backbone_only(tmp_path, frames, wrap):
    ref = reference(seed=5)
    sd = to_openai_visual(ref)
    if wrap == "visual_only": sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    torch.save(sd, tmp_path / "clip.pth")
    m = create_aim("aim-tiny-clip", num_classes=CLASSES, checkpoint_path=tmp_path / "clip.pth").eval()
    left = load_backbone(create_aim("aim-tiny-clip", num_classes=CLASSES), tmp_path / "clip.pth")
    assert set(left) == {k for k in m.state_dict() if "adapter" in k or k in ("temporal_embedding", "head.weight", "head.bias")}
    with torch.no_grad():                                # the reference with its adapters and temporal embedding at AIM's init
        for blk in ref.transformer.resblocks:
            for a in (blk.T_Adapter, blk.S_Adapter, blk.MLP_Adapter): a.D_fc2.weight.zero_(); a.D_fc2.bias.zero_()
        ref.temporal_embedding.zero_()
        assert torch.allclose(m.forward_features(frames), ref.features(frames), atol=1e-5, rtol=1e-5)


CALLS = []


def _record():
    CALLS.append(1)
    return {}


class Payload:
    "An object whose unpickling runs code (`_record`)."
    def __reduce__(self): return (_record, ())


def test_loaded_with_weights_only(tmp_path):
    path = lightning_file(tmp_path / "hparams.ckpt", reference().state_dict(), hyper_parameters=Payload())
    with pytest.raises(ModelFileError, match=re.escape(f"checkpoint {path}: not readable as a state dict")) as e:
        create_aim("aim-tiny-clip", num_classes=CLASSES, checkpoint_path=path)
    assert "save its 'state_dict' entry alone" in str(e.value)
    assert CALLS == []                                   # nothing in the file ran
    torch.save({"state_dict": {"model.fc_cls.weight": [1.0, 2.0]}}, tmp_path / "list.ckpt")
    with pytest.raises(ModelFileError, match="expected a state dict of tensors, but 'model.fc_cls.weight' holds a list"):
        create_aim("aim-tiny-clip", num_classes=CLASSES, checkpoint_path=tmp_path / "list.ckpt")


def test_freeze_backbone_follows_the_weights(ckpt):
    _, path = ckpt
    assert AIMConfig("aim-tiny-clip", num_frames=T, checkpoint_path=path).build(CLASSES).freeze_backbone
    assert not AIMConfig("aim-tiny-clip", num_frames=T, checkpoint_path=path, freeze_backbone=False).build(CLASSES).freeze_backbone
    assert not AIMConfig("aim-tiny-clip", num_frames=T).build(CLASSES).freeze_backbone
    with pytest.raises(ValueError, match="frozen random backbone"): AIMConfig("aim-tiny-clip", num_frames=T, freeze_backbone=True)

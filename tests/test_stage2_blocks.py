"""Stage 2 building blocks together: text encoder -> fusion -> HN-NCE, on tiny CPU models."""
import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from tfcovr.models.fusion import FusionConfig, check_dims, create_fusion
from tfcovr.models.losses import HNNCE, LossConfig, create_loss
from tfcovr.models.text import clean_caption, create_text_encoder, list_text_encoders, register_text_encoder, spell_numbers


def _loop(q, t, tau, alpha, beta, same=None):
    "HN-NCE written element by element (reference)."
    B = q.shape[0]
    s = (q @ t.T / tau).tolist()
    same = same.tolist() if same is not None else [[False] * B for _ in range(B)]

    def one(s, m):
        out = 0.0
        for i in range(B):
            negs = [j for j in range(B) if j != i and not m[i][j]]
            z = sum(math.exp(beta * s[i][k]) for k in negs)
            acc = alpha * math.exp(s[i][i]) + sum(len(negs) * math.exp(beta * s[i][j]) / z * math.exp(s[i][j]) for j in negs)
            out += math.log(acc) - s[i][i]
        return out / B
    T = lambda a: [list(r) for r in zip(*a)]
    return one(s, same) + one(T(s), T(same))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hnnce_matches_loop_with_and_without_mask(seed):
    g = torch.Generator().manual_seed(seed)
    B, D = 7, 5
    q = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, 3, (B,), generator=g)
    same = labels[:, None] == labels[None, :]                  # symmetric label mask, as the trainer builds it
    same_asym = torch.rand(B, B, generator=g) < 0.4            # and an asymmetric one
    for m in (None, same, same_asym):
        got = HNNCE(0.1, 0.9, 0.7)(q, t, m).item()
        assert got == pytest.approx(_loop(q, t, 0.1, 0.9, 0.7, m), rel=1e-10, abs=1e-10)


def test_row_normalisation_not_column():
    "w_ij is normalised over row i; the published code divided by row j's sum, which gives a different value."
    from tfcovr.models.losses import _hn_rows
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    s = q @ t.T / 0.07
    off = ~torch.eye(5, dtype=torch.bool)
    e = torch.where(off, torch.exp(0.5 * s), torch.zeros_like(s))  # e^{beta s_ij}, j != i
    def q2t(w): return (torch.log(torch.exp(s.diagonal()) + (w * torch.exp(s) * off).sum(1)) - s.diagonal()).mean()
    right = q2t(4 * e / e.sum(1, keepdim=True))                # normaliser: sum over row i
    bug = q2t(4 * e / e.sum(1)[None, :])                       # normaliser: sum over row j (published)
    ours = _hn_rows(s, off, 1.0, 0.5).mean()
    torch.testing.assert_close(ours, right)
    assert abs(ours.item() - bug.item()) > 1e-3


def test_infonce_special_case_and_factory():
    g = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    t = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    s = q @ t.T / 0.07
    ref = F.cross_entropy(s, torch.arange(8)) + F.cross_entropy(s.T, torch.arange(8))
    torch.testing.assert_close(create_loss("infonce")(q, t), ref)
    torch.testing.assert_close(create_loss("hnnce", beta=0.0)(q, t, torch.zeros(8, 8, dtype=torch.bool)), ref)
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("nce")


def test_masking_false_negative_lowers_loss():
    g = torch.Generator().manual_seed(5)
    t = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    t[2] = t[4]
    q = F.normalize(t + 0.05 * torch.randn(6, 8, generator=g), dim=-1)
    same = torch.zeros(6, 6, dtype=torch.bool)
    same[2, 4] = same[4, 2] = True
    loss = HNNCE()
    assert loss(q, t, same) < loss(q, t) - 0.5


def test_spell_and_clean():
    assert spell_numbers("2.5 turn, 1.5 twist, 0.5 turn, 3 soms") == \
        "two and a half turn, one and a half twist, half turn, three soms"
    assert clean_caption("Show with 3.5 Soms.Pike") == "show with three and a half soms pike"


def test_registry():
    assert {"blip", "minilm", "bert-tiny", "blip-tiny", "clip"} <= set(list_text_encoders())
    with pytest.raises(ValueError, match="already registered"):
        register_text_encoder("bert-tiny")(lambda **kw: None)
    with pytest.raises(ValueError, match="needs pretrained_path"):
        create_text_encoder("clip", 16)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        create_text_encoder("blip", 16, pretrained_path="/nonexistent/blip")


def test_blip_tiny_loads_from_saved_checkpoint(tmp_path):
    "A BLIP text model saved with save_pretrained comes back through the 'blip' name with identical weights."
    torch.manual_seed(0)
    tiny = create_text_encoder("blip-tiny", 16)
    tiny.backbone.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    enc = create_text_encoder("blip", 16, pretrained_path=tmp_path)
    for k, v in tiny.backbone.state_dict().items():
        torch.testing.assert_close(enc.backbone.state_dict()[k], v)
    assert enc.max_length == 35 and enc(["show with two turns"]).shape == (1, 16)


@pytest.mark.parametrize("text_name,fusion_name", [("bert-tiny", "combiner"), ("blip-tiny", "average"),
                                                   ("bert-tiny", "concat")])
def test_end_to_end_step_lowers_loss(text_name, fusion_name):
    "One small batch: text encoder + fusion + HN-NCE, a few Adam steps lower the loss; shapes and norms hold."
    torch.manual_seed(0)
    D = check_dims(16, 16, 16)
    cfg = FusionConfig(name=fusion_name, hidden_dim=32, dropout=0.0)
    enc = create_text_encoder(text_name, out_dim=D)
    fus = create_fusion(cfg.name, D, D, cfg.hidden_dim, cfg.dropout)
    lcfg = LossConfig()
    loss_fn = create_loss(lcfg.name, temperature=lcfg.temperature, alpha=lcfg.alpha, beta=lcfg.beta)
    texts = ["show with 2 turns", "show with 2.5 turns", "show in pike", "show with half turn"]
    v = F.normalize(torch.randn(4, D), dim=-1)
    tgt = F.normalize(torch.randn(4, D), dim=-1)
    same = torch.eye(4, dtype=torch.bool)
    opt = torch.optim.Adam([*enc.parameters(), *fus.parameters()], lr=1e-2)
    losses = []
    for _ in range(15):
        q = fus(v, enc(texts))
        assert q.shape == (4, D)
        torch.testing.assert_close(q.norm(dim=-1), torch.ones(4))
        loss = loss_fn(q, tgt, same)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_check_dims_message():
    with pytest.raises(ValueError, match="checkpoint 768, config 512, embeddings 256"):
        check_dims(768, 512, 256)


@pytest.mark.parametrize("name", ["blip-tiny", "blip"])
def test_fine_tuned_blip_trains_saves_and_reloads(tmp_path, name):
    """The paper's text side, `text: {name: blip, pretrained_path: <folder>, freeze: false}`, end to end on the tiny BLIP:
    a Stage-2 epoch moves the BLIP weights, the saved model stores them in full, and reloads to the same queries."""
    import json
    from safetensors.torch import load_file
    from tfcovr.models.composed import ComposedModel
    from tfcovr.models.text import TextConfig
    from tfcovr.core import derive_seed
    from tfcovr.toys import synthetic_problem
    from tfcovr.train.stage2 import Stage2Config, train_stage2
    torch.manual_seed(0)
    path = None
    if name == "blip":                                                     # a local BLIP folder, as the paper preset names one
        tiny = create_text_encoder("blip-tiny", 16)
        tiny.backbone.save_pretrained(tmp_path / "blip"); tiny.tokenizer.save_pretrained(tmp_path / "blip")
        path = str(tmp_path / "blip")
    text = TextConfig(name, path, False, 16)
    p = synthetic_problem(1, n_labels=3, per_label=(3, 2))
    cfg = Stage2Config(epochs=1, text=text, fusion=FusionConfig("combiner", 48, 0.1, 24, "raw"), batch_size=8, lr=1e-3,
                       ks=(1, 5, 10), device="cpu")
    torch.manual_seed(derive_seed(0, "stage2", "init"))                       # the model train_stage2 starts from
    start = ComposedModel(p["embeddings"].dim, "fusion", text, cfg.fusion)
    before = {k: v.clone() for k, v in start.text_encoder.backbone.state_dict().items()}
    res = train_stage2(cfg, p["train"], p["val"], p["embeddings"], tmp_path / "run", seed=0, progress=False, log_every=0)
    after = res.model.text_encoder.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)          # the backbone was fine-tuned
    res0 = train_stage2(dataclasses.replace(cfg, lr=1e-9), p["train"], p["val"], p["embeddings"], tmp_path / "still", seed=0,
                        progress=False, log_every=0)
    assert all(torch.allclose(before[k], v, atol=1e-6) for k, v in res0.model.text_encoder.backbone.state_dict().items())  # same start
    folder = tmp_path / "run" / "model"
    assert json.loads((folder / "config.json").read_text())["text_backbone"] is None
    saved = load_file(str(folder / "model.safetensors"))
    assert {k for k in saved if k.startswith("text_encoder.backbone.")} == {f"text_encoder.backbone.{k}" for k in after}
    best = ComposedModel.from_pretrained(folder)
    for k, v in after.items(): torch.testing.assert_close(best.text_encoder.backbone.state_dict()[k], v, rtol=0, atol=0)
    v = torch.from_numpy(p["embeddings"].emb[:4])
    texts = p["val"].modification.tolist()[:4]
    torch.testing.assert_close(best.encode_query(v, texts), res.model.eval().encode_query(v, texts), rtol=0, atol=1e-6)

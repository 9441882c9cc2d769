"""The composed model: every variant saves and loads to the same outputs; sizes and weights that disagree raise."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tfcovr.models.composed import ArrayEmbeddings, ComposedModel, model_device, save_pretrained, weights_dim
from tfcovr.models.io import ModelFileError, load_weights, read_safetensors, read_torch_state, safetensors_header, write_safetensors
from tfcovr.core import write_json
from tfcovr.models.fusion import FusionConfig
from tfcovr.models.text import TextConfig

MINILM = TextConfig(name="minilm", pretrained_path=None, freeze=True, max_length=16)
BERT_TINY = TextConfig(name="bert-tiny", pretrained_path=None, freeze=False, max_length=16)
COMBINER = FusionConfig(name="combiner", hidden_dim=64, dropout=0.1)
TEXTS = ["turn the salto into a twist", "add 2.5 twists", "a pike", "a tuck"]


def combiner_model(seed: int = 0) -> ComposedModel:
    torch.manual_seed(seed)
    return ComposedModel(32, "fusion", MINILM, COMBINER).eval()


@pytest.mark.parametrize("args", [("fusion", MINILM, COMBINER), ("fusion", BERT_TINY, FusionConfig(name="average")),
                                  ("text", BERT_TINY, None), ("video", None, None)])
def test_every_variant_round_trips(tmp_path, args):
    "TF-CoVR-Base, the averaging ablation, text-only (trainable backbone) and video-only: same outputs after load."
    torch.manual_seed(1)
    m = ComposedModel(32, *args).eval()
    v = torch.randn(4, 32)
    q = m.encode_query(v, TEXTS)
    assert q.shape == (4, 32) and torch.allclose(q.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(m.encode_target(v), F.normalize(v, dim=-1))
    assert save_pretrained(m, tmp_path / "m") == tmp_path / "m"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "m", "model.safetensors"]   # nothing temporary left
    m2 = ComposedModel.from_pretrained(tmp_path / "m")
    assert m2.config == m.config and not m2.training
    assert torch.allclose(m2.encode_query(v, TEXTS), q, atol=1e-6)
    assert m2.checkpoint_dim == (None if args[0] == "video" else 32) == weights_dim(tmp_path / "m" / "model.safetensors")
    assert model_device(m2) == torch.device("cpu")


def test_saving_again_replaces_the_folder(tmp_path):
    a, b = combiner_model(0), combiner_model(1)
    a.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "stale.txt").write_text("old")
    b.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "stale.txt").exists()
    v = torch.randn(3, 32)
    assert torch.allclose(ComposedModel.from_pretrained(tmp_path / "m").encode_query(v, TEXTS[:3]), b.encode_query(v, TEXTS[:3]), atol=1e-6)


def test_weights_that_do_not_fit_raise(tmp_path):
    combiner_model().save_pretrained(tmp_path / "model")
    w = tmp_path / "model" / "model.safetensors"
    from safetensors.torch import load_file, save_file
    sd = load_file(str(w)); sd["fusion.out.weight"] = sd["fusion.out.weight"][:, :10].contiguous(); save_file(sd, str(w))
    with pytest.raises(ValueError, match="do not fit"):
        ComposedModel.from_pretrained(tmp_path / "model")


def test_sizes_that_disagree_and_missing_files_raise(tmp_path):
    combiner_model().save_pretrained(tmp_path / "m")
    c = json.loads((tmp_path / "m" / "config.json").read_text()); c["video_dim"] = 48
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"checkpoint 32, config 48, embeddings \?"):
        ComposedModel.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        ComposedModel.from_pretrained(tmp_path / "m")
    m = combiner_model()
    with pytest.raises(ValueError, match=r"\[B, 32\]"):
        m.encode_query(torch.randn(4, 16), TEXTS)
    with pytest.raises(ValueError, match="4 query videos but 3 texts"):
        m.encode_query(torch.randn(4, 32), TEXTS[:3])
    with pytest.raises(TypeError, match="list of strings"):
        m.encode_text("a pike")
    with pytest.raises(ValueError, match="no text encoder"):
        ComposedModel(32, "video").encode_text(TEXTS)


def test_frozen_text_features_are_cached_once():
    m = combiner_model()
    assert m.cache_texts(TEXTS + TEXTS) == 4 and m.cache_texts(TEXTS) == 0
    m.train()
    assert m.training and m.fusion.training and not m.text_encoder.backbone.training   # frozen backbone: no dropout
    m.load_state_dict(combiner_model(1).state_dict())
    assert m.cache_texts(TEXTS) == 4                                                   # new weights: cache emptied
    assert ComposedModel(32, "text", BERT_TINY).cache_texts(TEXTS) == 0                # trainable backbone: never cached


def test_array_embeddings():
    e = ArrayEmbeddings(["a", "b", "c"], np.arange(6).reshape(3, 2), meta={"key": "k"})
    assert e.dim == 2 and e.emb.dtype == np.float32 and e.meta == {"key": "k"}
    assert e.lookup(["c", "a"]).tolist() == [[4.0, 5.0], [0.0, 1.0]]
    with pytest.raises(KeyError, match="2 videos have no embedding"):
        e.lookup(["a", "x", "y"])
    with pytest.raises(ValueError, match="distinct ids"):
        ArrayEmbeddings(["a", "b"], np.zeros((3, 2)))


BROKEN_CONFIGS = [("[32, 64]", "expected a JSON object, got a list"), ('{"video_dim": 32,', "not JSON"), ("", "not JSON (empty file)"),
                  ('{"query": "fusion", "text": null, "fusion": null}', "missing key 'video_dim'"),
                  ('{"video_dim": "32", "query": "fusion"}', "video_dim must be an integer"),
                  ('{"video_dim": 32, "query": "both", "text": null, "fusion": null}', "query must be fusion, text or video")]


@pytest.mark.parametrize("text,msg", BROKEN_CONFIGS)
def test_a_broken_config_is_one_line_naming_it(tmp_path, text, msg):
    combiner_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(text)
    with pytest.raises(ModelFileError) as e: ComposedModel.from_pretrained(tmp_path / "m")
    assert str(e.value).startswith(f"{tmp_path / 'm' / 'config.json'}: ") and msg in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("cut", ["empty", "header", "half", "last byte"])
def test_a_truncated_weight_file_is_one_line_naming_it(tmp_path, cut):
    combiner_model().save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes({"empty": b"", "header": data[:6], "half": data[:len(data) // 2], "last byte": data[:-1]}[cut])
    for load in (lambda: ComposedModel.from_pretrained(tmp_path / "m"), lambda: load_weights(combiner_model(), w), lambda: weights_dim(w)):
        with pytest.raises(ModelFileError) as e: load()
        assert str(e.value).startswith(f"{w}: ") and "\n" not in str(e.value), str(e.value)
        assert ("empty file" if cut == "empty" else "truncated or corrupt") in str(e.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, value):
    m = combiner_model(); m.save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["text_encoder.proj.bias"][5] = value
    from safetensors.torch import save_file
    save_file(sd, str(w))
    with pytest.raises(ModelFileError, match=re.escape(f"{w}: tensor 'text_encoder.proj.bias' holds 1 NaN or infinite value")):
        ComposedModel.from_pretrained(tmp_path / "m")


def test_weights_get_the_mode_of_the_json_beside_them(tmp_path):
    old = os.umask(0o022)
    try:
        save_pretrained(combiner_model(), tmp_path / "m")
        write_safetensors({"x": torch.ones(2)}, tmp_path / "x.safetensors"); write_json(tmp_path / "x.json", {})
    finally: os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777
    assert mode(tmp_path / "m" / "model.safetensors") == mode(tmp_path / "m" / "config.json") == 0o644
    assert mode(tmp_path / "x.safetensors") == mode(tmp_path / "x.json") == 0o644


def test_one_safetensors_path_round_trips_metadata_and_shared_tensors(tmp_path):
    a = torch.arange(6.).reshape(2, 3)
    write_safetensors({"a": a, "view": a[0], "same": a}, tmp_path / "w.safetensors", {"run": "x"})
    sd, meta = read_safetensors(tmp_path / "w.safetensors")
    assert meta["run"] == "x" and torch.equal(sd["a"], a) and torch.equal(sd["view"], a[0]) and torch.equal(sd["same"], a)
    assert safetensors_header(tmp_path / "w.safetensors")[0] == {"a": (2, 3), "view": (3,), "same": (2, 3)}


def test_a_broken_torch_state_is_one_line(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "s.pt")
    assert read_torch_state(tmp_path / "s.pt", ("epoch",)) == {"epoch": 1}
    with pytest.raises(ModelFileError, match="missing key 'step'"): read_torch_state(tmp_path / "s.pt", ("epoch", "step"))
    (tmp_path / "s.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:40])
    with pytest.raises(ModelFileError, match="s.pt: not readable, truncated or corrupt"): read_torch_state(tmp_path / "s.pt")
    torch.save([1], tmp_path / "l.pt")
    with pytest.raises(ModelFileError, match="l.pt: expected a dict, got a list"): read_torch_state(tmp_path / "l.pt")


def blip_folder(path: Path) -> Path:
    "A local BLIP text-model folder (save_pretrained layout) of the tiny random BLIP: what `text.pretrained_path` names."
    torch.manual_seed(7)
    from tfcovr.models.text import create_text_encoder
    tiny = create_text_encoder("blip-tiny", 16)
    tiny.backbone.save_pretrained(path); tiny.tokenizer.save_pretrained(path)
    return path


def test_a_frozen_pretrained_backbone_is_named_and_checked(tmp_path):
    "A frozen `blip` from a local folder is named in config.json, not stored; other weights in that folder are refused by digest."
    from tfcovr.models.aim import weights_sha256
    from tfcovr.models.composed import TEXT_BACKBONE, text_reference
    path = str(blip_folder(tmp_path / "blip"))
    torch.manual_seed(0)
    m = ComposedModel(32, "fusion", TextConfig("blip", path, True, 16), COMBINER).eval()
    ref = {"name": "blip", "pretrained_path": path, "weights_sha256": weights_sha256(m.text_encoder.backbone)}
    assert text_reference(m) == ref
    m.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())[TEXT_BACKBONE] == ref
    assert not [k for k in safetensors_header(tmp_path / "m" / "model.safetensors")[0] if k.startswith("text_encoder.backbone.")]
    v = torch.randn(4, 32)
    assert torch.allclose(ComposedModel.from_pretrained(tmp_path / "m").encode_query(v, TEXTS), m.encode_query(v, TEXTS), atol=1e-6)
    from safetensors.torch import load_file, save_file                      # the folder's weights change after training
    w = tmp_path / "blip" / "model.safetensors"
    sd = load_file(str(w)); sd["embeddings.word_embeddings.weight"][0, 0] += 1.0; save_file(sd, str(w), metadata={"format": "pt"})
    with pytest.raises(ModelFileError) as e: ComposedModel.from_pretrained(tmp_path / "m")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'm' / 'config.json'}: the frozen text encoder is not the one the model was trained with ")
    assert f"weights_sha256 '{ref['weights_sha256']}' when saved" in msg, msg
    assert "name 'blip' when saved" not in msg and "pretrained_path" not in msg, msg          # name and path are the same
    c = json.loads((tmp_path / "m" / "config.json").read_text())           # a text section that trains its backbone names none
    c["text"]["freeze"] = False
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ModelFileError, match="names a frozen text backbone \\('blip'\\) but its text section builds one whose weights are saved"):
        ComposedModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("text", [TextConfig("bert-tiny", None, True, 16), BERT_TINY], ids=["random-frozen", "trainable"])
def test_a_trainable_or_random_backbone_is_saved_in_full(tmp_path, text):
    from tfcovr.models.composed import text_reference
    torch.manual_seed(0)
    m = ComposedModel(32, "fusion", text, COMBINER).eval()
    assert text_reference(m) is None
    m.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["text_backbone"] is None
    assert set(safetensors_header(tmp_path / "m" / "model.safetensors")[0]) == set(m.state_dict())
    torch.manual_seed(1)                                                    # another random start: the saved weights win
    v = torch.randn(4, 32)
    assert torch.allclose(ComposedModel.from_pretrained(tmp_path / "m").encode_query(v, TEXTS), m.encode_query(v, TEXTS), atol=1e-6)


def test_a_folder_written_before_the_named_backbone_still_loads(tmp_path):
    "Every tensor stored, no text_backbone key, a fusion section without projection_dim and video_input: it loads as it was."
    m = combiner_model()
    (tmp_path / "m").mkdir()
    c = m.config; c["fusion"] = {k: c["fusion"][k] for k in ("name", "hidden_dim", "dropout")}
    write_json(tmp_path / "m" / "config.json", c)
    write_safetensors(m.state_dict(), tmp_path / "m" / "model.safetensors")
    old = ComposedModel.from_pretrained(tmp_path / "m")
    assert old.fusion_cfg == COMBINER and old.fusion_cfg.video_input == "normalised"
    v = torch.randn(3, 32)
    assert torch.allclose(old.encode_query(v, TEXTS[:3]), m.encode_query(v, TEXTS[:3]), atol=1e-6)


def test_the_published_combiner_widths_and_raw_video_input(tmp_path):
    "projection_dim and hidden_dim apart, fed the raw video: layer shapes as CLIP4Cir, the raw scale reaches the query, round trip."
    torch.manual_seed(0)
    m = ComposedModel(32, "fusion", MINILM, FusionConfig("combiner", 80, 0.5, 48, "raw")).eval()
    f = m.fusion
    assert (f.video_proj.weight.shape, f.text_proj.weight.shape, f.combine.weight.shape, f.out.weight.shape) == (
        (48, 32), (48, 32), (80, 96), (32, 80))
    assert (f.gate_mlp[0].weight.shape, f.gate_mlp[3].weight.shape) == ((80, 96), (1, 80))
    v = torch.randn(4, 32)
    assert not torch.allclose(m.encode_query(5 * v, TEXTS), m.encode_query(v, TEXTS), atol=1e-3)
    t = m.encode_text(TEXTS)
    assert torch.allclose(m.encode_query(v, TEXTS), f(v, t), atol=1e-6)              # the fusion saw v itself
    m.save_pretrained(tmp_path / "m")
    m2 = ComposedModel.from_pretrained(tmp_path / "m")
    assert m2.config == m.config and torch.allclose(m2.encode_query(v, TEXTS), m.encode_query(v, TEXTS), atol=1e-6)
    normalised = ComposedModel(32, "fusion", MINILM, FusionConfig("combiner", 80, 0.5, 48, "normalised")).eval()
    normalised.load_state_dict(m.state_dict())
    assert torch.allclose(normalised.encode_query(5 * v, TEXTS), normalised.encode_query(v, TEXTS), atol=1e-5)

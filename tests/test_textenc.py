"""Text embeddings: bundled MiniLM, local CLIP / BLIP / BERT folders, offline errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tfcovr.data.textenc import MINILM, embed_texts, load_text_model, minilm_dir


def _minilm_tokenizer_copy(d: Path) -> None:
    "Copy MiniLM's WordPiece tokenizer files into `d` (a BERT-compatible tokenizer, offline)."
    src = minilm_dir()
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (src / f).exists(): (d / f).write_bytes((src / f).read_bytes())


def test_minilm_similarity_shape_norm_determinism():
    texts = ["(FX) salto backward stretched with 2 twist",
             "(FX) salto backward stretched with 2.5 twist",
             "a recipe for tomato soup"]
    e = embed_texts(texts)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    s = e @ e.T
    assert s[0, 1] > s[0, 2] and s[0, 1] > s[1, 2]
    np.testing.assert_array_equal(embed_texts(texts), e)


def test_minilm_is_cached():
    a = load_text_model(MINILM)
    assert load_text_model(MINILM)[1] is a[1]
    assert load_text_model(MINILM, cached=False)[1] is not a[1]


def test_missing_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder.*config.json.*Nothing is downloaded"):
        load_text_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        embed_texts(["x"], encoder=str(tmp_path))


def test_local_bert_folder_mean_pooled(tmp_path):
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    vocab = len((minilm_dir() / "vocab.txt").read_text().splitlines())
    BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path)
    _minilm_tokenizer_copy(tmp_path)
    e = embed_texts(["show with two turns", "show in pike"], encoder=str(tmp_path))
    assert e.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def _tiny_blip_cfg(vocab: int):
    from transformers import BlipConfig
    return BlipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16)


def test_blip_itm_checkpoint_loads_text_encoder_only(tmp_path):
    from transformers import BlipForImageTextRetrieval
    vocab = len((minilm_dir() / "vocab.txt").read_text().splitlines())
    torch.manual_seed(0)
    full = BlipForImageTextRetrieval(_tiny_blip_cfg(vocab))
    full.save_pretrained(tmp_path)
    _minilm_tokenizer_copy(tmp_path)
    _, model = load_text_model(str(tmp_path), cached=False)
    assert type(model).__name__ == "BlipTextModel"
    ref = full.text_encoder.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k])
    assert embed_texts(["show with two turns"], encoder=str(tmp_path)).shape == (1, 32)


def test_checkpoint_missing_weights_is_an_error(tmp_path):
    from safetensors.torch import save_file
    from transformers import BlipForImageTextRetrieval
    vocab = len((minilm_dir() / "vocab.txt").read_text().splitlines())
    full = BlipForImageTextRetrieval(_tiny_blip_cfg(vocab))
    full.save_pretrained(tmp_path)
    sd = {k: v.contiguous() for k, v in full.state_dict().items() if "text_encoder.encoder.layer.1" not in k}
    for f in tmp_path.glob("*.safetensors"): f.unlink()
    save_file(sd, str(tmp_path / "model.safetensors"))
    _minilm_tokenizer_copy(tmp_path)
    with pytest.raises(ValueError, match="checkpoint lacks"):
        load_text_model(str(tmp_path), cached=False)

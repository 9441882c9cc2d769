"""The rehearsal tree (tfcovr.rehearsal) built from the real label files: the project's loaders read it as the real
datasets, its clip ids and lines are real, every clip opens but the one left out, the final splits hold train, val and
test; and the three stand-in model folders load with the project's own loaders."""
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tfcovr.core import from_dict, load_params, merge_params, read_yaml
from tfcovr.data.fetch import missing_labels, real_labels_config
from tfcovr.data.labels import (FINEDIVING_ANNOTATION, DataConfig, assign_splits, load_labels, paper_label_ids,
                                safe_load_pickle)
from tfcovr.data.textenc import embed_texts
from tfcovr.data.video import check_videos, load_clip, resolve_video, video_length
from tfcovr.models.aim import AIMConfig, create_aim
from tfcovr.models.text import TextConfig, create_text_encoder
from tfcovr.rehearsal import (MARKER, REAL_VIDEOS, choose_clips, clip_visual_state_dict, real_format_tree, rehearsal_params,
                              stand_in_actions, write_blip_text, write_clip_checkpoint, write_clip_text)

SMALL = dict(gym_labels=4, gym_clips=(2, 1), dives=2, dive_clips=(1, 1), num_frames=16, size=32)  # a tree in a fraction of a second


@functools.lru_cache(maxsize=1)
def _real(root: Path) -> pd.DataFrame: return load_labels(real_labels_config(), root)


@pytest.fixture(scope="module")
def tree(shared_data, tmp_path_factory):
    "The default tree with one clip left out: (folder, summary)."
    out = tmp_path_factory.mktemp("rehearsal") / "raw"
    return out, real_format_tree(shared_data, out, missing=1)


@pytest.fixture(scope="module")
def tree_clips(tree) -> pd.DataFrame:
    "The tree's clip table, read by the project's loader."
    return load_labels(real_labels_config(), tree[0])


# ---- the tree ------------------------------------------------------------------------------------------------

def test_loaders_read_the_tree_as_the_real_files(tree, tree_clips, shared_data):
    _, s = tree
    assert len(tree_clips) == s["clips"] == 60
    assert s["counts"] == {"finegym": {"train": 24, "val": 24}, "finediving": {"train": 8, "test": 4}}
    real = _real(shared_data).set_index("video_id")
    pd.testing.assert_frame_equal(tree_clips.set_index("video_id"), real.loc[tree_clips.video_id])  # real ids, rows, texts


def test_labels_are_paper_classes_spread_over_events(tree, tree_clips):
    _, s = tree
    assert set(tree_clips.label_id) <= set(paper_label_ids())
    gym = tree_clips[tree_clips.dataset == "finegym"]
    assert gym.label_id.nunique() == 12 and set(gym.event) == {"VT", "FX", "BB", "UB"}
    assert tree_clips[tree_clips.dataset == "finediving"].label_id.nunique() == 4
    assert set(s["labels"]) == set(tree_clips.label_id)
    acts = stand_in_actions(tree_clips)
    assert {k: a.name for k, a in acts.items()} == {k: v["stand_in"] for k, v in s["labels"].items()}
    assert len({a.name for a in acts.values()}) == len(acts)                  # one movement per label: they can be told apart
    by_source = tree_clips.groupby(["dataset", "source_video"]).split.nunique()
    assert by_source.max() == 1                                                # no source video in two split files
    assert tree_clips.groupby("label_id").source_video.nunique().min() >= 3    # clips of a label in several source videos


def test_written_lines_and_records_are_the_real_ones(tree, shared_data):
    out, _ = tree
    g = real_labels_config().finegym
    for rel in g.splits.values():
        lines = (out / rel).read_bytes().splitlines(keepends=True)
        real = set((shared_data / rel).read_bytes().splitlines(keepends=True))
        assert lines and set(lines) <= real
    for rel in (g.categories, g.set_categories): assert (out / rel).read_bytes() == (shared_data / rel).read_bytes()
    d = real_labels_config().finediving.annotation_dir
    mine, orig = (safe_load_pickle(root / d / FINEDIVING_ANNOTATION) for root in (out, shared_data))
    assert len(mine) == 12 and set(mine) <= set(orig)
    for k, v in mine.items():
        assert v.keys() == orig[k].keys()
        for f in v: np.testing.assert_array_equal(v[f], orig[k][f])
    assert missing_labels(out) == ["finediving/FineDiving_coarse_annotation.pkl"]   # never taken for the real label files


def test_every_clip_opens_but_the_missing_one(tree, tree_clips):
    out, s = tree
    roots = [out / REAL_VIDEOS[ds] for ds in tree_clips.dataset]
    bad = check_videos(tree_clips.video_key, roots, n=8, progress=False)
    assert bad.video.tolist() == s["missing"] and len(s["missing"]) == 1
    assert "not found" in bad.problem.iloc[0]
    gone = tree_clips.set_index("video_key").loc[s["missing"][0]]
    assert (gone.dataset, gone.split) == ("finegym", "train")                 # its label line stays
    assert s["videos"] == 59
    for ds, suffix in (("finegym", ".mp4"), ("finediving", "")):
        key = tree_clips.video_key[(tree_clips.dataset == ds) & ~tree_clips.video_key.isin(s["missing"])].iloc[0]
        path = resolve_video(out / REAL_VIDEOS[ds], key)
        assert path.name == Path(key).name + suffix
        assert video_length(path) == 16
        assert load_clip(path, 8).shape == (8, 64, 64, 3)


def test_final_splits_hold_train_val_and_test(tree_clips, root):
    params = load_params(root / "params.yaml", {"seed": int, "data": DataConfig}, strict=False)
    for seed in (params["seed"], 1, 2, 3):
        final = assign_splits(tree_clips, params["data"].splits, seed)
        for ds, d in final.groupby("dataset"):
            assert set(d.split) == {"train", "val", "test"}, (ds, seed)
            assert d.groupby("source_video").split.nunique().max() == 1


def test_rehearsal_params_read_the_tree(tree, tree_clips, root):
    out, _ = tree
    data = read_yaml(root / "params.yaml")["data"]
    p = rehearsal_params()["data"]
    assert p["labels"]["real"] == data["labels"]["real"] and p["videos"]["real"] == data["videos"]["real"]
    cfg = from_dict(DataConfig, merge_params(data, rehearsal_params(out)["data"]), "data")
    pd.testing.assert_frame_equal(load_labels(cfg.labels_config), tree_clips)
    assert cfg.video_roots == {ds: out / rel for ds, rel in REAL_VIDEOS.items()}


def test_small_trees_are_seeded_refuse_foreign_folders_and_follow_the_label(shared_data, tmp_path):
    a = real_format_tree(shared_data, tmp_path / "a", **SMALL, nuisance=0.0)
    real_format_tree(shared_data, tmp_path / "b", **SMALL, nuisance=0.0)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    # without nuisance, two clips of a label look alike and clips of two labels do not
    gym = [v for v in a["videos_list"] if v["dataset"] == "finegym" and v["split"] == "train"]
    frames = {v["video_key"]: load_clip(tmp_path / "a" / REAL_VIDEOS["finegym"] / f"{v['video_key']}.mp4", 16).float() for v in gym}
    by_label = {}
    for v in gym: by_label.setdefault(v["label_id"], []).append(frames[v["video_key"]])
    same = max((x - y).abs().mean().item() for x, y in by_label.values())
    firsts = [xs[0] for xs in by_label.values()]
    other = min((x - y).abs().mean().item() for i, x in enumerate(firsts) for y in firsts[i + 1:])
    assert same < 1.0 and other > 5.0, (same, other)     # mean absolute pixel difference, 0-255
    # a rehearsal tree is replaced; a folder holding anything else is left alone
    b = real_format_tree(shared_data, tmp_path / "a", **SMALL, seed=1)
    assert json.loads((tmp_path / "a" / MARKER).read_text())["settings"]["seed"] == 1 and b["clips"] == a["clips"]
    (tmp_path / "real").mkdir(); (tmp_path / "real" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a rehearsal tree"): real_format_tree(shared_data, tmp_path / "real", **SMALL)
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["keep.txt"]


def test_bad_requests_raise(shared_data, tmp_path):
    real = _real(shared_data)
    with pytest.raises(ValueError, match="drawable labels of the published classes"): choose_clips(real, gym_labels=40)
    with pytest.raises(ValueError, match="at least one label and one clip per split file"): choose_clips(real, dive_clips=(2, 0))
    with pytest.raises(ValueError, match="missing must be in 0..8"): real_format_tree(shared_data, tmp_path / "t", **SMALL, missing=9)
    with pytest.raises(ValueError, match="num_frames must be >= 12"): real_format_tree(shared_data, tmp_path / "t", **{**SMALL, "num_frames": 8})
    assert not (tmp_path / "t").exists()


# ---- the model folders ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["clip.safetensors", "clip.pth"])
def test_clip_checkpoint_loads_into_aim(tmp_path, name):
    path = write_clip_checkpoint(tmp_path / name, "aim-tiny-clip", seed=5)
    sd = clip_visual_state_dict("aim-tiny-clip", seed=5)
    model = AIMConfig(name="aim-tiny-clip", num_frames=3, checkpoint_path=path).build(num_classes=7)
    assert torch.equal(model.blocks[0].attn.qkv.weight, sd["transformer.resblocks.0.attn.in_proj_weight"])
    assert torch.equal(model.pos_embed[0], sd["positional_embedding"])
    assert torch.equal(model.norm_pre.weight, sd["ln_pre.weight"])
    assert model.freeze_backbone
    logits = model(torch.randn(2, 3, 3, 32, 32))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_clip_checkpoint_needs_clip_layout(tmp_path):
    with pytest.raises(ValueError, match="pre_norm=False"): write_clip_checkpoint(tmp_path / "x.safetensors", "aim-tiny")
    assert not (tmp_path / "x.safetensors").exists()
    sd = clip_visual_state_dict("aim-tiny-clip", seed=0)
    assert not torch.equal(sd["conv1.weight"], clip_visual_state_dict("aim-tiny-clip", seed=1)["conv1.weight"])
    assert create_aim("aim-tiny-clip", checkpoint_path=write_clip_checkpoint(tmp_path / "v.pth", prefix="")).freeze_backbone


def test_clip_text_folder_loads(tmp_path):
    texts = ["(FX) salto backward tucked", "Back, 2.5 Soms.Pike, Entry", "(UB) giant circle backward"]
    a = embed_texts(texts, encoder=str(write_clip_text(tmp_path / "a", seed=0)))          # label pairing
    assert a.shape == (3, 32) and np.allclose((a ** 2).sum(1), 1, atol=1e-5)
    assert np.allclose(a, embed_texts(texts, encoder=str(write_clip_text(tmp_path / "b", seed=0))))
    assert not np.allclose(a, embed_texts(texts, encoder=str(write_clip_text(tmp_path / "c", seed=1))))
    enc = create_text_encoder("clip", 16, tmp_path / "a")                                 # Stage 2's `clip`
    assert enc(texts).shape == (3, 16)
    assert {"vocab.json", "merges.txt", "config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "a").iterdir()}


def test_blip_text_folder_loads(tmp_path):
    folder = write_blip_text(tmp_path / "blip")
    enc = TextConfig(name="blip", pretrained_path=str(folder), freeze=False, max_length=64).create(16)   # Stage 2's `blip`
    assert type(enc.backbone).__name__ == "BlipTextModel"
    out = enc(["show with two turns", "make it piked"])
    assert out.shape == (2, 16) and torch.allclose(out.norm(dim=-1), torch.ones(2))
    assert json.loads((folder / "config.json").read_text())["model_type"] == "blip"

"""The embedding cache end to end: torchrun sharding, resumption after an interruption, failures that are never skipped,
the image baseline's N-frame embeddings of a 1-frame model, the resize filter (`embed.interpolation`), and the published
extractor's frames and whole-frame resize (`embed.frames`, `embed.fit`)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import tfcovr.eval.embed as E
from tfcovr.core import ParamsError, load_params
from tfcovr.data.video import load_clip, resize_clip, segment_indices, write_mp4
from tfcovr.models.aim import AIMConfig, create_aim, preprocess, save_weights
from tfcovr.toys import toy_clips
from tfcovr.core import TMPDIR_ENV
from tfcovr.eval.embed import (EmbedConfig, EncoderSpec, IncompleteEmbeddings, build_encoder, extract_embeddings, load_embeddings,
                          untrained_encoder, write_pointer)

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(name="aim-tiny", num_frames=4, pretrained=False, checkpoint_path=None, freeze_backbone=False,
             drop_path_rate=0.0, drop_rate=0.0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    "Ten toy videos (two directions, 3 train + 1 val + 1 test each) and their labels table."
    root = tmp_path_factory.mktemp("toy")
    labels = toy_clips(root / "videos", per_split={"train": 3, "val": 1, "test": 1})
    labels.to_parquet(root / "labels.parquet")
    return root, labels


def encoder():
    return untrained_encoder(AIMConfig(**MODEL), seed=0, device="cpu")


def test_two_processes_shard_the_videos_and_match_one_process(toy, tmp_path):
    root, labels = toy
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\nembed:\n  encoders:\n    untrained: {checkpoint: null, which: best, num_frames: null, model: "
                      f"{json.dumps(MODEL)}}}\n  batch_size: 2\n  shard_size: 2\n  num_workers: 0\n  device: cpu\n  amp: none\n  interpolation: bilinear\n  frames: centre\n  fit: crop\n")
    script = tmp_path / "embed.py"
    script.write_text("import sys\nfrom tfcovr.cli import main\nsys.exit(main(['embed', *sys.argv[1:]]))\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), "untrained",
           "--params", str(params), "--labels", str(root / "labels.parquet"), "--root", str(root / "videos"),
           "--cache-root", str(tmp_path / "cache"), "--pointer", str(tmp_path / "untrained.json")]
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    two = load_embeddings(tmp_path / "untrained.json")
    enc = encoder()
    one = load_embeddings(extract_embeddings(enc, labels, root / "videos", tmp_path / "one", batch_size=3, progress=False))
    assert two.meta["key"] == one.meta["key"] == enc.key                     # same encoder, same cache key
    assert two.ids == one.ids == labels.video_id.tolist()
    np.testing.assert_allclose(two.emb, one.emb, rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "cache" / enc.key / "parts").exists()             # a complete cache drops its parts


def test_an_interrupted_extraction_resumes_with_the_videos_left(toy, tmp_path, monkeypatch):
    root, labels = toy
    enc = encoder()
    full = load_embeddings(extract_embeddings(enc, labels, root / "videos", tmp_path / "full", batch_size=2, shard_size=3, progress=False))
    write, written = E._write_part, []

    def crash_after_two(*a, **k):
        if len(written) == 2: raise KeyboardInterrupt("interrupted")
        write(*a, **k); written.append(a[0])
    monkeypatch.setattr(E, "_write_part", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(enc, labels, root / "videos", tmp_path / "cache", batch_size=2, shard_size=3, progress=False)
    folder = tmp_path / "cache" / enc.key
    assert len(list((folder / "parts").glob("*.npz"))) == 2
    with pytest.raises(FileNotFoundError, match="not a finished embedding cache"):
        load_embeddings(folder)
    meta = E._merge(enc, folder, E._video_table(labels, root / "videos"))   # what is there so far
    assert not meta["complete"] and meta["missing"] == labels.video_id.tolist()[6:] and meta["failed"] == {}
    with pytest.raises(IncompleteEmbeddings, match="4 missing and 0 failed of 10 videos: toy_val_down_0: missing"):
        load_embeddings(folder)
    monkeypatch.setattr(E, "_write_part", write)
    seen = []
    embed = enc.embed
    enc.embed = lambda clips: seen.append(len(clips)) or embed(clips)
    out = load_embeddings(extract_embeddings(enc, labels, root / "videos", tmp_path / "cache", batch_size=2, shard_size=3, progress=False))
    assert sum(seen) == 4                                                     # only the videos left
    assert out.ids == full.ids
    np.testing.assert_array_equal(out.emb, full.emb)


def test_missing_and_corrupt_videos_are_failures_with_reasons(toy, tmp_path):
    root, labels = toy
    videos = tmp_path / "videos"
    videos.mkdir()
    for f in (root / "videos").iterdir(): (videos / f.name).write_bytes(f.read_bytes())
    (videos / "toy_val_up_0.mp4").unlink()
    good = (videos / "toy_test_down_0.mp4").read_bytes()
    (videos / "toy_test_down_0.mp4").write_bytes(good[: len(good) // 3])      # truncated: the index is lost
    enc = encoder()
    folder = extract_embeddings(enc, labels, videos, tmp_path / "cache", shard_size=4, progress=False)
    meta = json.loads((folder / "meta.json").read_text())
    assert not meta["complete"] and meta["missing"] == []
    assert sorted(meta["failed"]) == ["toy_test_down_0", "toy_val_up_0"]
    assert "video not found" in meta["failed"]["toy_val_up_0"]
    assert "toy_test_down_0.mp4" in meta["failed"]["toy_test_down_0"]
    assert json.loads((folder / "index.json").read_text())["video_ids"] == [v for v in labels.video_id if v not in meta["failed"]]
    with pytest.raises(IncompleteEmbeddings, match="toy_val_up_0: .*video not found"):
        load_embeddings(folder)
    with pytest.raises(ValueError, match="no video root for dataset 'finegym'"):
        extract_embeddings(enc, labels, {"finediving": videos}, tmp_path / "cache", progress=False)


# Encodes the toy table and dies (SIGKILL) in the middle of the merge: the array written, the index not yet.
KILLED_MERGE = """
import os, signal, sys
import pandas as pd
import tfcovr.eval.embed as E
from tfcovr.core import ParamsError, load_params
from tfcovr.data.video import load_clip
from tfcovr.models.aim import AIMConfig, create_aim, preprocess, save_weights
def die(path, obj):
    os.kill(os.getpid(), signal.SIGKILL)
E.write_json = die
enc = E.untrained_encoder(AIMConfig("aim-tiny", 4), seed=0, device="cpu")
E.extract_embeddings(enc, pd.read_parquet(sys.argv[1]), sys.argv[2], sys.argv[3], batch_size=4, shard_size=4, progress=False)
"""


def test_a_kill_during_the_merge_leaves_no_temporary_and_no_finished_looking_file(toy, tmp_path):
    root, labels = toy
    script, out = tmp_path / "killed.py", tmp_path / "embeddings" / "aim"
    script.write_text(KILLED_MERGE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", TMPDIR_ENV: str(tmp_path / "tmp")}
    r = subprocess.run([sys.executable, str(script), str(root / "labels.parquet"), str(root / "videos"), str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert "part 3/3 (2 videos)" in r.stdout                                # every part was written before the merge
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left and all(p.startswith(encoder().key) for p in left), left    # only the cache folder ...
    assert not [p for p in left if ".tmp" in p or "/." in p or p.endswith((".npy", ".json"))], left  # ... with parts only
    folder = extract_embeddings(encoder(), labels, root / "videos", out, batch_size=4, shard_size=4, progress=False)
    assert load_embeddings(folder).ids == labels.video_id.tolist()         # the next run finishes from the parts


def test_absurd_embed_sizes_are_refused():
    for k, v, msg in (("batch_size", 0, "batch_size must be in 1..65536"), ("shard_size", 10**9, "shard_size must be in 1..10000000"),
                      ("num_workers", -1, "num_workers must be in 0..256")):
        with pytest.raises(ValueError, match=re.escape(msg)): EmbedConfig({"x": EncoderSpec(checkpoint=Path("m"))}, **{k: v})


ONE_FRAME = dict(MODEL, name="aim-tiny-1f", num_frames=1)


def test_a_one_frame_encoder_over_four_frames_is_the_mean_of_four_single_frame_embeddings(toy, tmp_path):
    "The image baseline's targets: N frames at segment centres, each through the 1-frame model alone, then averaged."
    root, labels = toy
    path = root / "videos" / "toy_test_up_0.mp4"
    one = untrained_encoder(AIMConfig(**ONE_FRAME), seed=0, device="cpu")
    four = untrained_encoder(AIMConfig(**ONE_FRAME), seed=0, device="cpu", num_frames=4)
    frames = load_clip(path, 4, 64)                                             # the centres of 4 equal segments
    assert torch.equal(four.clip(path), frames)
    with torch.no_grad():                                                       # each frame by hand through the model
        by_hand = [one.model.forward_features(preprocess(frames[i][None, None], one.variant))[0].numpy() for i in range(4)]
    np.testing.assert_allclose(four(path), np.mean(by_hand, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(by_hand), np.stack([one(frames[i:i + 1].numpy()) for i in range(4)]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_hand[0], by_hand[3], atol=1e-3)                   # the frames differ: the mean is not any one of them
    folder = extract_embeddings(four, labels, root / "videos", tmp_path / "four", batch_size=3, progress=False, log_every=0)
    cache = load_embeddings(folder)
    np.testing.assert_allclose(cache.lookup(["toy_test_up_0"])[0], four(path), rtol=1e-5, atol=1e-6)
    assert (cache.meta["num_frames"], cache.meta["pooling"]) == (4, "mean of per-frame embeddings")
    single = load_embeddings(extract_embeddings(one, labels, root / "videos", tmp_path / "one", progress=False, log_every=0))
    assert (single.meta["num_frames"], single.meta["pooling"]) == (1, "model")
    assert single.meta["key"] != cache.meta["key"] and one.weights_sha256 == four.weights_sha256   # one model, two caches
    ptr = write_pointer(folder, tmp_path / "aim1f-targets.json", "aim1f-targets")
    assert (ptr["num_frames"], ptr["pooling"]) == (4, "mean of per-frame embeddings")


def test_a_multi_frame_model_with_another_frame_count_is_an_error_naming_the_encoder(tmp_path):
    with pytest.raises(ValueError, match="num_frames 8 differs from the model's 4: a multi-frame model embeds exactly"):
        untrained_encoder(AIMConfig(**MODEL), seed=0, device="cpu", num_frames=8)
    ckpt = tmp_path / "best.safetensors"                                        # a Stage-1 checkpoint of a 4-frame AIM
    save_weights(create_aim("aim-tiny", num_frames=4, num_classes=2), ckpt, {"model": "aim-tiny", "num_frames": 4, "size": 64,
                                                                             "classes": ["a", "b"]})
    assert build_encoder(EncoderSpec(checkpoint=ckpt, num_frames=4), 0, "cpu", name="aim").num_frames == 4
    with pytest.raises(ValueError, match=re.escape(f"embed.encoders.aim8: {ckpt}: num_frames 2 differs from the model's 4")):
        build_encoder(EncoderSpec(checkpoint=ckpt, num_frames=2), 0, "cpu", name="aim8")
    params = tmp_path / "params.yaml"                                            # an untrained model is checked with the params
    params.write_text("seed: 0\nembed:\n  encoders:\n    untrained: {checkpoint: null, which: best, num_frames: 12, model: "
                      f"{json.dumps(MODEL)}}}\n  batch_size: 2\n  shard_size: 2\n  num_workers: 0\n  device: cpu\n  amp: none\n  interpolation: bilinear\n  frames: centre\n  fit: crop\n")
    with pytest.raises(ParamsError, match="embed.encoders.untrained: model aim-tiny: num_frames 12 differs from the model's 4"):
        load_params(params, {"seed": int, "embed": EmbedConfig}, strict=False)
    with pytest.raises(ValueError, match=r"num_frames must be in 1\.\.64 or null, got 0"):
        EncoderSpec(checkpoint=ckpt, num_frames=0)


def test_embed_interpolation_bicubic_reaches_the_frames_and_the_key(tmp_path):
    "96-pixel videos, so that the 64-pixel model resizes them: bicubic frames, a bicubic key, other embeddings than bilinear."
    labels = toy_clips(tmp_path / "videos", per_split={"train": 1}, side=96)
    labels.to_parquet(tmp_path / "labels.parquet")
    params = tmp_path / "params.yaml"
    text = ("seed: 0\nembed:\n  encoders:\n    untrained: {checkpoint: null, which: best, num_frames: null, model: "
            f"{json.dumps(MODEL)}}}\n  batch_size: 2\n  shard_size: 2\n  num_workers: 0\n  device: cpu\n  amp: none\n  interpolation: bicubic\n  frames: centre\n  fit: crop\n")
    params.write_text(text)
    args = ["--params", str(params), "--labels", str(tmp_path / "labels.parquet"), "--root", str(tmp_path / "videos")]
    assert E.embed_main(["untrained", *args, "--cache-root", str(tmp_path / "bicubic"), "--pointer", str(tmp_path / "bicubic.json")]) == 0
    bicubic = load_embeddings(tmp_path / "bicubic.json")
    assert bicubic.meta["preprocessing"]["resize"] == "shorter side, centre crop, bicubic antialias"
    enc = untrained_encoder(AIMConfig(**MODEL), seed=0, device="cpu", interpolation="bicubic")
    path = tmp_path / "videos" / "toy_train_up_0.mp4"
    assert bicubic.meta["key"] == enc.key and enc.key != encoder().key
    clip = enc.clip(path)
    assert clip.dtype == torch.uint8 and torch.equal(clip, load_clip(path, 4, 64, interpolation="bicubic"))
    assert not torch.equal(clip, encoder().clip(path))
    np.testing.assert_allclose(bicubic.lookup(["toy_train_up_0"])[0], enc(path), rtol=1e-5, atol=1e-6)
    params.write_text(text.replace("interpolation: bicubic", "interpolation: bilinear"))
    assert E.embed_main(["untrained", *args, "--cache-root", str(tmp_path / "bilinear"), "--pointer", str(tmp_path / "bilinear.json")]) == 0
    bilinear = load_embeddings(tmp_path / "bilinear.json")
    assert bilinear.meta["key"] == encoder().key                                 # bilinear: the default encoder
    assert not np.allclose(bilinear.emb, bicubic.emb, atol=1e-4)
    with pytest.raises(ValueError, match="interpolation must be one of bilinear, bicubic, got 'lanczos'"):
        EmbedConfig({"x": EncoderSpec(checkpoint=Path("m"))}, interpolation="lanczos")


def test_published_frames_and_stretch_reach_the_clips_the_key_and_the_meta(tmp_path):
    "Wide textured videos of 10 frames: 4 published frames [0, 3, 5, 8] (centres [1, 3, 6, 8]), the whole 64 x 128 frame squeezed."
    g = np.random.default_rng(0)
    videos = {f"w{i}": g.integers(0, 256, (10, 64, 128, 3), dtype=np.uint8) for i in range(3)}
    for v, frames in videos.items(): write_mp4(tmp_path / "videos" / f"{v}.mp4", frames)
    pd.DataFrame({"video_id": list(videos), "video_key": list(videos)}).to_parquet(tmp_path / "labels.parquet")
    params = tmp_path / "params.yaml"
    text = ("seed: 0\nembed:\n  encoders:\n    untrained: {checkpoint: null, which: best, num_frames: null, model: "
            f"{json.dumps(MODEL)}}}\n  batch_size: 2\n  shard_size: 2\n  num_workers: 0\n  device: cpu\n  amp: none\n"
            "  interpolation: bilinear\n  frames: FRAMES\n  fit: FIT\n")
    args = ["--params", str(params), "--labels", str(tmp_path / "labels.parquet"), "--root", str(tmp_path / "videos")]
    path = tmp_path / "videos" / "w1.mp4"
    full = load_clip(path, 10)                                                   # every frame
    caches = {}
    for frames, fit in (("centre", "crop"), ("published", "crop"), ("centre", "stretch"), ("published", "stretch")):
        params.write_text(text.replace("FRAMES", frames).replace("FIT", fit))
        name = f"{frames}-{fit}"
        assert E.embed_main(["untrained", *args, "--cache-root", str(tmp_path / name), "--pointer", str(tmp_path / f"{name}.json")]) == 0
        caches[name] = c = load_embeddings(tmp_path / f"{name}.json")
        enc = untrained_encoder(AIMConfig(**MODEL), seed=0, device="cpu", frames=frames, fit=fit)
        assert c.meta["key"] == enc.key                                          # the stage's encoder is this one
        assert c.meta["sampling"] == {"centre": "center", "published": "published"}[frames]
        assert c.meta["preprocessing"]["resize"] == {"crop": "shorter side, centre crop, bilinear antialias",
                                                     "stretch": "whole frame stretched to the square, bilinear antialias"}[fit]
        idx = segment_indices(10, 4, c.meta["sampling"])
        assert idx.tolist() == ([0, 3, 5, 8] if frames == "published" else [1, 3, 6, 8])
        assert torch.equal(enc.clip(path), resize_clip(full[idx], 64, fit=fit))  # what the encoder sees, from a file ...
        assert torch.equal(enc.clip(full.numpy()), enc.clip(path))                # ... or from a whole video's frames
        np.testing.assert_allclose(c.lookup(["w1"])[0], enc(path), rtol=1e-5, atol=1e-6)   # the extraction's clips are the encoder's
    assert caches["centre-crop"].meta["key"] == encoder().key                    # the defaults keep the key caches had
    assert not {"frames", "fit"} & set(caches["centre-crop"].meta)
    assert len({c.meta["key"] for c in caches.values()}) == 4
    embs = list(caches.values())
    assert all(not np.allclose(a.emb, b.emb, atol=1e-4) for i, a in enumerate(embs) for b in embs[i + 1:])
    params.write_text(text.replace("FRAMES", "middle").replace("FIT", "crop"))
    with pytest.raises(ParamsError, match=re.escape("embed.frames: expected one of 'centre' | 'published', got 'middle'")):
        load_params(params, {"seed": int, "embed": EmbedConfig}, strict=False)
    with pytest.raises(ValueError, match="fit must be one of crop, stretch, got 'pad'"):
        EmbedConfig({"x": EncoderSpec(checkpoint=Path("m"))}, fit="pad")

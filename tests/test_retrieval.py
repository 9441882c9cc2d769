"""Gallery index on disk, the composed retriever and the `tfcovr search` command, on a model trained on the synthetic problem."""
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tfcovr.models.fusion import FusionConfig
from tfcovr.cli import main
from tfcovr.eval.retrieval import ComposedRetriever, GalleryIndex, Hit, format_hits, search_main
from tfcovr.models.composed import ArrayEmbeddings
from tfcovr.toys import synthetic_problem
from tfcovr.train.stage2 import Stage2Config, train_stage2
from tfcovr.models.text import TextConfig
from tfcovr.data.video import load_clip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A Stage-2 model trained on the synthetic problem, and a saved gallery of its val videos (labels = label ids)."
    d = tmp_path_factory.mktemp("retrieval")
    p = synthetic_problem(0)
    cfg = Stage2Config(epochs=2, text=TextConfig("minilm", None, True, 16), fusion=FusionConfig("combiner", 64, 0.1),
                       batch_size=32, lr=3e-3, ks=(1, 5, 10), device="cpu")
    res = train_stage2(cfg, p["train"], p["val"], p["embeddings"], d / "stage2", seed=0, progress=False)
    assert res.best["mAP@10"] > 60
    videos = p["videos"].assign(label=p["videos"].label_id, video_key=lambda v: "clips/" + v.video_id)
    gallery = GalleryIndex.from_embeddings(p["embeddings"], videos, split="val").save(d / "gallery")
    return {"problem": p, "model": d / "stage2" / "model", "gallery": gallery, "dir": d}


def test_gallery_from_embeddings_save_load(trained, tmp_path):
    p = trained["problem"]
    g = GalleryIndex.load(trained["gallery"])
    assert len(g) == 24 and g.dim == 32 and g.meta["split"] == "val"
    assert g.ids == [v for v in p["videos"].video_id if v.startswith("val")]
    assert g.labels[g.position("val3_1")] == "l3" and g.paths[g.position("val3_1")] == "clips/val3_1"
    np.testing.assert_array_equal(g.features, p["embeddings"].lookup(g.ids))
    every = GalleryIndex.from_embeddings(p["embeddings"])
    assert len(every) == len(p["videos"]) and every.labels is None
    every.save(tmp_path / "g"); every.save(tmp_path / "g")                        # replaced in place
    assert sorted(f.name for f in (tmp_path / "g").iterdir()) == ["features.npy", "index.json", "meta.json"]
    assert [f.name for f in tmp_path.iterdir()] == ["g"]                          # no temporary folders left
    with pytest.raises(KeyError, match="nope"):
        g.position("nope")
    with pytest.raises(KeyError):
        GalleryIndex.from_embeddings(ArrayEmbeddings(["a"], np.ones((1, 32))), p["videos"])
    (tmp_path / "g" / "features.npy").unlink()
    with pytest.raises(FileNotFoundError, match="features.npy"):
        GalleryIndex.load(tmp_path / "g")


def test_search_by_gallery_id_embedding_file_and_frames(trained, tmp_path):
    p = trained["problem"]
    r = ComposedRetriever(trained["model"], trained["gallery"])
    hits = r.search("val1_0", "turn it into a leap", k=4)                          # 'leap' is label l4
    assert [h.label for h in hits] == ["l4"] * 4 and isinstance(hits[0], Hit)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    own = r.search("val1_0", "turn it into a twist", k=24)                          # the query's own label
    assert len(own) == 23 and "val1_0" not in [h.video_id for h in own]
    emb = p["embeddings"].lookup(["val1_0"])[0]
    assert r.search(emb, "turn it into a leap", k=4) == hits
    clip = tmp_path / "query.mp4"; clip.write_bytes(b"not decoded here")
    seen = []
    def encoder(video):                                                             # any callable video -> [D]
        seen.append(video)
        return emb
    r2 = ComposedRetriever(trained["model"], trained["gallery"], video_encoder=encoder)
    assert r2.search(clip, "turn it into a leap", k=4) == hits
    assert r2.search(np.zeros((3, 8, 8, 3), np.uint8), "turn it into a leap", k=4) == hits
    assert seen[0] == clip and seen[1].shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="video_encoder="):
        r.search(clip, "turn it into a leap")
    with pytest.raises(FileNotFoundError, match="neither a video file, a frame folder nor a gallery video id"):
        r.search("no_such_video", "x")
    with pytest.raises(ValueError, match="size 16"):
        r.search(np.zeros(16, np.float32), "x")


def test_stage1_checkpoint_goes_through_tfcovr_embed(trained, monkeypatch):
    import tfcovr.eval.retrieval as R
    calls = []
    monkeypatch.setattr(R, "load_video_encoder",
                        lambda ckpt, device="cpu", like=None: calls.append((ckpt, device, like)) or (lambda v: np.ones(32, np.float32)))
    r = ComposedRetriever(trained["model"], trained["gallery"], video_encoder="models/stage1")
    # the query encoder is set up like the gallery's cache (its meta.json: frames, fit, filter)
    assert calls == [("models/stage1", "cpu", r.gallery.meta)] and len(r.search(np.zeros((2, 4, 4, 3), np.uint8), "turn it into a leap", 3)) == 3


def test_dimension_mismatch_names_three_sizes(trained):
    with pytest.raises(ValueError, match="checkpoint 32, config 32, embeddings 16"):
        ComposedRetriever(trained["model"], GalleryIndex(["a", "b"], np.ones((2, 16))))


def test_search_command(trained, capsys):
    rc = search_main(["val1_0", "turn it into a leap", "-k", "3", "--model", str(trained["model"]), "--gallery", str(trained["gallery"])])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[0].split() == ["rank", "score", "video_id", "label"] and len(out) == 4
    assert all(line.split()[3] == "l4" for line in out[1:]) and out[1].split()[0] == "1"
    rc = main(["search", "val1_0", "x", "--model", str(trained["dir"] / "nope"), "--gallery", str(trained["gallery"])])
    assert rc == 2 and "no config.json" in capsys.readouterr().err
    assert format_hits([]).split() == ["rank", "score", "video_id", "label"]


def _where(trained) -> list[str]:
    return ["--model", str(trained["model"]), "--gallery", str(trained["gallery"])]


def _said(err: str) -> list[str]:
    "The command's own stderr lines (loading the text model may draw a progress bar there too)."
    return [line for line in err.split("\n") if line and "Loading weights" not in line]


def test_search_command_takes_a_frame_folder_query(trained, tmp_path, monkeypatch, capsys):
    "A FineDiving-style folder of JPEG frames is a query video, read by the Stage-1 encoder like an mp4."
    import tfcovr.eval.retrieval as R
    folder = tmp_path / "01" / "7"; folder.mkdir(parents=True)
    for k in range(5): Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)).save(folder / f"{k:05d}.jpg")
    emb, seen = trained["problem"]["embeddings"].lookup(["val1_0"])[0], []
    def encoder(video):                                       # reads the frames as the Stage-1 encoder does
        seen.append(load_clip(video, 4).shape)
        return emb
    monkeypatch.setattr(R, "load_video_encoder", lambda ckpt, device="cpu", like=None: encoder)
    rc = main(["search", str(folder), "turn it into a leap", "-k", "3", "--stage1", "models/stage1", *_where(trained)])
    out, err = capsys.readouterr()
    assert (rc, _said(err), seen) == (0, [], [(4, 16, 16, 3)])
    assert [line.split()[3] for line in out.splitlines()[1:]] == ["l4"] * 3
    rc = main(["search", str(folder), "turn it into a leap", *_where(trained)])      # no encoder: one line, exit 2
    assert rc == 2 and len(_said(capsys.readouterr().err)) == 1


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "... !"])
def test_search_command_rejects_an_empty_text(trained, capsys, text):
    rc = main(["search", "val1_0", text, *_where(trained)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(_said(err)) == 1
    assert _said(err)[0].startswith("tfcovr search: error: the modification text") and "is empty" in err


def test_search_command_says_when_the_text_is_cut(trained, capsys):
    "The text encoder reads 16 tokens (the fixture's max_length): a 20,000-word text is searched, with a warning line."
    assert search_main(["val1_0", "turn it into a leap", "-k", "3", *_where(trained)]) == 0
    assert _said(capsys.readouterr().err) == []                                   # a short text: no warning
    rc = search_main(["val1_0", "turn it into a leap " + "word " * 20000, "-k", "3", *_where(trained)])
    out, err = capsys.readouterr()
    assert rc == 0 and len(out.splitlines()) == 4
    assert _said(err) == ["tfcovr search: warning: modification text truncated: the text encoder reads 16 of its 20007 tokens"]


def test_non_finite_scores_are_an_error_naming_the_model(trained, tmp_path, capsys):
    r = ComposedRetriever(trained["model"], trained["gallery"])
    with torch.no_grad():
        for p in r.model.parameters(): p.fill_(float("nan"))
    with pytest.raises(ValueError, match=re.escape(f"{trained['model']}: the model gives non-finite scores")):
        r.search("val1_0", "turn it into a leap")
    with pytest.raises(ValueError, match="query embedding is not finite"):
        r.gallery.search(np.full(r.gallery.dim, np.nan, np.float32))
    from safetensors.torch import load_file, save_file                             # the same, saved: the command
    bad = tmp_path / "nan_model"; shutil.copytree(trained["model"], bad)
    weights = load_file(bad / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              bad / "model.safetensors", metadata={"format": "pt"})
    rc = main(["search", "val1_0", "turn it into a leap", "--model", str(bad), "--gallery", str(trained["gallery"])])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(_said(err)) == 1
    assert _said(err)[0].startswith(f"tfcovr search: error: {bad}")


@pytest.mark.parametrize("bug", [KeyError, TypeError])
def test_search_command_lets_bugs_through(trained, monkeypatch, bug):
    "Only bad input becomes a one-line error (in `tfcovr.cli.main`); a KeyError or TypeError from the code keeps its traceback."
    def broken(self, *args, **kwargs): raise bug("a bug")
    monkeypatch.setattr(ComposedRetriever, "search", broken)
    with pytest.raises(bug, match="a bug"): main(["search", "val1_0", "turn it into a leap", *_where(trained)])


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_search_command_rejects_an_unknown_device(trained, capsys, device):
    rc = main(["search", "val1_0", "turn it into a leap", *_where(trained), "--device", device])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(_said(err)) == 1
    assert _said(err)[0].startswith("tfcovr search: error: --device:") and repr(device) in err

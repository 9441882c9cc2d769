"""Stage 2 training on the synthetic problem: learning, exact resume, baselines by config, separate query and target caches,
validation ground truths, checks and several processes."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tfcovr.models.composed import ArrayEmbeddings, ComposedModel
from tfcovr.core import ParamsError, from_dict, load_params
from tfcovr.toys import synthetic_problem
from tfcovr.train.common import lr_factor
from tfcovr.train.stage2 import Stage2Config, make_batches, train_stage2, validate

ROOT = Path(__file__).resolve().parents[1]

STAGE2 = dict(epochs=2, query="fusion", text=dict(name="minilm", pretrained_path=None, freeze=True, max_length=16),
              fusion=dict(name="combiner", hidden_dim=64, dropout=0.1, projection_dim=None, video_input="normalised"),
              loss=dict(name="hnnce", temperature=0.07, alpha=1.0, beta=0.5, mask_same_target=True),
              batch_size=32, lr=3e-3, weight_decay=0.01, warmup_steps=0, warmup_fraction=0.1, unique_targets_per_batch=False,
              video_dim=None, val_every=1, ks=[1, 5, 10], select="mAP@10", val_gt="target_videos", device="cpu",
              on_mismatch="error")


def config(**over) -> Stage2Config:
    d = {**STAGE2, **over}
    for k in ("text", "fusion", "loss"): d[k] = {**STAGE2[k], **over.get(k, {})}
    return from_dict(Stage2Config, d, "stage2")


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(0)


@pytest.fixture(scope="module")
def video_only(problem):
    return validate(ComposedModel(32, "video"), problem["val"], problem["embeddings"], ks=(1, 5, 10))


def test_params_section_loads_and_epochs_is_required(tmp_path):
    import yaml
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seed": 3, "data": {"source": "synth"}, "stage2": STAGE2}))
    ps = load_params(p, {"seed": int, "stage2": Stage2Config}, strict=False)
    assert ps["seed"] == 3 and ps["stage2"] == config()
    p.write_text(yaml.safe_dump({"seed": 3, "stage2": {k: v for k, v in STAGE2.items() if k != "epochs"}}))
    with pytest.raises(ParamsError, match="stage2.epochs: missing key"):
        load_params(p, {"seed": int, "stage2": Stage2Config}, strict=False)


def test_unique_target_batches_on_skewed_labels():
    g = np.random.default_rng(1)
    labels = g.choice(list("abcdefghij"), size=500, p=[0.3] + [0.7 / 9] * 9)
    bs = make_batches(len(labels), 64, g, labels)
    assert sorted(np.concatenate(bs).tolist()) == list(range(500))
    assert all(len(set(labels[b])) == len(b) for b in bs)
    assert max(len(b) for b in bs) <= 64
    plain = make_batches(500, 64, np.random.default_rng(1))
    assert [len(b) for b in plain] == [64] * 7 + [52]


@pytest.mark.parametrize("variant", [dict(), dict(fusion=dict(name="average")), dict(query="text")])
def test_training_beats_video_only(problem, video_only, tmp_path, variant):
    "TF-CoVR-Base (combiner), the averaging ablation and the text-only baseline, all by configuration."
    res = train_stage2(config(**variant), problem["train"], problem["val"], problem["embeddings"], tmp_path, seed=0, progress=False)
    assert res.best["mAP@10"] > video_only["mAP@10"] + 30, (variant, res.best, video_only)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mAP@10"] == res.best["mAP@10"] and metrics["best_epoch"] == res.best["epoch"]
    hist = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert hist["epoch"].tolist() == [1, 2] and hist["loss"].iloc[-1] < hist["loss"].iloc[0]
    assert json.loads((tmp_path / "history.json").read_text())[-1]["epoch"] == 2
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]           # atomic writes leave nothing behind


def test_video_only_is_a_config_and_trains_nothing(problem, video_only, tmp_path):
    res = train_stage2(config(query="video"), problem["train"], problem["val"], problem["embeddings"], tmp_path, seed=0, progress=False)
    assert res.history == [] and res.best == {"epoch": 0, **video_only}
    m = ComposedModel.from_pretrained(tmp_path / "model")
    assert m.query_mode == "video" and not list(m.parameters())


def _bytes(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in ("model.safetensors", "optimizer.pt")}


@pytest.mark.parametrize("over", [
    dict(text=dict(name="bert-tiny", freeze=True), batch_size=8),                           # frozen text, cached features
    dict(batch_size=8, fusion=dict(projection_dim=48, hidden_dim=80, video_input="raw")),  # frozen MiniLM named, not saved;
                                                                                         # the published Combiner's layout
    dict(text=dict(name="bert-tiny", freeze=False), unique_targets_per_batch=True, batch_size=8,
         loss=dict(name="infonce", alpha=1.0, beta=0.0, mask_same_target=False)),        # trainable text encoder
])
def test_resume_gives_identical_weights(tmp_path, over):
    p = synthetic_problem(1, n_labels=3, per_label=(3, 2))
    cfg = config(**over)
    args = (p["train"], p["val"], p["embeddings"])
    straight = train_stage2(cfg, *args, tmp_path / "a", seed=5, progress=False)
    first = train_stage2(cfg, *args, tmp_path / "b", seed=5, stop_after=1, progress=False)
    assert [r["epoch"] for r in first.history] == [1] and not (tmp_path / "b" / "metrics.json").exists()
    resumed = train_stage2(cfg, *args, tmp_path / "b", seed=5, progress=False)
    assert resumed.history == straight.history
    assert _bytes(tmp_path / "a" / "last") == _bytes(tmp_path / "b" / "last")
    assert (tmp_path / "a" / "model" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    if not cfg.text.freeze: return
    other = train_stage2(cfg, *args, tmp_path / "c", seed=6, progress=False)       # and the seed matters
    assert (tmp_path / "c" / "last" / "model.safetensors").read_bytes() != (tmp_path / "a" / "last" / "model.safetensors").read_bytes()
    assert other.history != straight.history


def test_start_up_checks(problem, tmp_path):
    cfg = config(epochs=1)
    train_stage2(cfg, problem["train"], problem["val"], problem["embeddings"], tmp_path, seed=0, progress=False)
    small = ArrayEmbeddings(problem["embeddings"].ids, problem["embeddings"].emb[:, :16])
    with pytest.raises(ValueError, match=r"checkpoint 32, config \?, embeddings 16"):
        train_stage2(cfg, problem["train"], problem["val"], small, tmp_path, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"holds a checkpoint of another run \(data.train: .* -> .*\): set on_mismatch: restart"):
        train_stage2(cfg, problem["train"].iloc[:-1], problem["val"], problem["embeddings"], tmp_path, seed=0, progress=False)
    keep = [i for i in problem["embeddings"].ids if i != "train3_1"]
    partial = ArrayEmbeddings(keep, problem["embeddings"].lookup(keep))
    with pytest.raises(KeyError, match="train3_1"):
        train_stage2(cfg, problem["train"], problem["val"], partial, tmp_path / "p", seed=0, progress=False)
    with pytest.raises(ValueError, match=r"train triplets lacks column\(s\) \['modification'\]"):
        train_stage2(cfg, problem["train"].drop(columns="modification"), problem["val"], problem["embeddings"], tmp_path / "q", seed=0)


# Metrics of fixed models on synthetic_problem(0), as the Stage-2 validation computed them before it called the evaluator.
BEFORE = {"video": {"mAP@1": 0.0, "R@1": 0.0, "mAP@5": 2.7083333333333335, "R@5": 30.833333333333336,
                    "mAP@10": 10.869378306878307, "R@10": 45.0},
          "fusion": {"mAP@1": 11.666666666666666, "R@1": 11.666666666666666, "mAP@5": 9.694444444444445, "R@5": 34.166666666666664,
                     "mAP@10": 17.614169973544975, "R@10": 51.66666666666667}}


def fixed_fusion() -> ComposedModel:
    "A seeded, untrained combiner model whose rankings are neither perfect nor random."
    torch.manual_seed(0)
    m = ComposedModel(32, "fusion", from_dict(Stage2Config, {**STAGE2}).text, from_dict(Stage2Config, {**STAGE2}).fusion)
    for p in m.fusion.parameters(): torch.nn.init.normal_(p, std=0.2)
    return m


def test_validation_scores_as_before_and_as_the_evaluator(problem, video_only):
    "Best-epoch selection sees the same numbers as the validation it replaced, and the evaluator's own."
    from tfcovr.eval.evaluate import build_gallery, evaluate_model, query_features
    model = fixed_fusion()
    got = validate(model, problem["val"], problem["embeddings"], ks=(1, 5, 10))
    assert got == pytest.approx(BEFORE["fusion"], abs=1e-9) and video_only == pytest.approx(BEFORE["video"], abs=1e-9)
    assert validate(model, problem["val"], problem["embeddings"], ks=(1, 5, 10), ground_truth="label") == got   # every GT is listed
    val = problem["val"].assign(query_id=range(len(problem["val"])))
    gal = build_gallery(problem["videos"], "val", problem["embeddings"], model.encode_target)
    direct = evaluate_model(query_features(model, val, problem["embeddings"]), gal, val, (1, 5, 10))
    assert got == {k: v for k, v in direct.items() if "@" in k}
    assert validate(model, problem["val"], problem["embeddings"], problem["videos"][problem["videos"].split == "val"], (1, 5, 10)) == got


def test_best_epoch_is_chosen_by_the_validation_numbers(problem, tmp_path):
    cfg = config(epochs=3, val_every=1, select="mAP@1")
    res = train_stage2(cfg, problem["train"], problem["val"], problem["embeddings"], tmp_path, seed=0, progress=False, log_every=0)
    scores = [r["mAP@1"] for r in res.history]
    assert res.best["epoch"] == 1 + scores.index(max(scores))                       # the first of the best
    best = ComposedModel.from_pretrained(tmp_path / "model")
    assert validate(best, problem["val"], problem["embeddings"], ks=(1, 5, 10)) == pytest.approx(
        {k: v for k, v in res.best.items() if k != "epoch"}, abs=1e-9)
    steps = res.history[-1]["step"]
    assert res.history[-1]["lr"] == pytest.approx(cfg.lr * lr_factor(steps - 1, steps, round(0.1 * steps)))


def test_unreachable_targets_and_other_ground_truths_are_refused(problem):
    model = ComposedModel(32, "video")
    keep = problem["videos"][(problem["videos"].split == "val") & (problem["videos"].label_id != "l1")]
    queries = problem["val"][problem["val"].query_label_id != "l1"]
    with pytest.raises(ValueError, match=r"query \d+ \(video 'val0_0', target label 'l1'\) has no reachable ground truth"):
        validate(model, queries.drop(columns="target_videos"), problem["embeddings"], keep, (1, 5, 10), ground_truth="label")
    with pytest.raises(ValueError, match=r"listed ground truth 'val1_0' is not a val gallery video of the target label 'l1'"):
        validate(model, queries, problem["embeddings"], keep, (1, 5, 10))
    val = problem["val"].copy()
    tv = list(val["target_videos"]); tv[0] = ["not_a_gallery_video"]; val["target_videos"] = tv
    with pytest.raises(ValueError, match="not_a_gallery_video"):
        validate(model, val, problem["embeddings"], problem["videos"][problem["videos"].split == "val"], (1, 5, 10))
    with pytest.raises(ParamsError, match="stage2.val_gt: expected one of 'target_videos' | 'label', got 'list'"):
        config(val_gt="list")


DDP_SCRIPT = """
import json, os, sys, torch
sys.path.insert(0, {tests!r})
from test_stage2 import config
from tfcovr.toys import synthetic_problem
from tfcovr.train.stage2 import train_stage2
torch.set_num_threads(1)
p = synthetic_problem(2, n_labels=4, per_label=(4, 2))
cfg = config(text=dict(name="bert-tiny", freeze=True), batch_size=8, loss=dict(mask_same_target=True))
res = train_stage2(cfg, p["train"], p["val"], p["embeddings"], {out!r}, seed=0, progress=False)
w = torch.cat([t.flatten() for t in res.model.state_dict().values()])
json.dump({{"rank": int(os.environ["RANK"]), "sum": float(w.double().sum()), "steps": res.history[-1]["step"]}},
          open(os.path.join({out!r}, "rank%s.json" % os.environ["RANK"]), "w"))
"""


def test_two_processes_with_torchrun(tmp_path):
    "Two gloo processes: each runs half of the batches, gradients are averaged, both end on the same weights."
    script = tmp_path / "ddp.py"
    out = tmp_path / "out"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    t = time.time()
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["sum"] == ranks[1]["sum"]
    single = synthetic_problem(2, n_labels=4, per_label=(4, 2))
    n_batches = len(make_batches(len(single["train"]), 8, np.random.default_rng(0)))
    assert ranks[0]["steps"] == 2 * (n_batches // 2)                     # each process ran half of every epoch
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] in (1, 2)
    print(f"torchrun with 2 processes: {time.time() - t:.1f} s")


@pytest.mark.parametrize("key,value,msg", [("lr", float("nan"), r"stage2: lr must be in \(0, 1\], got nan"),
                                           ("batch_size", 10**9, r"stage2: batch_size must be in 2\.\.65536"),
                                           ("epochs", 10**7, r"stage2: epochs must be in 1\.\.100000"),
                                           ("video_dim", 10**8, r"stage2: video_dim must be in 1\.\.65536")])
def test_absurd_sizes_are_refused_naming_the_key(key, value, msg):
    with pytest.raises(ParamsError, match=msg): config(**{key: value})


def test_epoch_lines_and_a_diverged_checkpoint(problem, tmp_path, capsys):
    "One flushed line per epoch (no tqdm); resuming from weights that hold NaN names the file and the tensor."
    train_stage2(config(epochs=2), problem["train"], problem["val"], problem["embeddings"], tmp_path / "TF-CoVR-Base", seed=0,
                 progress=False, stop_after=1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("stage2 TF-CoVR-Base: epochs 1..2, ")
    assert lines[1].startswith("stage2 TF-CoVR-Base: epoch 1/2 loss ") and " val mAP@10 " in lines[1], lines
    w = tmp_path / "TF-CoVR-Base" / "last" / "model.safetensors"
    from safetensors.torch import load_file, save_file
    sd = load_file(str(w)); sd["fusion.out.weight"][0, 0] = float("nan"); save_file(sd, str(w))
    with pytest.raises(ValueError, match=f"{w}: tensor 'fusion.out.weight' holds 1 NaN or infinite value"):
        train_stage2(config(epochs=2), problem["train"], problem["val"], problem["embeddings"], tmp_path / "TF-CoVR-Base", seed=0,
                     progress=False, log_every=0)
    assert capsys.readouterr().out == ""


def trimmed_val(problem) -> pd.DataFrame:
    "Validation triplets whose target_videos list one gallery video of the target label of four."
    return problem["val"].assign(target_videos=[v[:1] for v in problem["val"].target_videos])


def test_validation_ground_truths_follow_val_gt(problem, tmp_path):
    "val_gt is the evaluator's ground_truth: the triplet's target_videos lists, or every gallery video of the target label."
    from tfcovr.eval.evaluate import build_gallery, evaluate_model, query_features
    model, val = fixed_fusion(), trimmed_val(problem)
    vids = problem["videos"][problem["videos"].split == "val"]
    gal = build_gallery(problem["videos"], "val", problem["embeddings"], model.encode_target)
    q = query_features(model, val.assign(query_id=range(len(val))), problem["embeddings"])
    got = {}
    for gt in ("target_videos", "label"):
        got[gt] = validate(model, val, problem["embeddings"], vids, (1, 5, 10), ground_truth=gt)
        direct = evaluate_model(q, gal, val.assign(query_id=range(len(val))), (1, 5, 10), ground_truth=gt)
        assert got[gt] == {k: v for k, v in direct.items() if "@" in k}
    assert got["label"] == pytest.approx(BEFORE["fusion"], abs=1e-9) and got["target_videos"]["mAP@10"] != got["label"]["mAP@10"]
    runs = {gt: train_stage2(config(epochs=1, val_gt=gt), problem["train"], val, problem["embeddings"], tmp_path / gt, seed=0,
                             progress=False, log_every=0) for gt in ("target_videos", "label")}
    assert runs["label"].history[0]["loss"] == runs["target_videos"].history[0]["loss"]        # the same training ...
    assert runs["label"].best["mAP@10"] != runs["target_videos"].best["mAP@10"]                # ... scored two ways
    for gt, r in runs.items():
        assert validate(r.model, val, problem["embeddings"], ks=(1, 5, 10), ground_truth=gt) == pytest.approx(
            {k: v for k, v in r.best.items() if k != "epoch"}, abs=1e-9)
    with pytest.raises(ValueError, match=r"val triplets lacks column\(s\) \['target_videos'\]"):
        train_stage2(config(epochs=1), problem["train"], val.drop(columns="target_videos"), problem["embeddings"], tmp_path / "x",
                     seed=0, progress=False)


def queries_only(problem):
    "Train and val triplets whose query labels are l0..l2 (l3..l5 are targets only), and a cache of their query videos alone."
    train = problem["train"][problem["train"].query_label_id.isin(["l0", "l1", "l2"])]
    val = problem["val"][problem["val"].query_label_id.isin(["l0", "l1", "l2"])]
    ids = sorted(set(train.query_video) | set(val.query_video))
    assert len(ids) < len(problem["embeddings"].ids)
    return train, val, ArrayEmbeddings(ids, problem["embeddings"].lookup(ids))


def test_targets_are_read_from_the_target_cache(problem, tmp_path):
    "The image baseline's two caches: queries from `embeddings`, training targets and the validation gallery from `target_embeddings`."
    train, val, queries = queries_only(problem)
    cfg = config(epochs=1)
    one = train_stage2(cfg, train, val, problem["embeddings"], tmp_path / "one", seed=0, progress=False, log_every=0)
    two = train_stage2(cfg, train, val, queries, tmp_path / "two", seed=0, progress=False, log_every=0,
                       target_embeddings=problem["embeddings"])
    assert two.history == one.history                                    # every target found in the target cache
    with pytest.raises(KeyError, match="videos have no embedding"):      # ... and nowhere else
        train_stage2(cfg, train, val, queries, tmp_path / "q", seed=0, progress=False, log_every=0)
    e = problem["embeddings"]
    other = ArrayEmbeddings(e.ids, e.emb + np.random.default_rng(0).standard_normal(e.emb.shape).astype(np.float32))
    moved = train_stage2(cfg, train, val, e, tmp_path / "moved", seed=0, progress=False, log_every=0, target_embeddings=other)
    assert moved.history[0]["loss"] != one.history[0]["loss"] and moved.best["mAP@10"] != one.best["mAP@10"]
    model = fixed_fusion()                                               # validation alone reads the gallery from the target cache
    assert validate(model, val, queries, ks=(1, 5, 10), target_embeddings=e) == validate(model, val, e, ks=(1, 5, 10))
    assert validate(model, val, e, ks=(1, 5, 10), target_embeddings=other) != validate(model, val, e, ks=(1, 5, 10))


def test_a_target_cache_of_another_dimension_is_refused(problem, tmp_path):
    e = problem["embeddings"]
    small = ArrayEmbeddings(e.ids, e.emb[:, :16], {"key": "aim1f-targets-16"})
    msg = r"the target embeddings \(cache aim1f-targets-16\) are 16-d but the query embeddings \(an in-memory array\) are 32-d"
    with pytest.raises(ValueError, match=msg):
        train_stage2(config(epochs=1), problem["train"], problem["val"], e, tmp_path, seed=0, progress=False, target_embeddings=small)
    with pytest.raises(ValueError, match=msg):
        validate(fixed_fusion(), problem["val"], e, ks=(1, 5, 10), target_embeddings=small)
    assert not (tmp_path / "last").exists()                              # refused before any training


def test_resume_detects_a_changed_target_cache(problem, tmp_path):
    e = problem["embeddings"]
    t1 = ArrayEmbeddings(e.ids, e.emb, {"key": "aim1f-targets-a"})
    t2 = ArrayEmbeddings(e.ids, e.emb, {"key": "aim1f-targets-b"})
    cfg = config(epochs=2)
    train_stage2(cfg, problem["train"], problem["val"], e, tmp_path, seed=0, progress=False, log_every=0, stop_after=1, target_embeddings=t1)
    with pytest.raises(ValueError, match=r"holds a checkpoint of another run \(data.target_embeddings: .* -> .*\)"):
        train_stage2(cfg, problem["train"], problem["val"], e, tmp_path, seed=0, progress=False, log_every=0, target_embeddings=t2)
    with pytest.raises(ValueError, match=r"data.target_embeddings: .* -> .*"):      # no target cache: the targets are the query cache
        train_stage2(cfg, problem["train"], problem["val"], e, tmp_path, seed=0, progress=False, log_every=0)
    res = train_stage2(cfg, problem["train"], problem["val"], e, tmp_path, seed=0, progress=False, log_every=0, target_embeddings=t1)
    assert [r["epoch"] for r in res.history] == [1, 2]                  # the same caches: resumed
    fresh = train_stage2(cfg, problem["train"], problem["val"], e, tmp_path / "restart", seed=0, progress=False, log_every=0,
                         stop_after=1, target_embeddings=t1)
    again = train_stage2(cfg, problem["train"], problem["val"], e, tmp_path / "restart", seed=0, progress=False, log_every=0,
                         target_embeddings=t2, on_mismatch="restart")
    assert len(fresh.history) == 1 and [r["epoch"] for r in again.history] == [1, 2]


def test_on_mismatch_is_a_config_key_and_a_restart_names_the_fields(problem, tmp_path, capsys):
    "`on_mismatch` of the train section: error (default) names the differing fields; restart says which and starts over."
    cfg = config(epochs=2)
    args = (problem["train"], problem["val"], problem["embeddings"])
    train_stage2(cfg, *args, tmp_path, seed=0, progress=False, log_every=0, stop_after=1)
    changed = config(epochs=2, lr=1e-3, fusion=dict(hidden_dim=32))
    with pytest.raises(ValueError, match=r"another run \(config.fusion.hidden_dim: 64 -> 32; config.lr: 0.003 -> 0.001\): "
                                         r"set on_mismatch: restart in this run's stage2 train section"):
        train_stage2(changed, *args, tmp_path, seed=0, progress=False, log_every=0)
    same = train_stage2(config(epochs=2, on_mismatch="restart"), *args, tmp_path, seed=0, progress=False, log_every=0)
    assert [r["epoch"] for r in same.history] == [1, 2] and "restarting" not in capsys.readouterr().out   # on_mismatch is no field of the run
    fresh = train_stage2(dataclasses.replace(changed, on_mismatch="restart"), *args, tmp_path, seed=0, progress=False, log_every=0)
    out = capsys.readouterr().out
    assert f"{tmp_path / 'last'} holds another run (config.fusion.hidden_dim: 64 -> 32; config.lr: 0.003 -> 0.001): restarting" in out, out
    assert [r["epoch"] for r in fresh.history] == [1, 2] and fresh.model.fusion.hidden_dim == 32
    with pytest.raises(ValueError, match="another run"):                                  # the argument overrides the key
        train_stage2(dataclasses.replace(cfg, on_mismatch="restart"), *args, tmp_path, seed=0, progress=False, log_every=0, on_mismatch="error")
    with pytest.raises(ParamsError, match="stage2.on_mismatch: expected one of 'error' | 'restart', got 'ignore'"):
        config(on_mismatch="ignore")


def test_run_folders_hold_trained_weights_and_name_the_frozen_text_encoder(problem, tmp_path):
    "model/ and last/ store the projection and the fusion; the frozen MiniLM is named by name, path and digest, and checked on load."
    from safetensors.torch import load_file
    from tfcovr.models.aim import weights_sha256
    res = train_stage2(config(epochs=2), problem["train"], problem["val"], problem["embeddings"], tmp_path, seed=0, progress=False,
                       log_every=0)
    digest = weights_sha256(res.model.text_encoder.backbone)
    for sub in ("model", "last"):
        conf = json.loads((tmp_path / sub / "config.json").read_text())
        assert conf["text_backbone"] == {"name": "minilm", "pretrained_path": None, "weights_sha256": digest}
        keys = set(load_file(str(tmp_path / sub / "model.safetensors")))
        assert keys == {k for k in res.model.state_dict() if not k.startswith("text_encoder.backbone.")}
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert size < 5_000_000, size                                       # the 90 MB MiniLM is not in the folder
    best = ComposedModel.from_pretrained(tmp_path / "model")
    assert validate(best, problem["val"], problem["embeddings"], ks=(1, 5, 10)) == pytest.approx(
        {k: v for k, v in res.best.items() if k != "epoch"}, abs=1e-9)
    resumed = train_stage2(config(epochs=3), problem["train"], problem["val"], problem["embeddings"], tmp_path / "r", seed=0,
                           progress=False, log_every=0, stop_after=1)
    conf = json.loads((tmp_path / "r" / "last" / "config.json").read_text())
    conf["text_backbone"]["weights_sha256"] = "f" * 64                  # as if the MiniLM files had changed since
    (tmp_path / "r" / "last" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=f"config.json: the frozen text encoder is not the one the model was trained with "
                                         f"\\(weights_sha256 '{'f' * 64}' when saved, '{digest}' now\\)"):
        train_stage2(config(epochs=3), problem["train"], problem["val"], problem["embeddings"], tmp_path / "r", seed=0,
                     progress=False, log_every=0)
    assert len(resumed.history) == 1

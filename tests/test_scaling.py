"""Scaling out as a researcher does it: `tfcovr stage1`, `tfcovr embed` and `tfcovr stage2` through the installed console script
under `torchrun --standalone --nproc_per_node=2 --no-python tfcovr ...` (Gloo on CPU), and an extraction split across machines
without a shared file system (`tfcovr embed NAME --shard I/N` on each, then one merge). Each run prints its wall time."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tfcovr.cli import main
from tfcovr.core import rng, to_dict
from tfcovr.data.triplets import EVAL_COLUMNS, TRAIN_COLUMNS, read_triplets
from tfcovr.eval.embed import load_embeddings
from tfcovr.models.aim import AIMConfig, load_stage1
from tfcovr.models.composed import ComposedModel
from tfcovr.toys import synthetic_problem, toy_clips
from tfcovr.train.stage1 import Stage1Config
from tfcovr.train.stage2 import make_batches, validate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent                 # the virtual environment's scripts: tfcovr, torchrun
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
MODEL = dict(name="aim-tiny", num_frames=4, pretrained=False, checkpoint_path=None, freeze_backbone=False, drop_path_rate=0.0, drop_rate=0.0)
EMBED = dict(encoders={"untrained": dict(checkpoint=None, model=MODEL, which="best", num_frames=None)}, batch_size=2, shard_size=2,
             num_workers=0, device="cpu", amp="none", interpolation="bilinear", frames="centre", fit="crop")


def label(args) -> str:
    "The command, its run or encoder, and the shard, as a line names them."
    return " ".join(args[:2]) + (f" --shard {args[args.index('--shard') + 1]}" if "--shard" in args else "")


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    "`torchrun --standalone --nproc_per_node=N --no-python tfcovr ARGS` from the repository root; prints the wall time, checks the exit status."
    t = time.time()
    p = subprocess.run([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "--no-python", str(BIN / "tfcovr"), *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    print(f"torchrun x{nproc} tfcovr {label(args)}: {time.time() - t:.1f} s")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def one_process(*args: str) -> str:
    "`tfcovr ARGS` in this process (the console script's `main`); prints the wall time, checks the exit status, returns stdout."
    t = time.time()
    with contextlib.redirect_stdout(io.StringIO()) as out: code = main(list(args))
    print(f"tfcovr {label(args)} (1 process): {time.time() - t:.1f} s")
    assert code == 0, out.getvalue()
    return out.getvalue()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    "Ten toy videos (two directions: 3 train, 1 val, 1 test each), their labels table and a params file with stage1 and embed sections."
    root = tmp_path_factory.mktemp("toy")
    labels = toy_clips(root / "videos", per_split={"train": 3, "val": 1, "test": 1})
    labels.to_parquet(root / "labels.parquet")
    stage1 = Stage1Config(AIMConfig("aim-tiny", num_frames=4), epochs=1, batch_size=2, grad_accum=1, lr=2e-3, warmup_epochs=0.0,
                          hflip=False, device="cpu", amp="none")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]          # the project's data section (source synth)
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "classes": "all", "data": data, "stage1": {"aim": to_dict(stage1)},
                                                      "embed": EMBED}, sort_keys=False))
    return root, labels


def data_args(root: Path) -> list[str]:
    return ["--params", str(root / "params.yaml"), "--labels", str(root / "labels.parquet"), "--root", str(root / "videos")]


def test_stage1_on_two_processes(toy, tmp_path):
    "One variant on 2 Gloo processes: a checkpoint of 2 processes, its history, and the effective batch 2 clips x 1 x 2 processes."
    root, _ = toy
    p = torchrun("stage1", "aim", *data_args(root), "--out", str(tmp_path / "aim"))
    assert "effective batch 4 (2 clips x 1 accumulated x 2 process(es))" in p.stdout, p.stdout
    assert json.loads((tmp_path / "aim" / "metrics.json").read_text())["effective_batch"] == 4
    model, meta = load_stage1(tmp_path / "aim")                                 # best.safetensors
    assert meta["world_size"] == 2 and meta["epoch"] == 1 and model.num_frames == 4
    h = pd.read_csv(tmp_path / "aim" / "history.tsv", sep="\t")
    assert h.epoch.tolist() == [1] and h.val_acc.iloc[0] in {0.0, 0.5, 1.0}        # 2 val clips, each counted once
    assert f"{tmp_path / 'aim'}: 1 epochs, best val acc" in p.stdout            # rank 0 alone reports
    assert p.stdout.count("best val acc") == 1


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    "The cache of one process, extracted by `tfcovr embed` here."
    root, _ = toy
    out = tmp_path_factory.mktemp("one")
    one_process("embed", "untrained", *data_args(root), "--cache-root", str(out / "cache"), "--pointer", str(out / "untrained.json"))
    return load_embeddings(out / "untrained.json")


def same_cache(got, ref) -> None:
    assert got.meta["key"] == ref.meta["key"] and got.meta["complete"]
    assert got.ids == ref.ids
    np.testing.assert_allclose(got.emb, ref.emb, rtol=1e-5, atol=1e-5)


def test_embed_on_two_processes_equals_one_process(toy, reference, tmp_path):
    "With shard_size 2 the 10 videos make 5 parts: rank 0 encodes parts 0, 2, 4, rank 1 parts 1, 3; rank 0 merges."
    root, labels = toy
    p = torchrun("embed", "untrained", *data_args(root), "--cache-root", str(tmp_path / "cache"), "--pointer", str(tmp_path / "u.json"))
    assert "embed cache [rank 0/2]: 10 videos, 0 already encoded, 6 to encode in 3 part(s) of up to 2" in p.stdout, p.stdout
    assert "embed cache [rank 1/2]: 10 videos, 0 already encoded, 4 to encode in 2 part(s) of up to 2" in p.stdout, p.stdout
    two = load_embeddings(tmp_path / "u.json")
    same_cache(two, reference)
    assert two.ids == labels.video_id.tolist()
    assert not (tmp_path / "cache" / two.meta["key"] / "parts").exists()      # complete: the parts are dropped


def part_ids(folder: Path) -> list[str]:
    return sorted(v for p in (folder / "parts").glob("*.npz") for v in np.load(p)["ids"].tolist())


def test_shards_on_two_machines_then_one_merge(toy, reference, tmp_path):
    """Machine A runs shard 0/2 on 2 processes, machine B shard 1/2 on 1, each into its own folder; their parts/ copied into
    one cache folder, a run without --shard encodes nothing and merges the cache of one process."""
    root, labels = toy
    key, ids = reference.meta["key"], labels.video_id.tolist()                  # parts: ids[0:2], [2:4], [4:6], [6:8], [8:10]
    a = torchrun("embed", "untrained", *data_args(root), "--cache-root", str(tmp_path / "A"), "--pointer", str(tmp_path / "A.json"),
                 "--shard", "0/2")
    assert "embed A [shard 0/2] [rank 0/2]: 10 videos, 0 already encoded, 4 to encode in 2 part(s)" in a.stdout, a.stdout   # parts 0, 4
    assert "embed A [shard 0/2] [rank 1/2]: 10 videos, 0 already encoded, 2 to encode in 1 part(s)" in a.stdout, a.stdout   # part 2
    assert "embed A [shard 0/2] [rank 0/2]: 6 of its 6 videos encoded; parts in " in a.stdout, a.stdout
    b = one_process("embed", "untrained", *data_args(root), "--cache-root", str(tmp_path / "B"), "--pointer", str(tmp_path / "B.json"),
                    "--shard", "1/2")
    assert f"{tmp_path / 'B' / key / 'parts'}: shard 1/2 written" in b, b
    for m, want in (("A", ids[0:2] + ids[4:6] + ids[8:10]), ("B", ids[2:4] + ids[6:8])):
        assert part_ids(tmp_path / m / key) == sorted(want)                     # shard I of N: parts I::N
        assert not (tmp_path / m / key / "meta.json").exists() and not (tmp_path / f"{m}.json").exists()   # nothing merged
    merged = tmp_path / "M" / key / "parts"
    merged.mkdir(parents=True)
    for m in ("A", "B"):
        for f in (tmp_path / m / key / "parts").glob("*.npz"): shutil.copy(f, merged)
    out = one_process("embed", "untrained", *data_args(root), "--cache-root", str(tmp_path / "M"), "--pointer", str(tmp_path / "M.json"))
    assert "embed M: 10 videos, 10 already encoded, 0 to encode in 0 part(s)" in out, out
    same_cache(load_embeddings(tmp_path / "M.json"), reference)
    with contextlib.redirect_stderr(io.StringIO()) as err: assert main(["embed", "untrained", *data_args(root), "--shard", "2/2"]) == 2
    assert err.getvalue() == "tfcovr embed: error: --shard: expected I/N with 0 <= I < N (shard I of N, e.g. 0/2), got '2/2'\n"


STAGE2 = dict(epochs=2, query="fusion", text=dict(name="bert-tiny", pretrained_path=None, freeze=True, max_length=16),
              fusion=dict(name="combiner", hidden_dim=64, dropout=0.1, projection_dim=None, video_input="normalised"),
              loss=dict(name="hnnce", temperature=0.07, alpha=1.0, beta=0.5, mask_same_target=True), batch_size=8, lr=3e-3,
              weight_decay=0.01, warmup_steps=0, warmup_fraction=0.0, unique_targets_per_batch=False, video_dim=None, val_every=1,
              ks=[1, 5, 10], select="mAP@10", val_gt="target_videos", device="cpu", on_mismatch="error")


def write_cache(folder: Path, ids: list[str], emb: np.ndarray, key: str) -> None:
    "An embedding cache in the layout of `tfcovr.eval.embed`."
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", emb.astype(np.float32))
    (folder / "index.json").write_text(json.dumps({"video_ids": ids}))
    (folder / "meta.json").write_text(json.dumps({"key": key, "num_frames": 8, "dim": emb.shape[1], "n_videos": len(ids), "complete": True,
                                                  "missing": [], "failed": {}}))


def test_stage2_run_on_two_processes(tmp_path):
    """A run with a query cache and a target cache (as the 1-frame run): queries of labels l0, l1 only, so the videos of l2, l3
    are in the target cache alone; 2 processes take every 2nd batch; the saved best model scores what metrics.json says."""
    p = synthetic_problem(2, n_labels=4, per_label=(4, 2))
    train, val = (p[s][p[s].query_label_id.isin(["l0", "l1"])].reset_index(drop=True) for s in ("train", "val"))
    fill = lambda df, cols: df.assign(**{c: "x" for c in cols if c not in df.columns})   # columns training does not read
    (tmp_path / "triplets").mkdir()
    fill(train, TRAIN_COLUMNS).to_parquet(tmp_path / "triplets" / "train.parquet")
    fill(val.assign(query_id=range(len(val)), target_video=val.target_videos.str[0], n_targets=val.target_videos.map(len)),
         EVAL_COLUMNS).to_parquet(tmp_path / "triplets" / "val.parquet")
    p["videos"].to_parquet(tmp_path / "triplets" / "videos.parquet")
    queries = sorted(set(train.query_video) | set(val.query_video))
    write_cache(tmp_path / "emb" / "q", queries, p["embeddings"].lookup(queries), "q0")
    write_cache(tmp_path / "emb" / "t", p["embeddings"].ids, p["embeddings"].emb, "t0")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 3, "threads": 1, "stage2": {"two-caches": {"embeddings": "q", "target_embeddings": "t",
                                                                                          "train": STAGE2}}}, sort_keys=False))
    out = tmp_path / "run"
    r = torchrun("stage2", "two-caches", "--params", str(params), "--triplets", str(tmp_path / "triplets"), "--embeddings",
                 str(tmp_path / "emb"), "--out", str(out))
    assert r.stdout.count("two-caches: queries from q (num_frames 8), targets from t (num_frames 8), validation GT target_videos") == 1
    state = json.loads((out / "last" / "state.json").read_text())
    n_batches = len(make_batches(len(train), 8, rng(3, "stage2", "epoch", 0)))
    assert state["run"]["world"] == 2 and state["run"]["seed"] == 3 and state["epoch"] == 2
    assert state["step"] == STAGE2["epochs"] * (n_batches // 2)                   # each process ran half of every epoch
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and [h["epoch"] for h in state["history"]] == [1, 2]
    best = ComposedModel.from_pretrained(out / "model")
    got = validate(best, read_triplets(tmp_path / "triplets" / "val.parquet"), load_embeddings(tmp_path / "emb" / "q"),
                   p["videos"][p["videos"].split == "val"], (1, 5, 10), "target_videos", load_embeddings(tmp_path / "emb" / "t"))
    assert got["mAP@10"] == pytest.approx(metrics["mAP@10"], abs=1e-6)
    assert f"{out}: 2 epochs, best val mAP@10 {metrics['mAP@10']:.2f} (epoch {metrics['best_epoch']})" in r.stdout

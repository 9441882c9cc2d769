"""Triplets on the real label files: ground truths, source disjointness, the carved test split, files, and the stage chain."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tfcovr.core import to_dict
from tfcovr.data.labels import load_finediving, load_finegym
from tfcovr.data.modify import ModifyConfig, generate_modifications
from tfcovr.data.pairing import PairingConfig, build_pairs, label_attributes
from tfcovr.data.triplets import (EVAL_COLUMNS, TFCOVR_EVAL, TFCOVR_TRAIN, TRAIN_COLUMNS, TripletsConfig, build_triplets,
                                  export_tfcovr_csvs, gallery_videos, load_triplets, read_tfcovr_csv, triplet_stats, video_table,
                                  write_tfcovr_csv, write_triplets)

_CACHE: dict = {}
CFG = TripletsConfig(train_max_per_pair=20)


@pytest.fixture
def diving(shared_data):
    "Real FineDiving: clips, pairs, modifications and triplets with the default rules (built once)."
    if "diving" not in _CACHE:
        clips = load_finediving(shared_data / "finediving")
        pr = build_pairs(clips, PairingConfig())
        mods = generate_modifications(pr.pairs, label_attributes(pr.labels), ModifyConfig(), seed=0, progress=False)
        _CACHE["diving"] = clips, pr, mods, build_triplets(clips, pr.pairs, mods, CFG, seed=0, progress=False)
    return _CACHE["diving"]


def test_eval_rows_hold_every_ground_truth_from_other_sources(diving):
    clips, pr, mods, res = diving
    te = res.splits["test"]
    assert len(res.splits["val"]) == 0 and len(te) > 100                      # FineDiving: train + test, nothing to carve
    assert list(te.columns) == EVAL_COLUMNS
    gal = res.videos[res.videos.split == "test"].set_index("video_id")
    assert sorted(gal.index) == gallery_videos(res.videos, "test") == sorted(clips.video_id[clips.split == "test"])
    by_label = {k: g for k, g in gal.groupby("label_id")}
    for r in te.itertuples():
        q = gal.loc[r.query_video]
        assert q.label_id == r.query_label_id and q.source_video == r.query_source
        g = by_label[r.target_label_id]
        assert sorted(r.target_videos) == sorted(g.index[g.source_video != q.source_video])
        assert r.query_video not in r.target_videos and r.target_video in r.target_videos and r.n_targets == len(r.target_videos)
    assert te.query_id.tolist() == list(range(len(te)))
    mod = mods.set_index(["query_label_id", "target_label_id"])["modification"]
    assert (te.modification == [mod[(a, b)] for a, b in zip(te.query_label_id, te.target_label_id)]).all()


def test_every_query_is_kept_or_counted(diving):
    clips, pr, mods, res = diving
    rep = res.report["splits"]["test"]
    test = clips[clips.split == "test"]
    n_q = test.groupby("label_id").size()
    expected = sum(int(n_q.get(a, 0)) for a in pr.pairs.query_label_id)      # every query video of every pair
    assert rep["triplets"] + rep["queries_dropped_no_target_label"] + rep["queries_dropped_same_source_only"] == expected
    assert rep["queries_dropped_same_source_only"] > 0                         # distinct sources cost some queries


def test_train_rows(diving):
    clips, pr, mods, res = diving
    tr = res.splits["train"]
    assert list(tr.columns) == TRAIN_COLUMNS and len(tr) > 100
    assert (tr.query_source != tr.target_source).all()
    assert tr.groupby(["query_label_id", "target_label_id"]).size().max() <= CFG.train_max_per_pair
    lab = clips.set_index("video_id")
    assert (lab.loc[tr.query_video, "label_id"].to_numpy() == tr.query_label_id.to_numpy()).all()
    assert (lab.loc[tr.target_video, "label_id"].to_numpy() == tr.target_label_id.to_numpy()).all()
    assert set(lab.loc[tr.query_video, "split"]) == {"train"} == set(lab.loc[tr.target_video, "split"])
    again = build_triplets(clips, pr.pairs, mods, CFG, seed=0, progress=False)
    pd.testing.assert_frame_equal(again.splits["train"], tr)                   # seeded
    other = build_triplets(clips, pr.pairs, mods, CFG, seed=1, progress=False)
    assert not other.splits["train"].equals(tr)


def test_files_round_trip(diving, tmp_path):
    _, _, _, res = diving
    write_triplets(res, tmp_path / "triplets")
    back = load_triplets(tmp_path / "triplets")
    for s, df in res.splits.items(): pd.testing.assert_frame_equal(back.splits[s], df.reset_index(drop=True))
    assert back.report == json.loads(json.dumps(res.report))
    export_tfcovr_csvs(res, tmp_path / "csv")
    te = read_tfcovr_csv(tmp_path / "csv" / "test.csv", "test")
    assert list(te.columns) == TFCOVR_EVAL
    assert te.target_videos_ids.tolist() == res.splits["test"].target_videos.tolist()
    assert te.query_id.tolist() == res.splits["test"].query_id.tolist()
    raw = pd.read_csv(tmp_path / "csv" / "test.csv", dtype=str)
    assert raw.target_videos_ids.str.startswith('["').all()                    # the pipeline's files: JSON lists
    tr = read_tfcovr_csv(tmp_path / "csv" / "train.csv", "train")
    assert list(tr.columns) == TFCOVR_TRAIN and len(tr) == len(res.splits["train"])
    assert tr.label1.tolist() == res.splits["train"].query_label.tolist()


def test_released_spelling_round_trips(diving, tmp_path):
    _, _, _, res = diving
    export_tfcovr_csvs(res, tmp_path / "json")
    export_tfcovr_csvs(res, tmp_path / "py", lists="python")                   # lists as the released files write them
    raw = pd.read_csv(tmp_path / "py" / "test.csv", dtype=str)
    assert raw.target_videos_ids.str.startswith("['").all()
    te = read_tfcovr_csv(tmp_path / "py" / "test.csv", "test")
    pd.testing.assert_frame_equal(te, read_tfcovr_csv(tmp_path / "json" / "test.csv", "test"))
    assert te.target_videos_ids.tolist() == res.splits["test"].target_videos.tolist()
    write_tfcovr_csv(te, tmp_path / "again.csv")                               # read -> write: the same bytes
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "py" / "test.csv").read_bytes()
    assert (tmp_path / "json" / "train.csv").read_bytes() == (tmp_path / "py" / "train.csv").read_bytes()  # no list there


def test_stats(diving):
    _, pr, _, res = diving
    st = triplet_stats(res)
    used = set().union(*[set(df.query_label_id) | set(df.target_label_id) for df in res.splits.values()])
    assert st["labels_used"] == {"finediving": len(used), "total": len(used)}
    assert 40 <= len(used) <= 52
    assert st["triplets"]["total"] == sum(len(df) for df in res.splits.values())
    assert st["ground_truths_per_query"] == pytest.approx(res.splits["test"].n_targets.mean())
    assert sum(st["modification_types"]["test"].values()) == len(res.splits["test"])
    assert st["paper"]["labels_used"]["total"] == 306


def test_carved_test_split_on_real_finegym(shared_data):
    g = shared_data / "finegym"
    clips = load_finegym(g / "gym288_categories.txt", {"train": g / "gym288_train_element_v1.1.txt", "val": g / "gym288_val_element.txt"},
                         g / "set_categories.txt")
    v = video_table(clips, TripletsConfig(), seed=0)
    assert set(v.split) == {"train", "val", "test"}
    assert (v.split[v.original_split == "train"] == "train").all()
    val_src, test_src = set(v.source_video[v.split == "val"]), set(v.source_video[v.split == "test"])
    assert val_src and test_src and not val_src & test_src                     # source-disjoint
    n = clips.source_video[clips.split == "val"].nunique()
    assert len(test_src) == round(0.5 * n)
    assert video_table(clips, TripletsConfig(), seed=0).equals(v)
    other = video_table(clips, TripletsConfig(), seed=1)
    assert set(other.source_video[other.split == "test"]) != test_src          # the draw follows the seed
    kept = video_table(clips, TripletsConfig(test_from_val=0.0), seed=0)
    assert set(kept.split) == {"train", "val"}


def _papermill(root, nb, run_dir, **params):
    args = [str(Path(sys.executable).parent / "papermill"), "--no-progress-bar", f"nbs/stages/{nb}.ipynb", str(run_dir / f"{nb}.ipynb")]
    for k, v in params.items(): args += ["-p", k, str(v)]
    r = subprocess.run(args, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_stage_chain_on_real_finediving(root, shared_data, tmp_path):
    clips = load_finediving(shared_data / "finediving")
    clips.to_parquet(tmp_path / "labels.parquet", index=False)
    params = {"seed": 0, "pairing": to_dict(PairingConfig()), "modify": to_dict(ModifyConfig()),
              "triplets": to_dict(TripletsConfig(train_max_per_pair=10))}
    params["modify"]["llm"]["cache_path"] = str(tmp_path / "modify_cache.jsonl")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p, f = tmp_path / "params.yaml", tmp_path / "figures"
    _papermill(root, "pairs", tmp_path, params_file=p, labels=tmp_path / "labels.parquet", out=tmp_path / "pairs.parquet",
               stats=tmp_path / "pairs.json", similarity_png=f / "similarity.png", pairs_per_label_png=f / "pairs_per_label.png")
    _papermill(root, "modifications", tmp_path, params_file=p, pairs=tmp_path / "pairs.parquet", out=tmp_path / "mods.parquet")
    _papermill(root, "triplets", tmp_path, params_file=p, labels=tmp_path / "labels.parquet", pairs=tmp_path / "pairs.parquet",
               modifications=tmp_path / "mods.parquet", out_dir=tmp_path / "triplets", csv_dir=tmp_path / "csv",
               stats=tmp_path / "stats.json", figure=f / "triplets.png")
    pairs, mods = pd.read_parquet(tmp_path / "pairs.parquet"), pd.read_parquet(tmp_path / "mods.parquet")
    assert len(pairs) == len(mods) > 0
    assert json.loads((tmp_path / "pairs.json").read_text())["pairs"] == len(pairs)
    st = json.loads((tmp_path / "stats.json").read_text())
    assert st["triplets"]["test"] == len(read_tfcovr_csv(tmp_path / "csv" / "test.csv")) > 0
    assert sorted(x.name for x in (tmp_path / "triplets").iterdir()) == ["report.json", "test.parquet", "train.parquet",
                                                                         "val.parquet", "videos.parquet"]
    assert sorted(x.name for x in f.iterdir()) == ["pairs_per_label.png", "similarity.png", "triplets.png"]

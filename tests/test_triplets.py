"""Triplets on the real label files: ground truths, source disjointness, files, the stage chain, and no leak: the labels
stage fixes every split, so no clip that Stage 1 trains or selects on is a retrieval-test video (SynthGym-like and real tables)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tfcovr.core import from_dict, to_dict
from tfcovr.data.fetch import real_labels_config
from tfcovr.data.labels import (LabelsConfig, SplitsConfig, action_classes, assign_splits, load_finediving, load_labels,
                                straddling_sources)
from tfcovr.data.modify import ModifyConfig, generate_modifications
from tfcovr.data.pairing import PairingConfig, build_pairs, label_attributes
from tfcovr.data.synth import default_config, plan_synth, write_annotations
from tfcovr.data.triplets import (EVAL_COLUMNS, TFCOVR_EVAL, TFCOVR_TRAIN, TRAIN_COLUMNS, TripletsConfig, build_triplets,
                                  export_tfcovr_csvs, gallery_videos, load_triplets, read_tfcovr_csv, triplet_stats, video_table,
                                  write_tfcovr_csv, write_triplets)
from tfcovr.train.stage1 import stage1_clips

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


def _pairs_and_mods(clips: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    "Label pairs between neighbouring labels of each dataset (both ways), with a placeholder modification text each."
    rows = []
    for _, g in clips.groupby("dataset"):
        ids = sorted(g.label_id.unique())
        rows += [(a, b) for a, b in zip(ids, ids[1:])] + [(b, a) for a, b in zip(ids, ids[1:])]
    text = clips.drop_duplicates("label_id").set_index("label_id").label
    pairs = pd.DataFrame(rows, columns=["query_label_id", "target_label_id"])
    pairs["query_label"], pairs["target_label"] = pairs.query_label_id.map(text), pairs.target_label_id.map(text)
    return pairs, pairs[["query_label_id", "target_label_id"]].assign(modification="show it otherwise", modification_type="other")


def _check_no_leak(final: pd.DataFrame, seed: int = 0, classes: tuple[str, ...] = ("all",)) -> pd.DataFrame:
    "Build the triplets of a labels table with final splits; assert that no Stage-1 clip is a test video. Returns the videos."
    pairs, mods = _pairs_and_mods(final)
    res = build_triplets(final, pairs, mods, TripletsConfig(train_max_per_pair=5), seed, progress=False)
    test = set(gallery_videos(res.videos, "test"))
    assert set(res.videos.dataset[res.videos.split == "test"]) == set(final.dataset)   # every dataset has retrieval-test videos
    assert res.videos.equals(video_table(final))
    for name in classes:                                                               # the clips Stage 1 trains and selects on
        s1 = stage1_clips(final, action_classes(final, name))
        assert len(s1.train) and len(s1.val) and not (set(s1.train.video_id) | set(s1.val.video_id)) & test, name
    assert straddling_sources(res.videos).empty                                        # no source video in two splits
    assert res.videos.set_index("video_id").split.sort_index().equals(final.set_index("video_id").split.astype(str).sort_index())
    assert (res.videos.original_split != res.videos.split).any()                       # the labels stage moved clips, the triplets kept them
    return res.videos


def _synth_tables(tmp: Path) -> dict[str, pd.DataFrame]:
    "SynthGym's annotations (no video rendered) read three ways: as rendered; as the real files come (FineGym train + val,"
    "FineDiving train + test); and so, with a val or test source video renamed after a train one, as the real splits share sources."
    cfg = default_config()
    write_annotations(plan_synth(cfg, 0), cfg, tmp, 0)
    files = {"datasets": ["finegym", "finediving"],
             "finegym": {"categories": "finegym/categories.txt", "set_categories": "finegym/set_categories.txt",
                         "splits": {s: f"finegym/{s}_element.txt" for s in ("train", "val", "test")}},
             "finediving": {"annotation_dir": "finediving", "splits": ["train", "val", "test"]}}
    rendered = load_labels(from_dict(LabelsConfig, files, "labels"), tmp)
    files["finegym"]["splits"].pop("test"); files["finediving"]["splits"] = ["train", "test"]
    published = load_labels(from_dict(LabelsConfig, files, "labels"), tmp)
    shared = published.copy()
    for ds, g in shared.groupby("dataset"):
        train = sorted(g.source_video[g.split == "train"].unique())
        other = sorted(g.source_video[g.split != "train"].unique())
        shared.loc[g.index, "source_video"] = g.source_video.replace({other[0]: train[0]})
    return {"rendered": rendered, "published": published, "shared": shared}


def test_no_stage1_clip_is_a_test_video_on_synthgym_like_tables(tmp_path):
    tables = _synth_tables(tmp_path)
    assert straddling_sources(tables["rendered"]).empty and not straddling_sources(tables["shared"]).empty
    rendered = assign_splits(tables["rendered"], SplitsConfig(), 0)
    assert (rendered.split == rendered.original_split).all()                      # three source-disjoint splits pass unchanged
    for name in ("published", "shared"):
        final = assign_splits(tables[name], SplitsConfig(), 0)
        _check_no_leak(final)
    kept = assign_splits(tables["shared"], SplitsConfig(exclusive_sources=False), 0)   # the datasets' own overlaps kept:
    with pytest.raises(AssertionError, match="straddling_sources"):                    # the check sees them
        _check_no_leak(kept)


def test_no_stage1_clip_is_a_test_video_on_the_real_files(shared_data):
    clips = load_labels(real_labels_config(), shared_data)
    for seed in (0, 1):
        videos = _check_no_leak(assign_splits(clips, SplitsConfig(), seed), seed, classes=("all", "paper"))
        gym_val = videos[(videos.dataset == "finegym") & (videos.split == "val")]
        assert len(gym_val) > 1000 and videos.split[videos.dataset == "finediving"].eq("val").sum() > 100


def _papermill(root, nb, run_dir, **params):
    args = [str(Path(sys.executable).parent / "papermill"), "--no-progress-bar", f"nbs/stages/{nb}.ipynb", str(run_dir / f"{nb}.ipynb")]
    for k, v in params.items(): args += ["-p", k, str(v)]
    r = subprocess.run(args, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_stage_chain_on_real_finediving(root, shared_data, tmp_path):
    clips = load_finediving(shared_data / "finediving")
    clips.to_parquet(tmp_path / "labels.parquet", index=False)
    params = {"seed": 0, "classes": "all", "data": yaml.safe_load((root / "params.yaml").read_text())["data"],
              "pairing": to_dict(PairingConfig()), "modify": to_dict(ModifyConfig()), "triplets": to_dict(TripletsConfig(train_max_per_pair=10))}
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

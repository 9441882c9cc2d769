"""Label extraction (tfcovr.data.labels) and label attributes (tfcovr.data.attributes) on the real annotation files,
the error cases on small files, and the `labels` stage run through papermill on a tiny benchmark."""
import collections
import functools
import importlib.resources
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfcovr.data.attributes import Attributes, add_attributes, diff_attributes, is_complete, parse_label
from tfcovr.data.fetch import real_labels_config
from tfcovr.data.labels import (FINEDIVING_ANNOTATION, FINEDIVING_TABLE, PAPER_CLASSES, SPLITS, LabelsConfig, SplitsConfig,
                                UnsafePickleError, action_classes, assign_splits, check_classes, label_table, load_finediving,
                                load_finegym, load_labels, paper_label_ids, read_label_ids, safe_load_pickle, straddling_sources)


@functools.lru_cache(maxsize=1)
def _real_clips(root: Path) -> pd.DataFrame: return load_labels(real_labels_config(), root)


@pytest.fixture
def real_clips(shared_data):
    "The clip table of the real annotations (read once per session)."
    return _real_clips(shared_data)


# ---- real files ---------------------------------------------------------------------------------------------

def test_real_finegym_counts(real_clips):
    g = real_clips[real_clips.dataset == "finegym"].groupby("split")
    assert g.size().to_dict() == {"train": 29334, "val": 9646}
    assert g.label_id.nunique().to_dict() == {"train": 288, "val": 288}
    assert g.source_video.nunique().to_dict() == {"train": 177, "val": 117}


def test_real_finediving_counts(real_clips):
    d = real_clips[real_clips.dataset == "finediving"]
    assert d.groupby("split").size().to_dict() == {"train": 2251, "test": 749}
    assert d.groupby("split").label_id.nunique().to_dict() == {"train": 52, "test": 44}
    assert d.source_video.nunique() == 135
    assert (d.video_key == d.source_video + "/" + d.video_id.str.rsplit("_", n=1).str[1]).all()
    assert d.event.value_counts().to_dict() == {"platform": 1824, "springboard": 1176}   # numbered folders too (dive_events)
    numbered = d[d.source_video.str.fullmatch(r"\d+")]
    assert len(numbered) == 1369 and numbered.event.value_counts().to_dict() == {"platform": 1024, "springboard": 345}
    assert numbered.groupby("source_video").event.nunique().to_dict()["26"] == 2      # a springboard event, then a platform one


def test_real_label_texts(real_clips):
    texts = real_clips.drop_duplicates("label_id").set_index("label_id").label
    assert texts["finegym/26"] == "(VT) tsukahara tucked"
    assert texts["finediving/107b"] == "Forward, 3.5 Soms.Pike, Entry"
    assert texts["finediving/612b"] == "Arm.Forward, 1 Som.Pike, Entry"  # not the '3.5 Twists' annotation slip
    assert real_clips.groupby("label_id").label.nunique().max() == 1
    assert real_clips.video_id.is_unique
    labels = label_table(real_clips)
    assert len(labels) == 340 and labels.n_clips.sum() == len(real_clips)


def test_real_labels_parse_completely(real_clips):
    labels = add_attributes(label_table(real_clips))
    assert labels.attr_complete.mean() >= 0.95
    assert set(labels.attr_discipline) == {"gymnastics", "diving"}
    gym = labels[labels.dataset == "finegym"]
    assert (gym.attr_event == gym.event).all()   # the text's event is the clip's event


def test_safe_load_pickle_reads_real_annotation(shared_data):
    ann = safe_load_pickle(shared_data / "finediving" / FINEDIVING_ANNOTATION)
    assert len(ann) == 3000
    v = ann[("01", 1)]
    assert isinstance(v["frames_labels"], np.ndarray) and v["action_type"] == "407c"


# ---- final splits -------------------------------------------------------------------------------------------

def test_real_splits_share_source_videos(real_clips):
    "The datasets' own splits share source videos: the reason the labels stage re-draws them by source video."
    shared = straddling_sources(real_clips)
    assert shared.groupby("dataset").size().to_dict() == {"finediving": 131, "finegym": 113}
    assert set(shared.splits) == {"train,val", "train,test"}


@pytest.mark.parametrize("seed", [0, 1])
def test_real_final_splits_are_source_disjoint_and_complete(real_clips, seed):
    final = assign_splits(real_clips, SplitsConfig(), seed)
    assert straddling_sources(final).empty
    assert (final.original_split == real_clips.split).all() and (final.video_id == real_clips.video_id).all()
    for ds, g in final.groupby("dataset"):
        assert set(g.split) == set(SPLITS), ds
        counts = g.split.value_counts(normalize=True)
        assert counts["train"] > 0.5 and counts["test"] > 0.1 and counts["val"] > 0.05, (ds, counts.to_dict())
    gym = final[final.dataset == "finegym"]                     # test is carved out of val: half its source videos
    n_eval = gym.source_video[gym.split != "train"].nunique()
    assert gym.source_video[gym.split == "test"].nunique() == round(0.5 * n_eval)
    dive = final[final.dataset == "finediving"]                 # val is carved out of train: a fifth of its source videos
    assert dive.source_video[dive.split == "val"].nunique() == round(0.2 * dive.source_video[dive.split != "test"].nunique())
    assert assign_splits(real_clips, SplitsConfig(), seed).equals(final)
    assert assign_splits(final, SplitsConfig(), seed).equals(final)       # from original_split: the same draw


def test_splits_keep_the_datasets_own_when_told(real_clips):
    own = assign_splits(real_clips, SplitsConfig(exclusive_sources=False, val_from_train=0.0, test_from_val=0.0), 0)
    assert (own.split == real_clips.split).all()
    carved = assign_splits(real_clips, SplitsConfig(exclusive_sources=False), 0)  # carving alone moves whole source videos
    gym = carved[(carved.dataset == "finegym") & (carved.original_split == "val")]
    assert set(gym.split) == {"val", "test"} and (gym.groupby("source_video").split.nunique() == 1).all()
    assert not straddling_sources(carved).empty                                  # but the datasets' own overlaps remain


def test_a_draw_that_empties_a_split_gives_it_a_source_back():
    rows = [("d", f"s{k}", "train", 9) for k in range(4)] + [("d", f"s{k}", "test", 1) for k in range(4)]
    clips = pd.DataFrame([{"dataset": ds, "split": sp, "video_id": f"{src}_{sp}_{i}", "source_video": src}
                          for ds, src, sp, n in rows for i in range(n)])
    for seed in range(5):
        final = assign_splits(clips, SplitsConfig(val_from_train=0.0), seed)
        assert straddling_sources(final).empty and set(final.split) == {"train", "test"}, seed


# ---- errors -------------------------------------------------------------------------------------------------

@pytest.fixture
def gym_files(tmp_path):
    (tmp_path / "cats.txt").write_text("Clabel:   0; set:  1; Glabel:   0; (VT) tsukahara tucked\n"
                                       "Clabel:   1; set: 21; Glabel:   5; (FX) split leap with 1 turn\n")
    (tmp_path / "train.txt").write_text("abcdefghijk_E_000010_000020_A_0001_0003 0\nabcdefghijk_E_000010_000020_A_0004_0006 1\n")
    return tmp_path


def test_finegym_malformed_line_names_file_and_line(gym_files):
    (gym_files / "bad.txt").write_text("abcdefghijk_E_000010_000020_A_0001_0003 0\n\nabcdefghijk_E_10_20_A_1_3 1\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: malformed clip line"):
        load_finegym(gym_files / "cats.txt", {"train": gym_files / "bad.txt"})
    (gym_files / "bad_cats.txt").write_text("Clabel: 0; set: 1; Glabel: 0; (VT) a\nClabel: x; set: 1; Glabel: 1; (VT) b\n")
    with pytest.raises(ValueError, match=r"bad_cats\.txt:2: malformed category line"):
        load_finegym(gym_files / "bad_cats.txt", {"train": gym_files / "train.txt"})


def test_finegym_unknown_label_id(gym_files):
    (gym_files / "bad.txt").write_text("abcdefghijk_E_000010_000020_A_0001_0003 0\nabcdefghijk_E_000010_000020_A_0004_0006 7\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: unknown label id 7"):
        load_finegym(gym_files / "cats.txt", {"train": gym_files / "bad.txt"})


def test_finegym_small(gym_files):
    df = load_finegym(gym_files / "cats.txt", {"train": gym_files / "train.txt"})
    assert df.label_id.tolist() == ["finegym/0", "finegym/1"]
    assert df.event.tolist() == ["VT", "FX"] and df.source_video.tolist() == ["abcdefghijk"] * 2
    assert df.action_start.tolist() == [1, 4]


def test_refused_pickles_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self): return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused to load the global posix\.system"):
        safe_load_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "od.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=np.arange(2))))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        safe_load_pickle(tmp_path / "od.pkl")


def write_diving(d: Path, splits: dict, ann: dict | None = None):
    d.mkdir(parents=True, exist_ok=True)
    ann = ann or {("Women10m_final", i): {"action_type": "107b", "difficulty": 3.0, "dive_score": 60.0,
                                          "sub-action_types": {np.int64(1): "Forward", np.int64(17): "3.5 Soms.Pike", np.int64(36): "Entry"},
                                          "frames_labels": np.array([1, 17, 36])} for i in range(1, 4)}
    (d / FINEDIVING_ANNOTATION).write_bytes(pickle.dumps(ann))
    (d / FINEDIVING_TABLE).write_bytes(pickle.dumps({1: "Forward", 17: "3.5 Soms.Pike", 36: "Entry"}))
    for s, keys in splits.items(): (d / f"{s}_split.pkl").write_bytes(pickle.dumps(keys))


def test_finediving_split_key_missing_from_annotation(tmp_path):
    write_diving(tmp_path, {"train": [("Women10m_final", 1)], "test": [("Women10m_final", 9)]})
    with pytest.raises(ValueError, match=r"test_split\.pkl: key \('Women10m_final', 9\) is not in"):
        load_finediving(tmp_path)


def test_finediving_refuses_unsafe_split(tmp_path):
    write_diving(tmp_path, {"train": collections.OrderedDict()})
    with pytest.raises(UnsafePickleError, match=r"train_split\.pkl"):
        load_finediving(tmp_path)


# ---- the published model's classes ---------------------------------------------------------------------------

MISSING_GYM = [24, 26, 39, 50, 64, 72, 74, 75, 79, 80, 87, 96, 130, 131, 132, 149, 157, 164, 190, *range(199, 207), 261, 265]
MISSING_DIVES = ["201a", "201b", "201c", "301b", "305b"]


def _shipped_rows() -> list[list[str]]:
    "The data lines of the shipped class list, split at tabs."
    text = (importlib.resources.files("tfcovr.data") / PAPER_CLASSES).read_text(encoding="utf-8")
    return [l.split("\t") for l in text.splitlines() if l.strip() and not l.startswith("#")]


def test_paper_label_ids():
    ids = paper_label_ids()
    assert len(ids) == 306 and len(set(ids)) == 306
    assert collections.Counter(i.split("/")[0] for i in ids) == {"finegym": 259, "finediving": 47}
    assert ids[:259] == [i for i in ids if i.startswith("finegym/")]                # gym288 first, as in label2index
    gym = {int(i.split("/")[1]) for i in ids if i.startswith("finegym/")}
    assert gym == set(range(288)) - set(MISSING_GYM)
    assert not {f"finediving/{d}" for d in MISSING_DIVES} & set(ids)
    rows = _shipped_rows()
    assert len(rows) == 306
    assert ids[0] == f"{rows[0][1]}/{rows[0][2]}" == "finegym/0"
    assert ids[-1] == f"{rows[-1][1]}/{rows[-1][2]}" == "finediving/5233d"
    assert [int(r[0]) for r in rows] == list(range(306))


def test_paper_classes_have_provenance():
    text = (importlib.resources.files("tfcovr.data") / PAPER_CLASSES).read_text(encoding="utf-8")
    header = "\n".join(l for l in text.splitlines() if l.startswith("#"))
    assert "TF-CoVR" in header and "AIM_Embeddings/src/data/data.py" in header


def test_shipped_classes_equal_the_shared_list(shared_data):
    "The package's list equals the class list beside the real label files, line for line (when that folder has it)."
    f = shared_data / PAPER_CLASSES
    if not f.is_file(): pytest.skip(f"{f}: not in this labels folder")
    assert read_label_ids(f) == paper_label_ids()


def test_action_classes(real_clips):
    assert action_classes(real_clips) == sorted(real_clips.label_id.unique()) and len(action_classes(real_clips)) == 340
    assert action_classes(real_clips, "paper") == paper_label_ids()
    toy = pd.DataFrame({"video_id": ["a"], "label_id": ["toy/up"]})
    with pytest.raises(ValueError, match="none of the published model's 306 classes is a label of the table"):
        action_classes(toy, "paper")
    with pytest.raises(ValueError, match="classes: 'paper' lists the published model's FineGym and FineDiving classes, "
                                         "and data.source 'synth' has labels of its own"):
        check_classes("paper", "synth")
    check_classes("paper", "real")


def test_paper_label_ids_are_real_labels(real_clips):
    ids = paper_label_ids()
    assert set(ids) <= set(real_clips.label_id)
    assert set(real_clips.label_id) - set(ids) == ({f"finegym/{c}" for c in MISSING_GYM} | {f"finediving/{d}" for d in MISSING_DIVES})
    assert real_clips[real_clips.label_id.isin(ids)].label_id.nunique() == 306


@pytest.mark.parametrize("text,msg", [
    ("0\tfinegym\t3\n2\tfinegym\t4\n", r"list\.txt:2: index '2', expected 1"),
    ("0\tfinegym\t3\n1\tfinegym\t3\n", r"list\.txt:2: class finegym/3 listed twice \(first on line 1\)"),
    ("0\tfinediving\t10x\n", r"list\.txt:1: '10x' is not a FINA dive number"),
    ("0\tucf101\t3\n", r"list\.txt:1: unknown dataset 'ucf101'"),
    ("0\tfinegym\t-3\n", r"list\.txt:1: '-3' is not a FineGym Clabel"),
    ("0,finegym,3\n", r"list\.txt:1: malformed class line"),
    ("# nothing\n", r"list\.txt: no classes"),
])
def test_read_label_ids_errors_name_file_and_line(tmp_path, text, msg):
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(ValueError, match=msg):
        read_label_ids(tmp_path / "list.txt")


# ---- attributes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("(FX) salto backward stretched with 3.5 twist",
     Attributes("gymnastics", "FX", "salto", "backward", turns=3.5, somersaults=1.0, position="straight")),
    ("(VT) round-off, flic-flac with 1 turn on, piked salto backward off",
     Attributes("gymnastics", "VT", "round-off", "backward", turns=0.0, somersaults=1.0, position="pike", entry_turns=1.0)),
    ("(UB) stalder forward with 0.5 turn to handstand",
     Attributes("gymnastics", "UB", "stalder", "forward", turns=0.5, detail="to handstand")),
    ("(BB) 2.5 turn in tuck stand on one leg, free leg optional",
     Attributes("gymnastics", "BB", "turn", turns=2.5, detail="in tuck stand on one leg, free leg optional")),
    ("Arm.Back, 1.5 Twists, 2 Soms.Pike, Entry",
     Attributes("diving", None, "armstand dive", "backward", twists=1.5, somersaults=2.0, position="pike")),
])
def test_parse_label(text, want):
    got = parse_label(text)
    assert got == want, diff_attributes(got, want)
    assert is_complete(got)


def test_diff_attributes_names_the_change():
    a, b = parse_label("(FX) double salto backward tucked with 1 twist"), parse_label("(FX) double salto backward tucked with 2 twist")
    assert diff_attributes(a, b) == {"turns": (1.0, 2.0)}


# ---- stage --------------------------------------------------------------------------------------------------

def _stage_inputs(tmp_path: Path, gym_files: Path, on_missing: str = "error") -> Path:
    "A tiny benchmark (4 FineGym clips, 3 dives) whose every clip is a one-frame JPEG folder; returns its params file."
    write_diving(tmp_path / "fd", {"train": [("Women10m_final", 1), ("Women10m_final", 2)], "val": [("Women10m_final", 3)]})
    (gym_files / "val.txt").write_text("bbbbbbbbbbb_E_000010_000020_A_0001_0003 1\nccccccccccc_E_000010_000020_A_0001_0003 0\n")
    keys = [("clips", l.split()[0]) for f in ("train.txt", "val.txt") for l in (gym_files / f).read_text().splitlines()]
    for root, key in keys + [("fd", f"Women10m_final/{i}") for i in (1, 2, 3)]:
        (tmp_path / root / key).mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(tmp_path / root / key / "00001.jpg")
    (tmp_path / "params.yaml").write_text(f"""
seed: 0
data:
  source: real
  root: {tmp_path}
  labels:
    real: &files
      datasets: [finegym, finediving]
      finegym:
        categories: {gym_files / 'cats.txt'}
        set_categories: null
        splits: {{train: {gym_files / 'train.txt'}, val: {gym_files / 'val.txt'}}}
      finediving:
        annotation_dir: {tmp_path / 'fd'}
        splits: [train, val]
    synth: *files
  videos:
    real: {{finegym: {tmp_path / 'clips'}, finediving: {tmp_path / 'fd'}}}
    synth: {{finegym: {tmp_path / 'clips'}, finediving: {tmp_path / 'fd'}}}
  splits: {{exclusive_sources: true, val_from_train: 0.2, test_from_val: 0.5}}
  on_missing: {on_missing}
""")
    return tmp_path / "params.yaml"


def _run_stage(root: Path, tmp_path: Path, params: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "papermill"), "--no-progress-bar", "nbs/stages/labels.ipynb",
                           str(tmp_path / "executed.ipynb"), "-p", "params_file", str(params), "-p", "out", str(tmp_path / "labels.parquet"),
                           "-p", "dropped", str(tmp_path / "dropped.json"), "-p", "workers", "2"], cwd=root, capture_output=True, text=True)


def test_labels_stage_writes_parquet(root, tmp_path, gym_files):
    r = _run_stage(root, tmp_path, _stage_inputs(tmp_path, gym_files))
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "labels.parquet")
    assert len(df) == 7
    assert df.groupby(["dataset", "original_split"]).size().to_dict() == {
        ("finediving", "train"): 2, ("finediving", "val"): 1, ("finegym", "train"): 2, ("finegym", "val"): 2}
    gym = df[df.dataset == "finegym"].set_index("source_video").split
    assert gym["abcdefghijk"].tolist() == ["train", "train"]                     # FineGym's test: one of its two val videos
    assert sorted(gym[["bbbbbbbbbbb", "ccccccccccc"]]) == ["test", "val"]
    assert df[df.dataset == "finediving"].split.nunique() == 1                  # one competition: in one split, wholly
    assert straddling_sources(df).empty
    assert df.set_index("video_id").loc["Women10m_final_3", ["video_key", "event", "attr_somersaults"]].tolist() == \
        ["Women10m_final/3", "platform", 3.5]
    assert df.attr_complete.all()
    assert not list(tmp_path.glob(".labels*"))   # no temporary file left behind
    report = json.loads((tmp_path / "dropped.json").read_text())
    assert (report["checked"], report["dropped"], report["clips"]) == (7, 0, [])


def test_labels_stage_missing_clips(root, tmp_path, gym_files):
    "A missing and a corrupt clip: `error` stops the stage naming both; `drop` builds without them and lists them."
    params = _stage_inputs(tmp_path, gym_files)
    gone, bad = "bbbbbbbbbbb_E_000010_000020_A_0001_0003", tmp_path / "fd" / "Women10m_final" / "2" / "00001.jpg"
    shutil.rmtree(tmp_path / "clips" / gone)
    bad.write_bytes(b"not a jpeg")
    r = _run_stage(root, tmp_path, params)
    assert r.returncode != 0 and not (tmp_path / "labels.parquet").exists()
    assert f"MissingVideosError: 2 of 7 clips are missing or unreadable (the full list: {tmp_path / 'dropped.json'})" in r.stdout + r.stderr
    assert json.loads((tmp_path / "dropped.json").read_text())["missing_or_unreadable"] == 2
    params.write_text(params.read_text().replace("on_missing: error", "on_missing: drop"))
    r = _run_stage(root, tmp_path, params)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "labels.parquet")
    assert len(df) == 5 and not {gone, "Women10m_final_2"} & set(df.video_id)
    report = json.loads((tmp_path / "dropped.json").read_text())
    assert {k: report[k] for k in ("on_missing", "checked", "dropped")} == {"on_missing": "drop", "checked": 7, "dropped": 2}
    assert report["counts"] == {"dataset": {"finediving": 1, "finegym": 1}, "split": {"train": 1, "val": 1},
                                "reason": {"missing": 1, "unreadable": 1}}
    assert [(c["video_key"], c["dataset"], c["split"], c["label"], c["reason"]) for c in report["clips"]] == [
        (gone, "finegym", "val", "(FX) split leap with 1 turn", "missing"),
        ("Women10m_final/2", "finediving", "train", "Forward, 3.5 Soms.Pike, Entry", "unreadable")]
    assert report["clips"][1]["path"] == str(bad.parent) and report["clips"][1]["problem"].startswith("00001.jpg: corrupt JPEG frame")

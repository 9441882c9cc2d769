"""SynthGym: files in the real datasets' formats, decodable clips, determinism, source-disjoint splits, and the
sampling property (labels differing by whole rotations agree on their first and last frames, yet every pair of
labels differs in the frames a model samples)."""
import dataclasses
import itertools
import json
import pickle
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest
import yaml

from tfcovr.core import ParamsError, load_params, to_dict
from tfcovr.data.render import MAIN, MAIN_JITTER, PRE, PRE_JITTER, MIN_POST, Look, motion_angles, render_video
from tfcovr.data.video import segment_indices
from tfcovr.data.synth import (ACTIONS, SUB_ACTIONS, VOCAB, SynthConfig, build_synth, default_config,
                          differences, plan_synth, sampled_frames, tiny_config, whole_rotation_pair)

CATEGORY = re.compile(r"^Clabel:\s*(\d+);\s*set:\s*(\d+);\s*Glabel:\s*(\d+);\s*\((VT|FX|BB|UB)\) (.+)$")
SET_LINE = re.compile(r"^set:\s*(\d+);\s*(\S+)$")
CLIP_LINE = re.compile(r"^([A-Za-z0-9_-]{11})_E_(\d{6})_(\d{6})_A_(\d{4})_(\d{4}) (\d+)$")
SPLITS = ("train", "val", "test")


class _Restricted(pickle.Unpickler):
    "Numpy array reconstruction and builtins only (scalars too when `scalars`)."
    def __init__(self, f, scalars: bool = False):
        super().__init__(f)
        self.allowed = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                        ("numpy._core.multiarray", "_reconstruct")}
        if scalars: self.allowed |= {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.allowed: raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path, scalars=False):
    with open(path, "rb") as f: return _Restricted(f, scalars).load()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "The tiny benchmark, built once for this module."
    out = tmp_path_factory.mktemp("synth") / "synth"
    manifest = build_synth(tiny_config(), out, seed=0, progress=False)
    return out, manifest


def test_finegym_files_parse(built):
    root, man = built
    gym = [a for a in tiny_config().actions() if a.dataset == "finegym"]
    cats = [CATEGORY.match(l) for l in (root / "finegym" / "categories.txt").read_text().splitlines()]
    assert all(cats) and [int(m[1]) for m in cats] == list(range(len(gym)))
    assert [f"({m[4]}) {m[5]}" for m in cats] == [a.text for a in gym]
    sets = dict(SET_LINE.match(l).groups() for l in (root / "finegym" / "set_categories.txt").read_text().splitlines())
    assert {m[2] for m in cats} == set(sets)
    listed = {}
    for split in SPLITS:
        for line in (root / "finegym" / f"{split}_element.txt").read_text().splitlines():
            m = CLIP_LINE.match(line)
            assert m, line
            assert int(m[2]) < int(m[3]) and int(m[4]) < int(m[5]) <= int(m[3]) - int(m[2])
            listed[line.split()[0]] = (split, int(m[6]))
            assert (root / "finegym" / "videos" / f"{line.split()[0]}.mp4").is_file()
    videos = [v for v in man["videos"] if v["dataset"] == "finegym"]
    assert listed == {v["id"]: (v["split"], v["class"]) for v in videos}


def test_gym_wording_is_finegyms(shared_data):
    "Every gymnastics label is a real gym288 class: same text, element set and global label."
    real = {}
    for line in (shared_data / "finegym" / "gym288_categories.txt").read_text().splitlines():
        m = re.match(r"^Clabel:\s*\d+;\s*set:\s*(\d+);\s*Glabel:\s*(\d+);\s*(.*?)\s*$", line)
        real.setdefault(m[3], set()).add((int(m[1]), int(m[2])))    # a text can recur in two sets
    for a in VOCAB:
        if a.dataset == "finegym": assert (a.set_id, a.glabel) in real.get(a.text, ()), a.text


def test_finediving_files(built, shared_data):
    root, man = built
    fd = root / "finediving"
    ann = load_pickle(fd / "FineDiving_fine-grained_annotation.pkl")        # builtins and arrays only
    table = load_pickle(fd / "Sub_action_Types_Table.pkl")
    assert table == SUB_ACTIONS == load_pickle(shared_data / "finediving" / "Sub_action_Types_Table.pkl", scalars=True)
    real = load_pickle(shared_data / "finediving" / "FineDiving_fine-grained_annotation.pkl", scalars=True)
    real_value = next(iter(real.values()))
    keys = {s: load_pickle(fd / f"{s}_split.pkl") for s in SPLITS}
    assert sorted(k for ks in keys.values() for k in ks) == sorted(ann)
    dives = {v["id"]: v for v in man["videos"] if v["dataset"] == "finediving"}
    for (folder, idx), v in ann.items():
        assert isinstance(folder, str) and type(idx) is int
        assert list(v) == list(real_value)                                   # the real record's fields, in order
        rec = dives[f"{folder}/{idx}"]
        assert (folder, idx) in keys[rec["split"]] and v["action_type"] == rec["class"]
        fl = v["frames_labels"]
        assert fl.dtype == np.int64 and fl.shape == (rec["num_frames"],)
        assert list(v["sub-action_types"]) == list(dict.fromkeys(fl.tolist()))
        assert all(table[i] == n for i, n in v["sub-action_types"].items())
        assert ", ".join(v["sub-action_types"].values()) == man["labels"][rec["label"]]["text"]
        assert v["steps_transit_frames"].tolist() == [i for i in range(len(fl) - 1) if fl[i] != fl[i + 1]]
        assert isinstance(v["dive_score"], float) and isinstance(v["difficulty"], float)
        assert (root / rec["path"]).is_file() and len(list((root / rec["frames"]).glob("*.jpg"))) == rec["num_frames"]


def test_dive_wording_is_finedivings(shared_data):
    "Each dive's sub-action names are the ones FineDiving annotates most often for that dive number."
    real = load_pickle(shared_data / "finediving" / "FineDiving_fine-grained_annotation.pkl", scalars=True)
    seqs = {}
    for v in real.values(): seqs.setdefault(v["action_type"], Counter())[tuple(v["sub-action_types"].values())] += 1
    checked = 0
    for a in VOCAB:
        if a.dataset == "finediving" and a.dive_number in seqs and a.position != "straight":  # FineDiving names 201a "Pike"
            assert ", ".join(seqs[a.dive_number].most_common(1)[0][0]) == a.text, a.dive_number
            checked += 1
    assert checked >= 7


def test_label_loaders_and_parser_read_synthgym(built):
    "The project's own loaders read SynthGym as they read the real files, and its parser recovers the true attributes."
    labels = pytest.importorskip("tfcovr.data.labels")
    attributes = pytest.importorskip("tfcovr.data.attributes")
    root, man = built
    gym = labels.load_finegym(root / "finegym" / "categories.txt",
                              {s: root / "finegym" / f"{s}_element.txt" for s in SPLITS}, root / "finegym" / "set_categories.txt")
    dive = labels.load_finediving(root / "finediving")
    assert len(gym) + len(dive) == man["counts"]["videos"]
    truth = {v["id"]: man["labels"][v["label"]]["text"] for v in man["videos"]}
    assert all(truth[k] == t for k, t in zip(list(gym.video_key) + list(dive.video_key), list(gym.label) + list(dive.label)))
    assert set(dive.event) == {"springboard", "platform"}
    for a in VOCAB:
        p = attributes.parse_label(a.text)
        got = {"event": p.event, "direction": p.direction, "position": p.position, "somersaults": p.somersaults,
               "twists": p.turns if a.dataset == "finegym" else p.twists}
        assert got == {k: a.attributes()[k] for k in got}, a.name


def test_clips_decode(built):
    root, man = built
    cfg = tiny_config()
    for v in man["videos"]:
        vr = decord.VideoReader(str(root / v["path"]))
        assert len(vr) == cfg.num_frames and vr[0].shape == (cfg.frame_size, cfg.frame_size, 3), v["path"]


def test_clips_are_written_by_the_one_mp4_writer(built):
    "SynthGym encodes with `tfcovr.data.video.write_mp4`, whose fixed x264 settings make its bytes reproducible."
    import tfcovr.data.render, tfcovr.data.synth, tfcovr.data.video
    assert tfcovr.data.synth.write_mp4 is tfcovr.data.video.write_mp4 and not hasattr(tfcovr.data.render, "write_mp4")
    root, man = built
    for v in man["videos"][:3]:
        data = (root / v["path"]).read_bytes()
        assert b"mbtree=0" in data and b"threads=1" in data and b"crf=18.0" in data, v["path"]


def test_splits_are_source_disjoint(built):
    root, man = built
    split_of = {}
    for v in man["videos"]: assert split_of.setdefault(v["source"], v["split"]) == v["split"], v["source"]
    gym = {s: {l.split()[0][:11] for l in (root / "finegym" / f"{s}_element.txt").read_text().splitlines()} for s in SPLITS}
    dive = {s: {k[0] for k in load_pickle(root / "finediving" / f"{s}_split.pkl")} for s in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not gym[a] & gym[b] and not dive[a] & dive[b]
    # the default plan too (no rendering needed): every label has >= 5 test clips
    plan = plan_synth(default_config(), 0)
    for a, b in itertools.combinations(SPLITS, 2):
        assert not {c.source for c in plan if c.split == a} & {c.source for c in plan if c.split == b}
    assert min(Counter(c.label for c in plan if c.split == "test").values()) >= 5


def test_same_seed_same_bytes(built, tmp_path):
    "A rebuild, here in two processes, gives the same files byte for byte."
    root, man = built
    again = tmp_path / "again"
    man2 = build_synth(dataclasses.replace(tiny_config(), workers=2), again, seed=0, progress=False)
    assert man2["config"].pop("workers") == 2 and man["config"]["workers"] == 1
    assert man2 == {**man, "config": {k: v for k, v in man["config"].items() if k != "workers"}}
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len(files) > 100 and files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file() and p.name != "manifest.json")
    for f in files: assert (root / f).read_bytes() == (again / f).read_bytes(), f
    other = {c.id for c in plan_synth(tiny_config(), 1) if c.dataset == "finegym"}   # another seed, other sources
    assert other.isdisjoint({v["id"] for v in man["videos"]})


def test_manifest_attributes(built):
    root, man = built
    assert json.loads((root / "manifest.json").read_text()) == man
    assert man["config"] == to_dict(tiny_config()) and man["counts"]["videos"] == len(man["videos"])
    for name, rec in man["labels"].items():
        assert {k: rec[k] for k in ACTIONS[name].attributes()} == ACTIONS[name].attributes()


@pytest.mark.parametrize("n", [8, 12])
def test_every_label_pair_differs_in_sampled_frames(n):
    "Nuisance-free, the n segment-centre frames of any two labels differ in at least 100 pixels."
    for board in ("3m", "10m"):
        seq = {a.name: sampled_frames(a.name, n, 40, 64, board).astype(np.int16) for a in VOCAB}
        for a, b in itertools.combinations(VOCAB, 2):
            changed = (np.abs(seq[a.name] - seq[b.name]).max(-1) > 40).sum()
            assert changed >= 100, (a.name, b.name, changed)


def test_whole_rotations_share_first_and_last_frame():
    pairs = [(a, b) for a, b in itertools.combinations(VOCAB, 2) if whole_rotation_pair(a, b)]
    assert len(pairs) >= 10
    for a, b in pairs:
        for board in ("3m", "10m"):
            sa, sb = (board if x.dataset == "finediving" else x.event for x in (a, b))
            fa, fb = (render_video(x.motion, s, Look(), 40, 64, frames=[0, 39]) for x, s in ((a, sa), (b, sb)))
            assert np.array_equal(fa, fb), (a.name, b.name)


def test_event_position_direction_visible_in_one_frame():
    "Pairs that differ in event, position or direction already differ in the centre frame alone."
    single = {a.name: sampled_frames(a.name, 1, 40, 64).astype(np.int16) for a in VOCAB}
    pairs = [(a, b) for a, b in itertools.combinations(VOCAB, 2)
             if len(differences(a, b)) == 1 and differences(a, b)[0] in ("event", "position", "direction")]
    assert {differences(a, b)[0] for a, b in pairs} == {"event", "position", "direction"}
    for a, b in pairs: assert (np.abs(single[a.name] - single[b.name]).max(-1) > 40).sum() >= 30, (a.name, b.name)


def test_rotation_between_sampled_frames_stays_below_120_degrees():
    "For every clip of the default plan, with its own timing, at 8 and 12 sampled frames."
    cfg = default_config()
    extremes = [Look(pre=p, main=m) for p in (PRE - PRE_JITTER, PRE + PRE_JITTER)
                for m in (MAIN - MAIN_JITTER, min(MAIN + MAIN_JITTER, 1 - MIN_POST - p))]
    looks = [(c.label, c.look) for c in plan_synth(cfg, 0)] + [(a.name, l) for a in VOCAB for l in extremes]
    worst = 0.0
    for name, look in looks:
        theta, phi = motion_angles(ACTIONS[name].motion, look, cfg.num_frames)
        for n in (8, 12):
            idx = segment_indices(cfg.num_frames, n, mode="center")
            worst = max(worst, np.abs(np.diff(theta[idx])).max(), np.abs(np.diff(phi[idx])).max())
    assert 90 < worst <= 120


def test_config_from_params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 3\nsynth:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in to_dict(tiny_config()).items()))
    ps = load_params(p, {"seed": int, "synth": SynthConfig}, strict=False)
    assert ps["seed"] == 3 and ps["synth"] == tiny_config()
    p.write_text(p.read_text().replace("num_frames: 16", "num_frames: 13"))
    with pytest.raises(ParamsError, match="synth: label FX_dsalto_b_tuck turns up to"): load_params(p, {"synth": SynthConfig}, strict=False)


def test_stage_notebook_runs(root, tmp_path):
    p = tmp_path / "params.yaml"
    data = yaml.safe_load((root / "params.yaml").read_text())["data"]          # the project's data section (source synth)
    p.write_text(yaml.safe_dump({"seed": 0, "data": {**data, "source": "synth"}, "synth": to_dict(tiny_config())}))
    out, report = tmp_path / "synth", tmp_path / "synth.json"
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), "--no-progress-bar", "nbs/stages/synth.ipynb",
                        str(tmp_path / "executed.ipynb"), "-p", "params_file", str(p), "-p", "out_dir", str(out),
                        "-p", "report", str(report), "-p", "figure", str(tmp_path / "synth.png")],
                       cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(report.read_text())
    assert rec["counts"]["videos"] == 36 and rec["render_seconds"] > 0
    assert (out / "manifest.json").is_file() and (tmp_path / "synth.png").stat().st_size > 0

"""Stage 1 end to end on toy clips: exact resume in a new process, two-process DDP with Gloo, errors that name the video, the
clips it reads (train and val only), a given class list, and the switches of the paper's recipe at scale: centre training
frames, the published extractor's frames, the resize filter and fit, the clip-cache decision, a resume that refuses another run, and the effective batch."""
import dataclasses
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
from safetensors.torch import load_file

from tfcovr.models.aim import AIMConfig
from tfcovr.toys import toy_clips
from tfcovr.models.io import ModelFileError
from tfcovr.core import TMPDIR_ENV, derive_seed, seed_everything, to_dict
from tfcovr.models.aim import load_stage1
from tfcovr.train.clips import ClipDataset
from tfcovr.train.stage1 import Stage1Config, plan_clip_cache, predict_stage1, stage1_clips, train_stage1, validate
from tfcovr.data.video import VideoError, load_clip, segment_indices, video_length, write_mp4

ROOT = Path(__file__).resolve().parents[1]

# Runs train_stage1 from a JSON config; each rank writes the digest of its final weights.
SCRIPT = """
import json, os, sys
from pathlib import Path
import pandas as pd
from tfcovr.core import from_dict
from tfcovr.train.stage1 import Stage1Config, train_stage1
cfg = from_dict(Stage1Config, json.loads(Path(sys.argv[1]).read_text()))
res = train_stage1(cfg, pd.read_parquet(sys.argv[2]), sys.argv[3], sys.argv[4], seed=0,
                   stop_after=json.loads(sys.argv[5]), progress=False)
Path(sys.argv[4], f"rank{os.environ.get('RANK', '0')}.sha").write_text(res.weights_sha256)
"""


def cfg(**kw) -> Stage1Config:
    return Stage1Config(AIMConfig("aim-tiny", num_frames=4), **{**dict(epochs=2, batch_size=2, grad_accum=2, lr=2e-3,
                        warmup_epochs=0.5, hflip=False, device="cpu", amp="none"), **kw})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    "Toy clips of four motion directions (3 train, 1 val each) and their labels table on disk."
    root = tmp_path_factory.mktemp("toy")
    labels = toy_clips(root / "videos", classes=("down", "up", "right", "left"), per_split={"train": 3, "val": 1})
    labels.to_parquet(root / "labels.parquet")
    return root, labels


def run_script(tmp: Path, c: Stage1Config, toy_root: Path, out: Path, stop_after, nproc: int = 1) -> subprocess.CompletedProcess:
    script, conf = tmp / "train.py", tmp / f"cfg_{out.name}.json"
    script.write_text(SCRIPT); conf.write_text(json.dumps(to_dict(c)))
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": "1"} if nproc > 1 else {})}  # one process: same threads as here
    return subprocess.run([*launch, str(script), str(conf), str(toy_root / "labels.parquet"), str(toy_root / "videos"), str(out),
                           json.dumps(stop_after)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_resume_in_a_new_process_gives_the_weights_of_a_straight_run(toy, tmp_path):
    root, labels = toy
    c = cfg()
    straight = train_stage1(c, labels, root / "videos", tmp_path / "straight", seed=0, progress=False)
    p = run_script(tmp_path, c, root, tmp_path / "resumed", stop_after=1)                # epoch 1 in another process
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "resumed" / "history.tsv", sep="\t")) == 1
    resumed = train_stage1(c, labels, root / "videos", tmp_path / "resumed", seed=0, progress=False)   # epoch 2 here
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.weights_sha256 == straight.weights_sha256
    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seed_everything(derive_seed(0, "stage1", "init"))
    init = c.model.build(4).state_dict()                                                # training moved the weights
    assert not torch.equal(a["head.weight"], init["head.weight"])
    h = pd.read_csv(tmp_path / "resumed" / "history.tsv", sep="\t")
    assert list(h.columns[:6]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert h.lr.iloc[-1] < 0.2 * c.lr < h.lr.iloc[0]                                       # cosine decays to ~0


def test_two_processes_with_gloo_end_with_identical_weights(toy, tmp_path):
    root, labels = toy
    c = cfg(epochs=1, grad_accum=1)
    out = tmp_path / "ddp"
    p = run_script(tmp_path, c, root, out, stop_after=None, nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    shas = [(out / f"rank{r}.sha").read_text() for r in (0, 1)]
    assert shas[0] == shas[1]
    model, meta = load_stage1(out, which="last")
    assert meta["world_size"] == 2 and meta["epoch"] == 1
    assert json.loads((out / "metrics.json").read_text())["effective_batch"] == 2 * 1 * 2   # batch x accumulation x processes
    with pytest.raises(ValueError, match=r"holds a checkpoint of another run \(world_size: 2 -> 1\): to discard its 1 epoch"):
        train_stage1(c, labels, root / "videos", out, seed=0, progress=False)          # one process: another run
    assert load_stage1(out, which="last")[1]["world_size"] == 2                       # ... left alone
    h = pd.read_csv(out / "history.tsv", sep="\t")
    assert len(h) == 1 and h.val_acc.iloc[0] in {0.0, 0.25, 0.5, 0.75, 1.0}               # 4 val clips, counted once
    single = train_stage1(c, labels, root / "videos", tmp_path / "single", seed=0, progress=False)
    assert single.weights_sha256 != shas[0]                                              # 2 x 2 clips per step is another run


def test_a_corrupt_training_video_is_named(toy, tmp_path):
    root, labels = toy
    videos = tmp_path / "videos"
    videos.mkdir()
    for f in (root / "videos").iterdir(): (videos / f.name).write_bytes(f.read_bytes())
    (videos / "toy_train_left_1.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="toy_train_left_1.mp4"):
        train_stage1(cfg(epochs=1), labels, videos, tmp_path / "run", seed=0, progress=False)
    (videos / "toy_val_up_0.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="toy_val_up_0"):
        train_stage1(cfg(epochs=1), labels, videos, tmp_path / "run", seed=0, progress=False)


# Trains, and dies (SIGKILL) in the middle of writing the first epoch's `last/` checkpoint.
KILLED = """
import json, os, signal, sys
from pathlib import Path
import pandas as pd
import torch
from tfcovr.core import from_dict
from tfcovr.train.stage1 import Stage1Config, train_stage1
save = torch.save
def die(obj, f, *a, **k):
    save(obj, f, *a, **k); os.kill(os.getpid(), signal.SIGKILL)
torch.save = die
cfg = from_dict(Stage1Config, json.loads(Path(sys.argv[1]).read_text()))
train_stage1(cfg, pd.read_parquet(sys.argv[2]), sys.argv[3], sys.argv[4], seed=0, progress=False)
"""


def test_a_kill_while_writing_a_checkpoint_leaves_no_temporary_in_the_run_folder(toy, tmp_path):
    root, _ = toy
    script, conf, out = tmp_path / "killed.py", tmp_path / "cfg.json", tmp_path / "runs" / "aim"
    script.write_text(KILLED); conf.write_text(json.dumps(to_dict(cfg(epochs=1))))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", TMPDIR_ENV: str(tmp_path / "tmp")}
    r = subprocess.run([sys.executable, str(script), str(conf), str(root / "labels.parquet"), str(root / "videos"), str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    left = sorted(str(p.relative_to(tmp_path / "runs")) for p in (tmp_path / "runs").rglob("*"))
    assert not [p for p in left if ".tmp" in p or "/." in p or p.startswith(".")], left
    assert "aim/last" not in left                                    # the checkpoint was never completed


def test_epoch_lines(toy, tmp_path, capsys):
    "One flushed line to start and one per `log_every` epochs (and the last), without tqdm; log_every=0: none."
    root, labels = toy
    train_stage1(cfg(epochs=3, warmup_epochs=0.0), labels, root / "videos", tmp_path / "aim", seed=0, progress=False, log_every=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "stage1 aim: epochs 1..3 of 3, 12 train and 4 val clips, 4 classes, 1 process(es) on cpu"
    assert lines[1] == "stage1 aim: effective batch 4 (2 clips x 2 accumulated x 1 process(es)); frames: random, bilinear, crop"
    assert lines[2].startswith("stage1 aim: clip cache auto -> on: ~1.97 MB (12 train clips x every frame at full size, ")
    assert [l.split(" loss ")[0] for l in lines[3:]] == ["stage1 aim: epoch 2/3", "stage1 aim: epoch 3/3"]
    assert all(" train_acc " in l and " val_acc " in l and l.endswith(" s)") for l in lines[3:])
    train_stage1(cfg(epochs=3, warmup_epochs=0.0), labels, root / "videos", tmp_path / "aim", seed=0, progress=False)
    assert capsys.readouterr().out == "stage1 aim: done (3/3 epochs)\n"
    train_stage1(cfg(epochs=3, warmup_epochs=0.0), labels, root / "videos", tmp_path / "aim", seed=0, progress=False, log_every=0)
    assert capsys.readouterr().out == ""


def test_broken_checkpoints_are_one_line_naming_the_file(toy, tmp_path):
    root, labels = toy
    train_stage1(cfg(epochs=1, warmup_epochs=0.0), labels, root / "videos", tmp_path / "aim", seed=0, progress=False, log_every=0)
    best = tmp_path / "aim" / "best.safetensors"
    assert os.stat(best).st_mode & 0o777 == os.stat(tmp_path / "aim" / "best.json").st_mode & 0o777
    data = best.read_bytes()
    for cut in (b"", data[:8], data[:len(data) // 2], data[:-1]):
        best.write_bytes(cut)
        with pytest.raises(ModelFileError) as e: load_stage1(tmp_path / "aim")
        assert str(e.value).startswith(f"{best}: ") and "\n" not in str(e.value), str(e.value)
    best.write_bytes(data)
    trainer = tmp_path / "aim" / "last" / "trainer.pt"
    trainer.write_bytes(b"")
    with pytest.raises(ModelFileError, match=f"{trainer}: empty file"):
        train_stage1(cfg(epochs=2, warmup_epochs=0.0), labels, root / "videos", tmp_path / "aim", seed=0, progress=False)


def test_stage1_reads_train_and_val_only(toy):
    _, labels = toy
    test = labels[labels.split == "val"].assign(split="test", video_id=lambda d: d.video_id + "_test")
    c = stage1_clips(pd.concat([labels, test]))
    assert set(c.train.split) == {"train"} and set(c.val.split) == {"val"}
    assert not (set(c.train.video_id) | set(c.val.video_id)) & set(test.video_id)
    for bad in ({"val_split": "test"}, {"val_split": "train", "train_split": "val"}):
        with pytest.raises(ValueError, match="must be '(val|train)', got"): cfg(**bad)


def test_a_given_class_list_orders_the_head_and_is_reported(toy, tmp_path):
    root, labels = toy
    order = ["toy/up", "toy/left", "toy/down", "toy/none"]          # 'right' is no class; 'none' has no clip
    c = stage1_clips(labels, order)
    assert (c.left_out, c.no_train_clips) == (4, ["toy/none"])
    res = train_stage1(cfg(epochs=1, warmup_epochs=0.0), labels, root / "videos", tmp_path / "aim", seed=0, progress=False,
                       log_every=0, classes=order)
    model, meta = load_stage1(tmp_path / "aim")
    assert meta["classes"] == res.classes == order and model.head.weight.shape[0] == 4
    m = json.loads((tmp_path / "aim" / "metrics.json").read_text())
    assert (m["num_classes"], m["classes_without_train_clips"], m["clips_left_out"]) == (4, ["toy/none"], 4)
    with pytest.raises(ValueError, match="class 'toy/up' listed twice"):
        train_stage1(cfg(epochs=1), labels, root / "videos", tmp_path / "x", seed=0, progress=False, classes=["toy/up", "toy/up"])


def test_centre_training_frames_are_the_evaluators_frames(tmp_path):
    "Frame i of the video is a flat grey 20 i + 10: a clip's levels name the frames it holds."
    write_mp4(tmp_path / "ramp.mp4", np.repeat(np.arange(10, 250, 20, dtype=np.uint8), 32 * 32 * 3).reshape(12, 32, 32, 3))
    rows = pd.DataFrame({"video_id": ["ramp"], "video_key": ["ramp"], "label_id": ["x"]})
    frames = lambda clip: [int(round((float(f.float().mean()) - 10) / 20)) for f in clip]
    evaluator = segment_indices(12, 4, "center").tolist()                        # what the embedding extraction reads
    kw = dict(num_frames=4, size=32, train=True, seed=0, crop_scale=(1.0, 1.0), hflip=False)
    drawn = {"centre": set(), "random": set()}
    for mode in drawn:
        for cache in (False, True):
            ds = ClipDataset(rows, tmp_path, train_frames=mode, cache=cache, **kw)
            for epoch in range(5):
                ds.set_epoch(epoch); drawn[mode].add(tuple(frames(ds.clip(0))))
    assert drawn["centre"] == {tuple(evaluator)}
    assert len(drawn["random"]) > 1


def test_published_training_frames_are_the_validation_frames(tmp_path):
    "Frame i of the video is a flat grey 20 i + 10; 5 of 12 frames: published [0, 2, 5, 7, 10], centres [1, 3, 6, 8, 10]."
    write_mp4(tmp_path / "ramp.mp4", np.repeat(np.arange(10, 250, 20, dtype=np.uint8), 32 * 32 * 3).reshape(12, 32, 32, 3))
    rows = pd.DataFrame({"video_id": ["ramp"], "video_key": ["ramp"], "label_id": ["x"]})
    frames = lambda clip: [int(round((float(f.float().mean()) - 10) / 20)) for f in clip]
    published, centres = segment_indices(12, 5, "published").tolist(), segment_indices(12, 5).tolist()
    assert published != centres
    kw = dict(num_frames=5, size=32, seed=0, crop_scale=(1.0, 1.0), hflip=False)
    for cache in (False, True):
        train = ClipDataset(rows, tmp_path, train=True, train_frames="published", cache=cache, **kw)
        for epoch in range(3):
            train.set_epoch(epoch); assert frames(train.clip(0)) == published
        assert frames(ClipDataset(rows, tmp_path, train=False, train_frames="published", cache=cache, **kw).clip(0)) == published
        for mode in ("centre", "random"):                                            # validation reads the centres
            assert frames(ClipDataset(rows, tmp_path, train=False, train_frames=mode, cache=cache, **kw).clip(0)) == centres


def widen(src: Path, labels: pd.DataFrame, dst: Path) -> Path:
    "The toy clips in the middle of 64 x 128 frames with textured sides: a centre crop sees the clip, a stretch the whole frame."
    g = np.random.default_rng(0)
    for v in labels.video_id:
        clip = load_clip(src / f"{v}.mp4", video_length(src / f"{v}.mp4")).numpy()        # [T, 64, 64, 3]
        side = g.integers(0, 256, (len(clip), 64, 32, 3), dtype=np.uint8)
        write_mp4(dst / f"{v}.mp4", np.concatenate([side, clip, side[:, :, ::-1]], axis=2))
    return dst


def test_published_frames_and_stretch_are_part_of_the_run_and_reach_validation(toy, tmp_path):
    root, labels = toy
    wide = widen(root / "videos", labels, tmp_path / "wide")
    base = dataclasses.replace(cfg(epochs=1, warmup_epochs=0.0, cache_clips=False), model=AIMConfig("aim-tiny", num_frames=5))   # 5 of 12 frames: published != centres
    cfgs = {"default": base, "published": dataclasses.replace(base, train_frames="published"),
            "stretch": dataclasses.replace(base, fit="stretch"), "both": dataclasses.replace(base, train_frames="published", fit="stretch")}
    runs = {n: train_stage1(c, labels, wide, tmp_path / n, seed=0, progress=False, log_every=0) for n, c in cfgs.items()}
    conf = {n: json.loads((tmp_path / n / "config.json").read_text())["config"] for n in runs}
    assert "fit" not in conf["default"] and "train_frames" not in conf["default"]        # runs made before the keys keep their description
    assert (conf["published"]["train_frames"], conf["stretch"]["fit"]) == ("published", "stretch") and "fit" not in conf["published"]
    assert len({r.weights_sha256 for r in runs.values()}) == 4                            # each switch changes the inputs
    val = labels[labels.split == "val"]
    for n, c in cfgs.items():                                                             # validation read the run's frames and fit
        model, _ = load_stage1(tmp_path / n)
        own, other = ({k: ClipDataset(val, wide, 5, 64, False, 0, classes=runs[n].classes, **kw)
                       for k, kw in (("own", dict(train_frames=c.train_frames, fit=c.fit)), ("other", {}))}.values())
        loss = {k: validate(model, torch.utils.data.DataLoader(ds, batch_size=2), torch.device("cpu"))["val_loss"] for k, ds in
                (("own", own), ("other", other))}
        assert loss["own"] == pytest.approx(runs[n].history[-1]["val_loss"], rel=1e-7)
        if n != "default": assert loss["other"] != pytest.approx(loss["own"], rel=1e-6)   # a young model: inputs move the loss a little
        pred = predict_stage1(tmp_path / n, labels, wide, device="cpu")                    # predictions read them too
        assert pred.correct.mean() == pytest.approx(runs[n].history[-1]["val_acc"])
    with pytest.raises(ValueError, match=re.escape("config.fit: stretch -> None")):
        train_stage1(base, labels, wide, tmp_path / "stretch", seed=0, progress=False)


def test_train_frames_and_interpolation_are_part_of_the_run(toy, tmp_path):
    root, labels = toy
    base = cfg(epochs=1, warmup_epochs=0.0, cache_clips=False)
    runs = {}
    for name, c in {"default": base, "centre": dataclasses.replace(base, train_frames="centre"),
                    "bicubic": dataclasses.replace(base, interpolation="bicubic")}.items():
        runs[name] = train_stage1(c, labels, root / "videos", tmp_path / name, seed=0, progress=False, log_every=0)
    conf = {n: json.loads((tmp_path / n / "config.json").read_text())["config"] for n in runs}
    assert "train_frames" not in conf["default"] and "interpolation" not in conf["default"]   # runs made before the keys still resume
    assert (conf["centre"]["train_frames"], conf["bicubic"]["interpolation"]) == ("centre", "bicubic")
    assert len({r.weights_sha256 for r in runs.values()}) == 3                                  # each switch changes the inputs
    with pytest.raises(ValueError, match="config.interpolation: bicubic -> None"):
        train_stage1(base, labels, root / "videos", tmp_path / "bicubic", seed=0, progress=False)


def test_bicubic_clips_differ_from_bilinear_and_stay_uint8(toy):
    root, labels = toy
    for train in (False, True):
        clips = {i: ClipDataset(labels, root / "videos", 4, 32, train, 0, interpolation=i).clip(0) for i in ("bilinear", "bicubic")}
        assert all(c.dtype == torch.uint8 and c.shape == (4, 32, 32, 3) for c in clips.values())
        assert not torch.equal(clips["bilinear"], clips["bicubic"])
    assert torch.equal(clips["bilinear"], ClipDataset(labels, root / "videos", 4, 32, True, 0).clip(0))   # bilinear is the default
    assert torch.equal(ClipDataset(labels, root / "videos", 4, 32, False, 0, interpolation="bicubic").clip(1),
                       load_clip(root / "videos" / f"{labels.video_id.iloc[1]}.mp4", 4, 32, interpolation="bicubic"))


def test_auto_cache_declines_above_the_budget_and_prints_the_estimate(toy, tmp_path, capsys):
    root, labels = toy
    est = 12 * 12 * 64 * 64 * 3 + 4 * 4 * 64 * 64 * 3                            # every train frame + the val clips: 1.97 MB
    small = cfg(epochs=1, warmup_epochs=0.0, cache_budget_gb=1e-3)                   # 1 MB
    res = train_stage1(small, labels, root / "videos", tmp_path / "small", seed=0, progress=False)
    line = [l for l in capsys.readouterr().out.splitlines() if "clip cache" in l]
    assert line == ["stage1 small: clip cache auto -> off: ~1.97 MB (12 train clips x every frame at full size, 4 val clips x 4 frames "
                    "at 64x64, RGB uint8, 1 process(es) on this machine), above cache_budget_gb 0.001"]
    assert res.clip_cache == {"setting": "auto", "cached": False, "estimate_gb": round(est / 1e9, 6), "budget_gb": 1e-3, "processes": 1}
    assert json.loads((tmp_path / "small" / "metrics.json").read_text())["clip_cache"] == res.clip_cache
    big = train_stage1(dataclasses.replace(small, cache_budget_gb=16.0), labels, root / "videos", tmp_path / "big", seed=0,
                       progress=False, log_every=0)
    assert big.clip_cache["cached"] and big.weights_sha256 == res.weights_sha256      # the cache changes the speed, not the run
    with pytest.warns(UserWarning, match=r"cache_clips true above the budget: clip cache true -> on: ~1.97 MB .* above cache_budget_gb 0.001"):
        forced = train_stage1(dataclasses.replace(small, cache_clips=True), labels, root / "videos", tmp_path / "forced", seed=0,
                              progress=False, log_every=0)
    assert forced.clip_cache["cached"]
    centre = ClipDataset(labels[labels.split == "train"], root / "videos", 4, 64, True, 0, train_frames="centre")
    val = ClipDataset(labels[labels.split == "val"], root / "videos", 4, 64, False, 0)
    assert plan_clip_cache(small, centre, val)["estimate_gb"] == round((12 + 4) * 4 * 64 * 64 * 3 / 1e9, 6)   # centre: 4 frames kept


def test_a_resume_with_a_changed_field_raises_naming_it_and_restart_discards(toy, tmp_path):
    root, labels = toy
    c = cfg(epochs=2, warmup_epochs=0.0)
    assert c.on_mismatch == "error"                                                  # the default
    train_stage1(c, labels, root / "videos", tmp_path / "aim", seed=0, progress=False, stop_after=1, log_every=0)
    for changed, field in ((dict(amp="auto"), "config.amp: none -> auto"), (dict(grad_accum=1), "config.grad_accum: 2 -> 1")):
        with pytest.raises(ValueError, match=re.escape(f"{field}): to discard its 1 epoch(s) and start over, set on_mismatch: restart")):
            train_stage1(dataclasses.replace(c, **changed), labels, root / "videos", tmp_path / "aim", seed=0, progress=False)
    assert len(pd.read_csv(tmp_path / "aim" / "history.tsv", sep="\t")) == 1         # the refused runs left the epoch alone
    new = dataclasses.replace(c, amp="auto", on_mismatch="restart")
    fresh = train_stage1(new, labels, root / "videos", tmp_path / "fresh", seed=0, progress=False, log_every=0)
    again = train_stage1(new, labels, root / "videos", tmp_path / "aim", seed=0, progress=False, log_every=0)
    assert [r["epoch"] for r in again.history] == [1, 2] and again.weights_sha256 == fresh.weights_sha256

"""A rehearsal of the real path: `dvc repro` with `data.source: real` and `preset: paper`, scaled down, on a tree in the
real datasets' layout (the real label files, stand-in clips under their real ids, one clip missing) with stand-in
CLIP, CLIP-text and BLIP weights. Every stage runs, from the label files to the results table."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tfcovr.data.labels import paper_label_ids
from tfcovr.rehearsal import real_format_tree, write_blip_text, write_clip_checkpoint, write_clip_text

# The paper preset, scaled down to minutes on 2 cores: a CLIP-layout ViT of width 64 at 32 px instead of ViT-B/16 at 224,
# 4 frames instead of 12, one epoch, small batches, narrow Combiner. Every other value is the preset's.
SCALE_DOWN = {
    "stage1": {"*": {"model": {"name": "aim-tiny-clip", "num_frames": 4}, "epochs": 1, "batch_size": 8, "grad_accum": 1,
                     "lr": 1.0e-3},
               "aim1f": {"model": {"name": "aim-tiny-clip", "num_frames": 1}}},
    "embed": {"batch_size": 8, "encoders": {"aim1f-targets": {"num_frames": 4},
                                            "untrained": {"model": {"name": "aim-tiny-clip", "num_frames": 4}}}},
    "stage2": {"*": {"train": {"epochs": 1, "batch_size": 16, "lr": 1.0e-3,
                               "fusion": {"hidden_dim": 64, "projection_dim": 32}}}},
    "evaluate": {"bootstrap": 50},
    "report": {"n_queries": 2, "heatmap_queries": 6, "heatmap_gallery": 12},
}
STAGES = {"params", "synth", "pretrain", "manifest", "labels", "pairs", "modifications", "triplets", "stage1", "embed",
          "stage2", "evaluate", "report"}


def run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    return r


def rehearsal_params(root: Path) -> dict:
    "The repository's params.yaml on the real source, with the paper preset, one missing clip dropped, scaled down."
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["data"].update(source="real", root="data/raw", on_missing="drop")
    p["preset"], p["override"] = "paper", SCALE_DOWN
    return p


def test_paper_preset_on_real_format_data(root, shared_data, tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    work = tmp_path / "repo"
    for f in files:
        if f.startswith(("reports/", "dvc.lock")): continue
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, work / f)
    shutil.copytree(root / "tfcovr", work / "tfcovr", dirs_exist_ok=True)
    tree = real_format_tree(shared_data, work / "data" / "raw", missing=1)
    weights = work / "data" / "weights"
    write_clip_checkpoint(weights / "clip-vit-b16.safetensors", "aim-tiny-clip")
    write_clip_text(weights / "clip-vit-base-patch16")
    write_blip_text(weights / "blip-itm-base-coco")
    (work / "params.yaml").write_text(yaml.safe_dump(rehearsal_params(root), sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": str(bin_dir) + os.pathsep + os.environ["PATH"], "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(work)}
    run(["git", "init", "-q"], work, env)
    run([bin_dir / "tfcovr", "params", "params.yaml"], work, env)
    run([bin_dir / "dvc", "repro"], work, env)

    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert set(lock["stages"]) == STAGES                                   # every stage ran
    reports = work / "reports" / "real"
    assert not (work / "reports" / "synth").exists()                       # the default run's reports are not touched
    # the missing clip was dropped and reported, and nothing downstream counts it
    missing = tree["left_out"] if "left_out" in tree else tree["missing"]
    dropped = json.loads((reports / "dropped.json").read_text())
    assert sorted(c["video_key"] for c in dropped["clips"]) == sorted(missing)
    labels = pd.read_parquet(work / "data" / "build" / "labels.parquet")
    assert not set(missing) & set(labels.video_key)
    # the class set is the paper's, and Stage 1 classifies exactly the paper's 306 classes
    assert set(labels.label_id) <= set(paper_label_ids())
    stage1 = json.loads((reports / "stage1.json").read_text())
    assert stage1, stage1
    # no clip Stage 1 trained or selected on is a retrieval-test video
    test_videos = set(pd.read_parquet(work / "data" / "build" / "triplets" / "videos.parquet").query("split == 'test'").video_id) \
        if (work / "data" / "build" / "triplets" / "videos.parquet").exists() else set(labels.query("split == 'test'").video_id)
    assert test_videos and not test_videos & set(labels.query("split in ['train', 'val']").video_id)
    # the results table has every row of the paper, and the ablation
    rows = json.loads((reports / "results.json").read_text())
    assert [r["model"] for r in rows] == ["TF-CoVR-Base", "1-frame", "Stage-2-only", "text-only", "video-only", "avg-fusion"]
    assert [r["query_frames"] for r in rows][:3] == [4, 1, 4]
    for r in rows: assert 0.0 <= r["mAP@10"] <= 100.0
    # the pretrain stage trained nothing: no encoder reads its backbone under the paper preset
    assert "skipped" in json.loads((reports / "pretrain.json").read_text())

"""The whole study with `dvc repro` on a tiny configuration: every stage, a second run that does nothing, and a third
run from empty outputs that reproduces every output byte for byte."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY_LABELS = ["FX_salto_b_tuck", "FX_dsalto_b_tuck", "FX_salto_b_str", "FX_salto_b_str_t1", "FX_turn_1", "FX_turn_2",
               "DV_101b", "DV_103b", "DV_5231d", "DV_5233d"]


def tiny_params(root: Path) -> dict:
    "The repository's params.yaml shrunk to seconds per stage (same keys, smaller numbers)."
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["synth"].update(labels=TINY_LABELS, frame_size=32, num_frames=16, videos_per_label=[3, 2, 2], sources=[2, 2, 2],
                      workers=1)
    p["pretrain"].update(frames=256, val_frames=32, epochs=1, batch_size=64, workers=1)
    for run in p["stage1"].values(): run.update(epochs=1, warmup_epochs=0.0)
    p["embed"]["batch_size"] = 8
    for run in p["stage2"].values(): run["train"] = {**run["train"], "epochs": 1, "batch_size": 16}
    p["evaluate"]["bootstrap"] = 50
    p["report"].update(n_queries=2, heatmap_queries=6, heatmap_gallery=12)
    return p


def run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_dvc_repro_tiny(root, tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    work = tmp_path / "repo"
    for f in files:
        if f.startswith(("reports/", "dvc.lock")): continue       # results of the default run: rebuilt here
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, work / f)
    shutil.copytree(root / "tfcovr", work / "tfcovr", dirs_exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(root), sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(work)}
    run(["git", "init", "-q"], work, env)
    run([str(Path(bin_dir) / "tfcovr"), "params", "params.yaml"], work, env)
    run([str(Path(bin_dir) / "dvc"), "repro"], work, env)

    rows = json.loads((work / "reports" / "synth" / "results.json").read_text())
    assert [(r["model"], r["table"]) for r in rows] == [("TF-CoVR-Base", "results"), ("1-frame", "results"), ("Stage-2-only", "results"),
                                                        ("text-only", "results"), ("video-only", "results"), ("avg-fusion", "ablations")]
    # the columns, read from each model's config.json and each cache's meta.json, are the paper's: the image baseline
    # has 1 query frame and 8 target frames
    assert [(r["modalities"], r["fusion"], r["query_frames"], r["target_frames"]) for r in rows] == [
        ("video+text", "combiner", 8, 8), ("video+text", "combiner", 1, 8), ("video+text", "combiner", 8, 8),
        ("text", "none", 8, 8), ("video", "none", 8, 8), ("video+text", "average", 8, 8)]
    for r in rows:
        for k in (5, 10, 25, 50): assert 0.0 <= r[f"mAP@{k}"] <= 100.0 and 0.0 <= r[f"R_target@{k}"] <= r[f"R@{k}"]
    protocol = json.loads((work / "reports" / "synth" / "protocol.json").read_text())
    # the evaluator scored exactly the builder's ground truths
    stats = json.loads((work / "reports" / "synth" / "triplets_stats.json").read_text())["splits"]["test"]["ground_truths_per_query"]
    assert protocol["ground_truth"] == "target_videos" and protocol["ground_truths_per_query"] == stats
    assert any((work / "reports" / "synth" / "figures" / "evaluation").glob("*.png"))
    assert (work / "models" / "stage2" / "gallery").is_dir()
    query = next((work / "data" / "synth" / "finegym" / "videos").glob("*.mp4"))
    found = run([str(Path(bin_dir) / "tfcovr"), "search", str(query), "show with 2 turns", "-k", "3",
                 "--model", "models/stage2/TF-CoVR-Base/model", "--gallery", "models/stage2/gallery",
                 "--stage1", "models/stage1/aim"], work, env)
    assert len(found.stdout.strip().splitlines()) == 4, found.stdout      # a header and three hits
    again = run([str(Path(bin_dir) / "dvc"), "repro"], work, env)
    # only the manifest of the raw data is listed again (always); it is unchanged, so nothing after it runs
    assert re.findall(r"Running stage '([^']+)'", again.stdout) == ["manifest"], again.stdout

    first = output_hashes(work)
    for out in ("data/synth", "data/build", "data/cache", "models", "embeddings", "reports", ".tmp"):
        shutil.rmtree(work / out, ignore_errors=True)
    run([str(Path(bin_dir) / "dvc"), "repro", "--force", "--no-run-cache"], work, env)
    second = output_hashes(work)
    differ = sorted(p for p in first.keys() | second.keys() if first.get(p) != second.get(p))
    assert first and not differ, f"outputs that differ between two runs from empty outputs: {differ}"


# Outputs that record when or where a run happened rather than what it computed.
RUN_RECORDS = ("reports/synth/stages/", "reports/synth/params.json", "reports/synth/synth.json", "data/build/raw_manifest.json")


def output_hashes(work: Path) -> dict[str, str]:
    "md5 of every output dvc.lock records, except the run records (timings, environment, executed notebooks)."
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])
            if not o["path"].startswith(RUN_RECORDS)}

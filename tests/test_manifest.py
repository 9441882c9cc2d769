"""The raw-data manifest (tfcovr.data.manifest) and the `manifest` stage run through papermill on a tiny source."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfcovr.data.manifest import manifest_text, raw_manifest, scan_tree, write_manifest
from tfcovr.core import load_params
from tfcovr.data.labels import DataConfig


def _source(tmp_path: Path) -> Path:
    "A real-source params file whose label files and video folders live under tmp_path; the FineDiving videos sit behind a link."
    ann = tmp_path / "ann"; ann.mkdir()
    for name in ("cats.txt", "train.txt"): (ann / name).write_text(name)
    (tmp_path / "gym" / "sub").mkdir(parents=True)
    for name in ("b.mp4", "a.mp4", "sub/c.mp4"): (tmp_path / "gym" / name).write_bytes(name.encode())
    (tmp_path / "disk" / "comp" / "1").mkdir(parents=True)
    (tmp_path / "disk" / "comp" / "1" / "00001.jpg").write_bytes(b"jpg")
    os.symlink(tmp_path / "disk", tmp_path / "dives")
    files = (f"{{datasets: [finegym, finediving], finegym: {{categories: {ann / 'cats.txt'}, set_categories: null, "
             f"splits: {{train: {ann / 'train.txt'}}}}}, finediving: {{annotation_dir: {ann}, splits: [train]}}}}")
    videos = f"{{finegym: {tmp_path / 'gym'}, finediving: {tmp_path / 'dives'}}}"
    p = tmp_path / "params.yaml"
    p.write_text(f"""data:
  source: real
  root: {tmp_path}
  labels: {{real: {files}, synth: {files}}}
  videos: {{real: {videos}, synth: {videos}}}
  splits: {{exclusive_sources: true, val_from_train: 0.2, test_from_val: 0.5}}
  on_missing: error
""")
    return p


def _data(params: Path) -> DataConfig: return load_params(params, {"data": DataConfig}, strict=False)["data"]


def test_manifest_lists_sorted_paths_sizes_and_times(tmp_path):
    m = raw_manifest(_data(_source(tmp_path)))
    gym = m["videos"]["finegym"]
    assert [e[:2] for e in gym["entries"]] == [["a.mp4", 5], ["b.mp4", 5], ["sub/c.mp4", 9]]
    assert gym["entries"][0][2] == (tmp_path / "gym" / "a.mp4").stat().st_mtime_ns
    assert (gym["files"], gym["bytes"]) == (3, 19)
    assert m["videos"]["finediving"]["entries"][0][:2] == ["comp/1/00001.jpg", 3]          # followed through the link
    assert [f["path"] for f in m["label_files"]][:2] == [(tmp_path / "ann" / n).as_posix() for n in ("cats.txt", "train.txt")]
    missing = [f for f in m["label_files"] if f["size"] is None]                          # the FineDiving pickles are not there
    assert len(missing) == 3 and all(f["sha256"] is None for f in missing)


def test_same_tree_same_bytes_any_change_differs(tmp_path):
    data = _data(_source(tmp_path))
    first = write_manifest(tmp_path / "m1.json", raw_manifest(data)).read_bytes()
    assert write_manifest(tmp_path / "m2.json", raw_manifest(data)).read_bytes() == first
    assert json.loads(first)["entry"] == ["path", "size", "mtime_ns"]
    os.utime(tmp_path / "gym" / "a.mp4", ns=(1, 1))                                     # a touched clip: real data reruns
    assert manifest_text(raw_manifest(data)).encode() != first
    before = raw_manifest(data)
    (tmp_path / "ann" / "cats.txt").write_text("cats.txX")                                # same size, other bytes
    after = raw_manifest(data)
    assert before["label_files"][0]["size"] == after["label_files"][0]["size"]
    assert before["label_files"][0]["sha256"] != after["label_files"][0]["sha256"]


def test_synth_videos_are_stamped_by_content(tmp_path):
    params = _source(tmp_path)
    params.write_text(params.read_text().replace("source: real", "source: synth"))
    data = _data(params)
    first = manifest_text(raw_manifest(data))
    assert json.loads(first)["entry"] == ["path", "size", "sha256"]
    (tmp_path / "gym" / "a.mp4").write_bytes(b"a.mp4")                                  # rewritten with the same bytes
    os.utime(tmp_path / "gym" / "a.mp4", ns=(1, 1))
    assert manifest_text(raw_manifest(data)) == first
    (tmp_path / "gym" / "a.mp4").write_bytes(b"a.mp5")                                  # same size, new bytes
    assert manifest_text(raw_manifest(data)) != first


def test_scan_tree_lists_a_large_flat_folder_in_order(tmp_path):
    for k in reversed(range(500)): (tmp_path / f"{k:04d}.jpg").touch()
    entries = scan_tree(tmp_path)
    assert [e[0] for e in entries] == [f"{k:04d}.jpg" for k in range(500)] and {e[1] for e in entries} == {0}
    with pytest.raises(NotADirectoryError, match="0000.jpg: not a folder"): scan_tree(tmp_path / "0000.jpg")


def test_manifest_stage(root, tmp_path):
    params, out = _source(tmp_path), tmp_path / "build" / "raw_manifest.json"
    run = lambda: subprocess.run([str(Path(sys.executable).parent / "papermill"), "--no-progress-bar", "nbs/stages/manifest.ipynb",
                                  str(tmp_path / "executed.ipynb"), "-p", "params_file", str(params), "-p", "out", str(out)],
                                 cwd=root, capture_output=True, text=True)
    r = run()
    assert r.returncode == 0, r.stderr[-3000:]
    first = out.read_bytes()
    assert first == manifest_text(raw_manifest(_data(params))).encode()
    assert run().returncode == 0 and out.read_bytes() == first                          # rerun on the same tree: same bytes
    assert [p.name for p in out.parent.iterdir()] == ["raw_manifest.json"]              # no temporary file left behind

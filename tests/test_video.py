"""Video loading end to end: real H.264 files and JPEG folders written here, read back frame-exact; writing mp4s
reproducibly."""
import pickle
import warnings
from fractions import Fraction
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tfcovr.core import rng
from tfcovr.cli import main
from tfcovr.data.video import (ShortVideoWarning, VideoError, check_main, check_video, check_videos, load_clip, probe_video,
                               resize_clip, resolve_video, screen_clips, segment_indices, video_length, write_mp4)


def ramp(n: int, h: int = 32, w: int = 40) -> np.ndarray:
    "n flat frames; frame k has brightness 5 + 5k (up to 50 frames), so a clip tells which frames it holds."
    assert n <= 50
    return np.stack([np.full((h, w, 3), 5 + 5 * k, np.uint8) for k in range(n)])


def ids(clip: torch.Tensor) -> list[int]:
    return ((clip.float().mean((1, 2, 3)) - 5) / 5).round().int().tolist()


def textured(n: int, h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    "A moving texture: every frame differs everywhere, so the encoder uses P and B frames."
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, (h, w + n * 4, 3), dtype=np.uint8)
    return np.stack([base[:, 4 * k:4 * k + w] for k in range(n)])


def jpeg_folder(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for k, f in enumerate(frames): Image.fromarray(f).save(folder / f"{k:05d}.jpg", quality=95)
    return folder


def mp4_faststart(path: Path, frames: np.ndarray) -> Path:
    "An mp4 whose index (moov) precedes the data, so a truncated copy still opens and lists every frame."
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")): c.mux(p)
        for p in s.encode(): c.mux(p)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    "A video root holding good and bad videos of every kind."
    root = tmp_path_factory.mktemp("videos")
    for L in (7, 20, 33): write_mp4(root / f"ramp{L}.mp4", ramp(L))
    write_mp4(root / "tex.mp4", textured(40))
    jpeg_folder(root / "comp" / "1", ramp(20))
    (root / "empty.mp4").touch()
    (root / "noise.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    tex = (root / "tex.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(tex[: len(tex) // 2])                      # index at the end: lost
    fs = mp4_faststart(root / "fs.mp4", textured(40, seed=1)).read_bytes()
    (root / "fscut.mp4").write_bytes(fs[: int(len(fs) * 0.9)])                 # index intact, data cut
    bad = jpeg_folder(root / "comp" / "2", ramp(10))
    (bad / "00005.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


def pyav_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c: return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_decoded_frames_equal_pyav_in_any_order(videos):
    ref = pyav_frames(videos / "tex.mp4")                                       # [40, 240, 320, 3]
    assert video_length(videos / "tex.mp4") == len(ref) == 40
    clip = load_clip(videos / "tex.mp4", 12)
    assert clip.shape == (12, 240, 320, 3) and clip.dtype == torch.uint8
    assert torch.equal(clip, torch.from_numpy(ref[segment_indices(40, 12)]))
    for seed in range(3):                                                       # random seeks, B-frames
        clip = load_clip(videos / "tex.mp4", 12, mode="random", rng=rng(seed, "clip"))
        assert torch.equal(clip, torch.from_numpy(ref[segment_indices(40, 12, "random", rng(seed, "clip"))]))


@pytest.mark.parametrize("L", [7, 20, 33])
@pytest.mark.parametrize("n", [1, 8, 12])
def test_center_sampling_is_the_segment_centre(videos, L, n):
    assert ids(load_clip(videos / f"ramp{L}.mp4", n)) == [int(np.floor((i + 0.5) * L / n)) for i in range(n)]


def test_random_sampling_stays_in_segments_and_repeats_under_a_seed(videos):
    L, n = 33, 8
    seen = np.array([ids(load_clip(videos / "ramp33.mp4", n, mode="random", rng=s)) for s in range(20)])
    lo, hi = np.arange(n) * L // n, ((np.arange(n) + 1) * L + n - 1) // n - 1
    assert ((seen >= lo) & (seen <= hi)).all()
    assert len({tuple(r) for r in seen}) > 1                                    # the seed matters
    a = load_clip(videos / "ramp33.mp4", n, mode="random", rng=np.random.default_rng(5))
    b = load_clip(videos / "ramp33.mp4", n, mode="random", rng=5)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs rng"): load_clip(videos / "ramp33.mp4", n, mode="random")


def published_frames(L: int, n: int) -> list[int]:
    "The published embedding extractor's frames, transcribed: edges int(linspace(0, L, n + 1)), frame (e_i + e_{i+1} - 1) // 2, clamped."
    edges = [int(x) for x in np.linspace(0, L, n + 1)]
    return [min(max((edges[i] + edges[i + 1] - 1) // 2, 0), L - 1) for i in range(n)]


def test_published_sampling_is_the_published_extractors_rule():
    assert segment_indices(10, 4, "published").tolist() == [0, 3, 5, 8] and segment_indices(10, 4).tolist() == [1, 3, 6, 8]
    pairs = [(L, n) for L in range(1, 130) for n in (1, 2, 3, 5, 8, 12, 16, 32)]
    differ = 0
    for L, n in pairs:                                                          # L < n included: frames repeat
        got = segment_indices(L, n, "published")
        assert got.tolist() == published_frames(L, n), (L, n)
        assert len(got) == n and got.min() >= 0 and got.max() <= L - 1 and (np.diff(got) >= 0).all()
        differ += got.tolist() != segment_indices(L, n).tolist()
    assert differ > 0.7 * len(pairs)                                            # not the segment centres, most of the time
    assert segment_indices(3, 8, "published").tolist() == [0, 0, 0, 0, 0, 1, 1, 2]   # the lower middle: early frames repeat more


@pytest.mark.parametrize("L", [7, 20, 33])
def test_load_clip_reads_the_published_frames(videos, L):
    assert ids(load_clip(videos / f"ramp{L}.mp4", 12, mode="published", short="repeat")) == published_frames(L, 12)


def test_frame_folder_matches_the_mp4_sampling(videos):
    folder = resolve_video(videos, "comp/1")
    assert folder == videos / "comp" / "1" and video_length(folder) == 20
    assert ids(load_clip(folder, 8)) == ids(load_clip(videos / "ramp20.mp4", 8)) == [1, 3, 6, 8, 11, 13, 16, 18]


def test_resize_short_side_crop_and_exact(videos):
    clip = load_clip(videos / "tex.mp4", 4, size=224)
    assert clip.shape == (4, 224, 224, 3) and clip.dtype == torch.uint8
    full = load_clip(videos / "tex.mp4", 4)
    assert torch.equal(clip, resize_clip(full, 224))
    ramp_x = torch.linspace(0, 255, 320).round().to(torch.uint8)[None, None, :, None].expand(1, 240, 320, 3)
    crop = resize_clip(ramp_x.contiguous(), 224)[0, 0, :, 0].float()            # keeps columns 40..279 of 320
    assert abs(crop[0] - 40 * 255 / 319) < 3 and abs(crop[-1] - 279 * 255 / 319) < 3
    assert load_clip(videos / "tex.mp4", 4, size=(112, 150)).shape == (4, 112, 150, 3)


def test_stretch_resizes_the_whole_frame_and_is_passed_through_load_clip(videos):
    ramp_x = torch.linspace(0, 255, 320).round().to(torch.uint8)[None, None, :, None].expand(1, 240, 320, 3).contiguous()
    whole = resize_clip(ramp_x, 224, fit="stretch")                            # every column kept, squeezed to 224
    assert whole.shape == (1, 224, 224, 3) and whole.dtype == torch.uint8
    assert whole[0, 0, 0, 0] < 3 and whole[0, 0, -1, 0] > 252                  # the crop starts at 32 and ends at 223 (test above)
    assert torch.equal(whole, resize_clip(ramp_x, (224, 224)))
    full = load_clip(videos / "tex.mp4", 4)
    for interp in ("bilinear", "bicubic"):
        got = load_clip(videos / "tex.mp4", 4, size=64, interpolation=interp, fit="stretch")
        assert torch.equal(got, resize_clip(full, (64, 64), interp))
        assert not torch.equal(got, load_clip(videos / "tex.mp4", 4, size=64, interpolation=interp))
    assert torch.equal(load_clip(videos / "tex.mp4", 4, size=64), resize_clip(full, 64, fit="crop"))   # crop is the default
    with pytest.raises(ValueError, match="fit must be one of crop, stretch, got 'pad'"):
        load_clip(videos / "tex.mp4", 4, size=64, fit="pad")


def test_bicubic_resize_is_clamped_and_passed_through_load_clip(videos):
    full = load_clip(videos / "tex.mp4", 4)                                    # random texture: sharp edges everywhere
    cubic = load_clip(videos / "tex.mp4", 4, size=(300, 400), interpolation="bicubic")
    assert torch.equal(cubic, resize_clip(full, (300, 400), interpolation="bicubic"))
    assert cubic.dtype == torch.uint8 and not torch.equal(cubic, resize_clip(full, (300, 400)))
    raw = torch.nn.functional.interpolate(full.permute(0, 3, 1, 2).float(), size=(300, 400), mode="bicubic", antialias=True)
    assert raw.min() < 0 and raw.max() > 255                                   # the kernel overshoots ...
    assert (cubic.permute(0, 3, 1, 2).int() - raw.round().clamp(0, 255).int()).abs().max() <= 1   # ... and is clamped, not wrapped
    with pytest.raises(ValueError, match="interpolation must be one of bilinear, bicubic, got 'area'"):
        load_clip(videos / "tex.mp4", 4, size=32, interpolation="area")


def test_probe_video_is_cheap_and_quiet(videos, capfd):
    "The labels stage's probe: open and decode the first frame; damage after it is left to the full check."
    assert [probe_video(videos / k) for k in ("ramp20.mp4", "tex.mp4", "comp/1", "comp/2", "fscut.mp4")] == [None] * 5
    assert check_video(videos / "comp" / "2") is not None and check_video(videos / "fscut.mp4") is not None
    assert probe_video(videos / "missing.mp4") == "file not found"
    assert probe_video(videos / "empty.mp4") == "empty file (0 bytes)"
    for k in ("noise", "cut"): assert probe_video(videos / f"{k}.mp4").startswith("cannot open as a video"), k
    assert "ERROR opening" not in capfd.readouterr().err


def test_screen_clips_threads_give_the_same_report(videos, tmp_path):
    clips = pd.DataFrame({"dataset": ["finegym"] * 5 + ["finediving"] * 2, "video_key": ["ramp20", "cut", "nope", "tex", "noise", "1", "9"],
                          "split": ["train"] * 7, "label_id": list("abcdefg"), "label": list("ABCDEFG")})
    roots = {"finegym": videos, "finediving": videos / "comp"}
    one = screen_clips(clips, roots, "drop", tmp_path / "one.json", workers=1, progress=False)
    four = screen_clips(clips, roots, "drop", tmp_path / "four.json", workers=4, progress=False)
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "four.json").read_bytes()
    assert one[0].equals(four[0]) and one[0].video_key.tolist() == ["ramp20", "tex", "1"]
    assert [(c["video_key"], c["reason"]) for c in one[1]["clips"]] == [
        ("cut", "unreadable"), ("nope", "missing"), ("noise", "unreadable"), ("9", "missing")]


def test_short_videos_repeat_frames_unless_min_frames(videos):
    assert ids(load_clip(videos / "ramp7.mp4", 12, short="repeat")) == [0, 0, 1, 2, 2, 3, 3, 4, 4, 5, 6, 6]
    with pytest.raises(VideoError, match=r"ramp7\.mp4: 7 frames, fewer than the 12 required"):
        load_clip(videos / "ramp7.mp4", 12, min_frames=12)
    assert load_clip(videos / "ramp7.mp4", 7, min_frames=7).shape[0] == 7


def test_short_video_warns_once_per_video_raises_or_repeats_quietly(tmp_path):
    write_mp4(tmp_path / "five.mp4", ramp(5)); jpeg_folder(tmp_path / "dive", ramp(3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for seed in range(3): load_clip(tmp_path / "five.mp4", 8, mode="random", rng=seed)   # one warning, not three
        assert ids(load_clip(tmp_path / "dive", 4)) == [0, 1, 1, 2]
        quiet = load_clip(tmp_path / "five.mp4", 8, short="repeat")
    assert [str(w.message) for w in seen] == [
        f"{tmp_path / 'five.mp4'}: 5 frames, fewer than the 8 requested; the clip repeats frames",
        f"{tmp_path / 'dive'}: 3 frames, fewer than the 4 requested; the clip repeats frames"]
    assert all(w.category is ShortVideoWarning for w in seen)
    assert torch.equal(quiet, load_clip(tmp_path / "five.mp4", 8))                 # the same frames either way
    with pytest.raises(VideoError, match=r"dive: 3 frames, fewer than the 4 a clip needs"):
        load_clip(tmp_path / "dive", 4, short="error")
    assert load_clip(tmp_path / "dive", 3, short="error").shape[0] == 3


@pytest.mark.parametrize("name,message", [
    ("missing.mp4", "file not found"),
    ("empty.mp4", "empty file (0 bytes)"),
    ("noise.mp4", "cannot open as a video"),
    ("cut.mp4", "cannot open as a video"),
    ("fscut.mp4", "cannot"),
    ("comp/2", "00005.jpg: corrupt JPEG frame"),
])
def test_unreadable_videos_raise_naming_the_file(videos, name, message):
    path = videos / name
    with pytest.raises(VideoError) as e:
        if name == "comp/2": load_clip(path, 10)                                # touches every frame
        else: load_clip(path, 12, mode="random", rng=0)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_resolve_video_names_both_tried_paths(videos):
    assert resolve_video(videos, "ramp7") == videos / "ramp7.mp4"
    with pytest.raises(VideoError) as e: resolve_video(videos, "comp/99")
    assert f"{videos}/comp/99.mp4" in str(e.value) and f"{videos}/comp/99/" in str(e.value)


class _Clips(torch.utils.data.Dataset):
    def __init__(self, paths): self.paths = paths
    def __len__(self): return len(self.paths)
    def __getitem__(self, i): return load_clip(self.paths[i], 4, size=32)


def test_clips_load_in_data_loader_workers_and_errors_keep_their_type(videos):
    good = list(torch.utils.data.DataLoader(_Clips([videos / "ramp20.mp4"] * 2), batch_size=2, num_workers=1))
    assert good[0].shape == (2, 4, 32, 32, 3) and ids(good[0][1]) == [2, 7, 12, 17]
    # a worker's error comes back through ExceptionWrapper (a real failing worker takes 5 s to shut down)
    from torch._utils import ExceptionWrapper
    try: _Clips([videos / "noise.mp4"])[0]
    except VideoError: wrapped = pickle.loads(pickle.dumps(ExceptionWrapper(where="in DataLoader worker process 0")))
    with pytest.raises(VideoError, match="noise.mp4: cannot open as a video"): wrapped.reraise()


def test_check_videos_lists_every_problem_quietly(videos, capfd):
    keys = ["ramp20", "missing", "empty", "noise", "cut", "fscut", "comp/1", "comp/2", "ramp7"]
    probs = check_videos(keys, root=videos, n=12, workers=2, progress=False)
    assert probs.video.tolist() == ["missing", "empty", "noise", "cut", "fscut", "comp/2"]
    assert probs.path.tolist()[1:] == [str(videos / f"{k}.mp4") for k in ("empty", "noise", "cut", "fscut")] + [
        str(videos / "comp" / "2")]
    assert probs.problem.str.len().gt(0).all()
    assert "ERROR opening" not in capfd.readouterr().err                       # no decord noise
    short = check_videos(["ramp7", "ramp20"], root=videos, n=12, min_frames=12, progress=False)
    assert short.to_dict("records") == [{"video": "ramp7", "path": str(videos / "ramp7.mp4"),
                                         "problem": "7 frames, fewer than the 12 required"}]


def test_check_command_on_a_labels_table(videos, tmp_path, capsys):
    labels = pd.DataFrame({
        "dataset": ["finegym", "finegym", "finegym", "finediving", "finediving"],
        "video_id": ["a", "b", "c", "d", "e"], "source_video": ["s"] * 5, "label_id": [0, 1, 2, 3, 4],
        "label": ["x"] * 5, "event": ["VT"] * 5, "split": ["train"] * 5,
        "video_key": ["ramp20", "noise", "ramp33", "1", "2"]})
    labels.to_parquet(tmp_path / "labels.parquet")
    argv = [str(tmp_path / "labels.parquet"), "--root", f"finegym={videos}", "--root", f"finediving={videos / 'comp'}",
            "--out", str(tmp_path / "problems.csv")]
    assert check_main(argv) == 1
    out, err = capsys.readouterr()
    assert [l.split(": ")[0] for l in out.splitlines()] == [str(videos / "noise.mp4"), str(videos / "comp" / "2")]
    assert "2 of 5 videos unreadable" in err
    assert pd.read_csv(tmp_path / "problems.csv").video.tolist() == ["noise", "2"]
    labels[labels.video_key.isin(["ramp20", "ramp33"])].to_csv(tmp_path / "good.csv", index=False)
    assert check_main([str(tmp_path / "good.csv"), "--root", str(videos), "--workers", "2"]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "good.csv"), "--root", str(videos), "--column", "nope"]) == 2   # bad input: one line
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"tfcovr check: error: {tmp_path / 'good.csv'}: no column 'nope'")
    with pytest.raises(ValueError, match="no column 'nope'"):                                          # the command itself raises
        check_main([str(tmp_path / "good.csv"), "--root", str(videos), "--column", "nope"])


def test_check_without_root_reads_the_params_file(videos, tmp_path, capsys):
    "`tfcovr check labels.parquet` finds the clips where params.yaml's selected source keeps them."
    pd.DataFrame({"dataset": ["finegym", "finegym", "finediving"], "video_key": ["ramp20", "noise", "1"]}).to_parquet(tmp_path / "l.parquet")
    params = tmp_path / "p.yaml"
    params.write_text((Path(__file__).parents[1] / "params.yaml").read_text()
                      .replace("      finegym: data/synth/finegym/videos", f"      finegym: {videos}")
                      .replace("      finediving: data/synth/finediving/videos", f"      finediving: {videos / 'comp'}"))
    assert main(["check", str(tmp_path / "l.parquet"), "--params", str(params)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{videos / 'noise.mp4'}: {check_video(videos / 'noise.mp4')}"]
    assert f"video folders from {params}: finegym={videos}, finediving={videos / 'comp'}" in err
    assert "1 of 3 videos unreadable" in err
    assert main(["check", str(tmp_path / "l.parquet"), "--params", str(tmp_path / "none.yaml")]) == 2
    assert "no --root given and the params file" in capsys.readouterr().err


def intra_mp4(path: Path, frames: np.ndarray, damaged: int | None = None) -> Path:
    "An mp4 of key frames only (each frame decodes on its own), with frame `damaged`'s data zeroed in place."
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"x264-params": "keyint=1", "threads": "1"}
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 25)
            c.mux(s.encode(vf))
        c.mux(s.encode())
    if damaged is not None:
        with av.open(str(path)) as c:
            packets = sorted((p.pts, p.pos, p.size) for p in c.demux(video=0) if p.size)
        _, pos, size = packets[damaged]
        data = bytearray(path.read_bytes()); data[pos:pos + size] = bytes(size)
        path.write_bytes(bytes(data))
    return path


def test_check_reads_every_frame_and_names_the_broken_one(tmp_path, capsys):
    "A broken frame away from the segment centres is found by the default check, which names the video and the frame."
    jpeg_folder(tmp_path / "comp" / "3", ramp(30))
    (tmp_path / "comp" / "3" / "00011.jpg").write_bytes(b"\xff\xd8\xff not a frame")
    assert 11 not in {0, 29, *segment_indices(30, 2).tolist()}                   # no frame the fast check reads
    frames = np.concatenate([ramp(50)] * 4)                                      # 200 frames
    intra_mp4(tmp_path / "mid.mp4", frames, damaged=8)
    intra_mp4(tmp_path / "tail.mp4", frames, damaged=199)
    intra_mp4(tmp_path / "good.mp4", frames)
    assert check_video(tmp_path / "mid.mp4", n=2).startswith("cannot decode frame 8 (of 200): Invalid data")
    assert check_video(tmp_path / "tail.mp4", n=2).startswith("cannot decode frame 199 (of 200): Invalid data")
    assert check_video(tmp_path / "good.mp4", n=2) is None
    (tmp_path / "keys.txt").write_text("comp/3\nmid\ngood\ntail\n")
    assert check_main([str(tmp_path / "keys.txt"), "--root", str(tmp_path), "-n", "2"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{tmp_path / 'comp' / '3'}: 00011.jpg: corrupt JPEG frame: UnidentifiedImageError: "
        f"cannot identify image file '{tmp_path / 'comp' / '3' / '00011.jpg'}'",
        f"{tmp_path / 'mid.mp4'}: cannot decode frame 8 (of 200): Invalid data found when processing input",
        f"{tmp_path / 'tail.mp4'}: cannot decode frame 199 (of 200): Invalid data found when processing input"]
    assert "3 of 4 videos unreadable (every frame decoded)" in err
    # --fast reads the first, last and centre frames only: the folder's frame 11 is none of them
    assert check_main([str(tmp_path / "keys.txt"), "--root", str(tmp_path), "-n", "2", "--fast"]) == 1
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'comp' / '3'}:" not in out and "(--fast)" in err


WRITE_IN_CHILD = """
import sys, numpy as np
from tfcovr.data.video import write_mp4
g = np.random.default_rng(0)
f = np.clip(np.linspace(0, 255, 48)[None, None, :, None] + g.normal(0, 4, (24, 48, 48, 3)), 0, 255).astype(np.uint8)
write_mp4(sys.argv[1], f, fps=25, crf=18)
"""


def test_write_mp4_same_bytes_in_another_process(tmp_path):
    "Noisy frames give the same bytes here and in a fresh interpreter, with x264's fixed settings in the stream."
    g = np.random.default_rng(0)
    f = np.clip(np.linspace(0, 255, 48)[None, None, :, None] + g.normal(0, 4, (24, 48, 48, 3)), 0, 255).astype(np.uint8)
    here = write_mp4(tmp_path / "here.mp4", f)
    subprocess.run([sys.executable, "-c", WRITE_IN_CHILD, str(tmp_path / "child.mp4")], check=True, timeout=120)
    data = here.read_bytes()
    assert data == (tmp_path / "child.mp4").read_bytes()
    settings = re.search(rb"options: ([^\x00]*)", data).group(1).decode().split()
    assert {"mbtree=0", "threads=1", "crf=18.0"} <= set(settings), settings
    assert write_mp4(tmp_path / "t.mp4", torch.from_numpy(f)).read_bytes() == data      # a tensor writes the same file
    assert write_mp4(tmp_path / "q.mp4", f, crf=30).read_bytes() != data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.mp4", "here.mp4", "q.mp4", "t.mp4"]   # no temporaries
    assert pyav_frames(here).shape == (24, 48, 48, 3)
    with av.open(str(here)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt, s.average_rate) == ("h264", "yuv420p", 25)


@pytest.mark.parametrize("frames, message", [
    (np.zeros((2, 31, 32, 3), np.uint8), "bad.mp4: H.264 4:2:0 needs even frame sizes, got 32x31"),
    (np.zeros((2, 32, 33, 3), np.uint8), "bad.mp4: H.264 4:2:0 needs even frame sizes, got 33x32"),
    (np.zeros((0, 32, 32, 3), np.uint8), "bad.mp4: no frames to write"),
    (np.zeros((2, 32, 32, 3), np.float32), "bad.mp4: frames must be uint8 [T, H, W, 3]"),
    (np.zeros((2, 32, 32), np.uint8), "bad.mp4: frames must be uint8 [T, H, W, 3]"),
])
def test_write_mp4_rejects_bad_frames_naming_the_file(tmp_path, frames, message):
    (tmp_path / "bad.mp4").write_bytes(b"old")
    with pytest.raises(ValueError, match=re.escape(message)): write_mp4(tmp_path / "bad.mp4", frames)
    assert (tmp_path / "bad.mp4").read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1

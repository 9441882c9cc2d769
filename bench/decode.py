"""Clip decoding speed: tfcovr.data.video.load_clip (decord; JPEG folders) against PyAV on the same clips.

Writes its own test clips (H.264 mp4 and JPEG frame folders) into a temporary folder, samples 12 frames at the
segment centres, resizes them to 224 x 224 (shorter side + centre crop) and reports clips per second (wall time, best of the
rounds) and CPU milliseconds per clip (all threads; less sensitive to other load on a shared machine). The PyAV
baseline decodes every frame, keeps the same indices and resizes the same way; its clips are checked to equal
the loader's.

    python bench/decode.py [--clips 20] [--frames 12] [--size 224] [--rounds 3] [--torch-threads 1]
"""
import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from tfcovr.data.video import load_clip, resize_clip, segment_indices, write_mp4

from machine import cpu_name


def make_clip(n: int, seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    "A camera pan over a smooth textured scene with a moving square and sensor noise: [n, h, w, 3] uint8."
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w + 3 * n]
    scene = np.stack([128 + 60 * np.sin(xx / f + p) * np.cos(yy / f) for f, p in zip(g.uniform(6, 30, 3), g.uniform(0, 6, 3))], -1)
    frames = []
    for k in range(n):
        f = scene[:, 3 * k:3 * k + w].copy()
        y, x = 40 + int(60 * np.sin(k / 9)), 20 + 3 * k % (w - 60)
        f[y:y + 50, x:x + 50] = (230, 40, 40)
        frames.append(np.clip(f + g.normal(0, 4, f.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def pyav_clip(path: Path, n: int, size: int) -> torch.Tensor:
    "Baseline: decode every frame with PyAV, keep the sampled ones, resize like the loader."
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = segment_indices(len(frames), n)
    return resize_clip(torch.from_numpy(np.stack([frames[i] for i in idx])), size)


def rates(fns: dict, paths: dict, rounds: int) -> dict:
    "(clips/s of wall time, CPU ms per clip) of each method, best of `rounds`; rounds interleave the methods."
    for name, fn in fns.items(): fn(paths[name][0])                      # warm-up
    wall, cpu = dict.fromkeys(fns, float("inf")), dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            for p in paths[name]: fn(p)
            wall[name] = min(wall[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    return {name: (len(paths[name]) / wall[name], 1e3 * cpu[name] / len(paths[name])) for name in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads for resizing (data-loader workers use 1)")
    a = ap.parse_args()
    torch.set_num_threads(a.torch_threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"machine: {cpu_name()}, {cores} cores available (os.cpu_count {os.cpu_count()}){load}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        d, lengths = Path(d), np.random.default_rng(0).integers(64, 97, a.clips)
        mp4s, folders = [], []
        for i, L in enumerate(lengths):
            frames = make_clip(int(L), seed=i)
            mp4s.append(write_mp4(d / f"clip{i:02d}.mp4", frames, crf=23))
            folders.append(d / "frames" / f"{i:02d}"); folders[-1].mkdir(parents=True)
            for k, f in enumerate(frames): Image.fromarray(f).save(folders[-1] / f"{k:05d}.jpg", quality=90)
        mb = sum(p.stat().st_size for p in mp4s) / 2**20
        print(f"clips: {a.clips} H.264 mp4s, 320x240, {lengths.min()}-{lengths.max()} frames ({mb:.1f} MiB); "
              f"sampling {a.frames} frames at segment centres, resize {a.size} (shorter side + centre crop)")

        diff = max((load_clip(p, a.frames, a.size).int() - pyav_clip(p, a.frames, a.size).int()).abs().max().item()
                   for p in mp4s)
        print(f"max |loader - PyAV| over all clips: {diff} (0 = identical frames)")
        fns = {"tfcovr load_clip, mp4 (decord, 1 thread)": lambda p: load_clip(p, a.frames, a.size),
               "tfcovr load_clip, mp4 (decord, auto threads)": lambda p: load_clip(p, a.frames, a.size, threads=0),
               "tfcovr load_clip, JPEG frame folder": lambda p: load_clip(p, a.frames, a.size),
               "PyAV, decode all frames, same indices + resize": lambda p: pyav_clip(p, a.frames, a.size)}
        paths = {name: folders if "folder" in name else mp4s for name in fns}
        res = rates(fns, paths, a.rounds)
        base = res[list(fns)[-1]][0]
        print(f"{'method':<50} {'clips/s':>8} {'vs PyAV':>8} {'CPU ms/clip':>12}")
        for name, (r, ms) in res.items(): print(f"{name:<50} {r:8.1f} {r / base:7.2f}x {ms:12.1f}")

if __name__ == "__main__":
    main()

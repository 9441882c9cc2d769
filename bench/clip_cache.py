"""Stage-1 data loading with and without the in-memory clip cache (`ClipDataset(cache=True)`, `stage1.cache_clips`).

Reads the training clips of the benchmark the pipeline built (labels table and video folders of params.yaml) as
Stage 1 does: 8 frames at random offsets in equal segments, one crop and flip per clip, normalised. Prints the
seconds per epoch of data loading alone: uncached (every epoch decodes every clip) and cached (the first epoch
decodes each video whole; later epochs read memory), checks that both give identical clips, and names the machine.

    python bench/clip_cache.py [--labels data/build/labels.parquet] [--params params.yaml] [--epochs 3]
"""
import argparse
import os
import time

import pandas as pd
import torch

from tfcovr.data.labels import params_roots
from tfcovr.train.clips import ClipDataset, class_index

from machine import cpu_name


def epoch_seconds(ds: ClipDataset, epoch: int) -> tuple[float, list[torch.Tensor]]:
    ds.set_epoch(epoch)
    start = time.perf_counter()
    clips = [ds[i][0] for i in range(len(ds))]
    return time.perf_counter() - start, clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="data/build/labels.parquet")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed after the first")
    args = ap.parse_args()
    torch.set_num_threads(1)
    df = pd.read_parquet(args.labels)
    train = df[df.split == "train"]
    kw = dict(video_roots=params_roots(args.params), num_frames=args.frames, size=64, train=True, seed=0,
              classes=class_index(df), crop_scale=(0.8, 1.0))
    plain, cached = ClipDataset(train, **kw), ClipDataset(train, cache=True, **kw)
    print(f"{cpu_name()}, {os.cpu_count()} cores, 1 torch thread; {len(train)} training clips of {args.frames} frames")
    first, _ = epoch_seconds(cached, 0)
    p_times, c_times = [], []
    for e in range(1, args.epochs + 1):
        tp, a = epoch_seconds(plain, e)
        tc, b = epoch_seconds(cached, e)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), "cached clips differ from uncached ones"
        p_times.append(tp); c_times.append(tc)
    mb = sum(v.numel() for v in cached.cache.values()) / 2**20
    p, c = min(p_times), min(c_times)
    print(f"uncached: {p:.2f} s per epoch; cached: {c:.2f} s per epoch ({p / c:.1f}x), first cached epoch {first:.2f} s; "
          f"cache {mb:.0f} MiB; clips identical")


if __name__ == "__main__":
    main()

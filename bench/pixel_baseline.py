"""A floor for Stage 1: a linear classifier on raw grey pixels of n sampled frames.

Prints the validation accuracy for 1 and 8 frames on the benchmark the pipeline built (labels table and video
folders of params.yaml), and the machine. If Stage 1 scores below this, its recipe, not the data, is at fault;
if 8 frames beat 1 frame here, the benchmark carries motion information that single frames lack.

    python bench/pixel_baseline.py [--labels data/build/labels.parquet] [--params params.yaml] [--side 32]
"""
import argparse
import os
import platform
import time

import numpy as np
import pandas as pd
import torch

from tfcovr.data.labels import params_roots
from tfcovr.data.video import resolve_paths
from tfcovr.core import seed_everything
from tfcovr.data.video import load_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="data/build/labels.parquet")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--side", type=int, default=32, help="frames are resized to side x side grey pixels")
    ap.add_argument("--steps", type=int, default=500, help="full-batch Adam steps")
    args = ap.parse_args()
    seed_everything(0)
    df = pd.read_parquet(args.labels)
    paths = resolve_paths(df, params_roots(args.params))
    classes = sorted(df.label_id.unique())
    y = torch.tensor(df.label_id.map({c: i for i, c in enumerate(classes)}).to_numpy())
    train, val = torch.tensor((df.split == "train").to_numpy()), torch.tensor((df.split == "val").to_numpy())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {len(df)} clips, {len(classes)} classes")
    for n in (1, 8):
        start = time.perf_counter()
        x = torch.tensor(np.stack([load_clip(p, n, size=(args.side, args.side)).numpy().mean(-1).reshape(-1) / 255.0
                                   for p in paths]), dtype=torch.float32)                 # [N, n * side * side]
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-3)
        w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=1e-3, weight_decay=1e-3)
        for _ in range(args.steps):
            loss = torch.nn.functional.cross_entropy(x[train] @ w + b, y[train])
            opt.zero_grad(); loss.backward(); opt.step()
        acc = ((x[val] @ w + b).argmax(1) == y[val]).float().mean().item()
        print(f"{n} frame(s): linear val accuracy {acc:.3f} (chance {1 / len(classes):.3f}), "
              f"train loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

"""Stage-1 training speed: clips per second and peak memory of one training step (forward, backward, AdamW step).

CPU: the tiny AIM (aim-tiny, 8 frames of 64 x 64) and its 1-frame variant on random clips, each measured in a fresh
process so that its peak memory is its own; then one toy epoch through `train_stage1` (decoding, augmentation,
validation and checkpointing included). GPU, when one is present: AIM-B/16 (12 frames of 224 x 224, frozen CLIP
backbone, 306 classes) with bf16 autocast against fp32. Without a GPU that part is skipped with a note.

    python bench/train.py [--batch 8] [--steps 5] [--threads 2] [--gpu-batch 8]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import cpu_name


def rss_mib() -> float:
    "Resident memory of this process now (MiB)."
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def step_bench(name: str, num_frames: int, batch: int, steps: int, device: str, amp: str, freeze: bool, classes: int) -> dict:
    "Clips/s and peak memory of `steps` training steps of one AIM variant on random clips."
    from tfcovr.models.aim import aim_cfg, create_aim
    from tfcovr.core import autocast
    from tfcovr.train.common import param_groups
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_aim(name, num_frames=num_frames, num_classes=classes, freeze_backbone=freeze).to(dev)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    s = aim_cfg(name).img_size
    x = torch.randn(batch, num_frames, 3, s, s, device=dev)        # [B, T, 3, H, W]
    y = torch.randint(0, classes, (batch,), device=dev)

    def step():
        with autocast(amp, dev): logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step(); opt.zero_grad(set_to_none=True)

    step(); step()                                                     # warm-up (allocations, optimizer state)
    if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    before = rss_mib()
    t = time.perf_counter()
    for _ in range(steps): step()
    if dev.type == "cuda": torch.cuda.synchronize()
    sec = (time.perf_counter() - t) / steps
    out = {"model": name, "frames": num_frames, "batch": batch, "device": device, "amp": amp,
           "trainable_M": round(model.param_counts()["trainable"] / 1e6, 3), "clips_per_s": round(batch / sec, 2),
           "step_ms": round(1000 * sec, 1)}
    if dev.type == "cuda": out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else: out.update(rss_before_mib=round(before), peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return out


def epoch_bench(batch: int) -> dict:
    "One toy epoch of `train_stage1` on CPU: 4 classes x 8 train clips + 4 x 2 val clips of 12 frames, 64 x 64."
    from tfcovr.models.aim import AIMConfig
    from tfcovr.toys import toy_clips
    from tfcovr.train.stage1 import Stage1Config, train_stage1
    with tempfile.TemporaryDirectory() as d:
        labels = toy_clips(Path(d) / "v", classes=("down", "up", "left", "right"), per_split={"train": 8, "val": 2})
        cfg = Stage1Config(AIMConfig("aim-tiny", num_frames=8), epochs=1, batch_size=batch, hflip=False, device="cpu")
        t = time.perf_counter()
        r = train_stage1(cfg, labels, Path(d) / "v", Path(d) / "run", seed=0, progress=False)
        total = time.perf_counter() - t
    n = len(labels)
    return {"clips": n, "epoch_s": r.epoch_seconds[0], "call_s": round(total, 2), "clips_per_s": round(n / r.epoch_seconds[0], 1)}


def one(spec: dict) -> dict:
    "Run one step benchmark in a fresh process and return its figures."
    p = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if p.returncode: raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="clips per step on CPU")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--gpu-batch", type=int, default=8, help="clips per step for AIM-B/16 on the GPU")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    if a.one is not None:
        print(json.dumps(step_bench(**json.loads(a.one)))); return
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    cpu = dict(batch=a.batch, steps=a.steps, device="cpu", amp="none", freeze=False, classes=34)
    for name, T in (("aim-tiny", 8), ("aim-tiny-1f", 1)):
        r = one({**cpu, "name": name, "num_frames": T})
        print(f"  cpu  {name:12s} T={T:2d} B={r['batch']}: {r['clips_per_s']:8.2f} clips/s ({r['step_ms']} ms/step), "
              f"peak RSS {r['peak_rss_mib']} MiB (before the timed steps {r['rss_before_mib']} MiB), {r['trainable_M']}M trainable")
    e = epoch_bench(a.batch)
    print(f"  cpu  train_stage1 toy epoch ({e['clips']} clips incl. val, decode + augment + checkpoint): "
          f"{e['clips_per_s']} clips/s ({e['epoch_s']} s/epoch, {e['call_s']} s per call)")
    if not torch.cuda.is_available():
        print("  gpu  skipped: no CUDA device on this machine (AIM-B/16 bf16 vs fp32 needs one)")
        return
    print(f"  gpu: {torch.cuda.get_device_name()}")
    gpu = dict(batch=a.gpu_batch, steps=a.steps, device="cuda", freeze=True, classes=306, name="aim-b16", num_frames=12)
    for amp in ("bf16", "none"):
        r = one({**gpu, "amp": amp})
        print(f"  gpu  aim-b16 T=12 B={r['batch']} {'bf16' if amp == 'bf16' else 'fp32'}: {r['clips_per_s']:8.2f} clips/s "
              f"({r['step_ms']} ms/step), peak GPU memory {r['peak_gpu_mib']} MiB, {r['trainable_M']}M trainable")


if __name__ == "__main__":
    main()

"""Pretraining and frozen Stage-1 speed on CPU: frames per second of rendering and of pretraining steps, and clips (frames)
per second of Stage-1 training steps with the backbone frozen (the published recipe) against unfrozen.

Rendering: `tfcovr.train.pretrain.render_frames` in one process. Pretraining: forward, backward and AdamW step of the
`FrameEncoder` (the AIM variant's ViT backbone + target head) on rendered frames. Stage 1: forward, backward and AdamW
step of AIM on random clips, frozen (adapters, temporal embedding, final norm, head trained) and unfrozen.

    python bench/pretrain.py [--model aim-tiny] [--batch 128] [--clips 16] [--steps 10] [--threads 2]
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

from machine import cpu_name


def timed(step, steps: int) -> float:
    "Seconds per call of `step`, after two warm-up calls."
    step(); step()
    t = time.perf_counter()
    for _ in range(steps): step()
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="aim-tiny", help="AIM variant (its -1f sibling is measured too)")
    ap.add_argument("--batch", type=int, default=128, help="frames per pretraining step")
    ap.add_argument("--render", type=int, default=1000, help="frames rendered for the rendering figure")
    ap.add_argument("--clips", type=int, default=16, help="clips per Stage-1 step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the pipeline's params.yaml threads)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from tfcovr.models.aim import aim_cfg, create_aim, preprocess
    from tfcovr.train.common import param_groups
    from tfcovr.train.pretrain import FrameEncoder, render_frames, target_loss
    v = aim_cfg(a.model)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(a shared machine: other jobs may run beside this one)")
    t = time.perf_counter()
    fs = render_frames(a.render, v.img_size, seed=0)
    sec = time.perf_counter() - t
    print(f"  render   {a.render} frames of {v.img_size} x {v.img_size}: {a.render / sec:8.0f} frames/s (1 process)")
    torch.manual_seed(0)
    net = FrameEncoder(v)
    opt = torch.optim.AdamW(param_groups(net, 0.05), lr=1e-3)
    idx = torch.arange(a.batch) % len(fs)
    x = preprocess(fs.frames[idx.numpy()], v)
    y = {k: torch.from_numpy(t)[idx] for k, t in fs.targets.items()}

    def pre_step():
        loss = target_loss(net.split(net(x)), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    sec = timed(pre_step, a.steps)
    print(f"  pretrain {a.model} B={a.batch}: {a.batch / sec:8.0f} frames/s ({1000 * sec:.0f} ms/step), "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.3f}M parameters")
    for name, T in ((a.model, 8), (f"{a.model}-1f", 1)):
        for freeze in (True, False):
            torch.manual_seed(0)
            model = create_aim(name, num_frames=T, num_classes=42, freeze_backbone=freeze)
            opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
            xc = torch.randn(a.clips, T, 3, v.img_size, v.img_size)
            yc = torch.randint(0, 42, (a.clips,))

            def s1_step():
                loss = F.cross_entropy(model(xc), yc)
                opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

            sec = timed(s1_step, a.steps)
            n = model.param_counts()
            print(f"  stage1   {name:14s} T={T} B={a.clips} {'frozen  ' if freeze else 'unfrozen'}: {a.clips / sec:8.1f} clips/s "
                  f"({a.clips * T / sec:6.0f} frames/s, {1000 * sec:.1f} ms/step), {n['trainable'] / 1e3:.1f}k trainable")


if __name__ == "__main__":
    main()

"""GPU figures of the paper's configuration, measured once on a CUDA machine; `--smoke` runs the same code paths on CPU.

Measures, with warm-up steps excluded and the timed regions synchronised:
1. Stage-1 training of AIM-B/16 (12 frames of 224 x 224, frozen backbone with random weights since CLIP weights are
   not needed for speed, 306 classes): clips/s of forward + backward + AdamW steps and peak GPU memory, in bf16
   autocast and in fp32. On out-of-memory the batch is halved, and the result says so.
2. Embedding extraction (forward only, eval mode, bf16): clips/s and peak GPU memory.
3. Stage 2: one ComposedModel step (frozen MiniLM text encoder with cached text features, Combiner fusion, HN-NCE
   loss, AdamW) on random 768-d embeddings: steps/s at batch 256.
4. With two or more GPUs: a 2-process DistributedDataParallel Stage-1 step (NCCL on localhost): clips/s summed over
   both processes; with one GPU it is recorded as skipped.

Writes bench/results/gpu.json (machine, every figure, the batch sizes) and prints a table. On a GPU machine:

    python bench/gpu_check.py [--batch 32] [--extract-batch 64] [--steps 20] [--warmup 5]

`--smoke` runs everything on CPU with aim-tiny (4 frames of 64 x 64, batch 2, 2 steps, fp32, DDP over gloo with two
CPU processes) and writes bench/results/gpu_smoke.json; its figures mean nothing beyond "the code runs".
No GPU figures exist yet: bench/results/gpu.json appears once someone runs this on a CUDA machine.
"""
import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 300.0  # clips/s, Stage-1 training in bf16 on an H100/H200


def sync(dev: torch.device) -> None:
    if dev.type == "cuda": torch.cuda.synchronize(dev)


def reset_memory(dev: torch.device) -> None:
    if dev.type == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(dev)


def peak_mib(dev: torch.device) -> int | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**20) if dev.type == "cuda" else None


def timed(fn, steps: int, warmup: int, dev: torch.device) -> float:
    "Seconds per call of `fn` over `steps` calls, after `warmup` untimed ones."
    for _ in range(warmup): fn()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps): fn()
    sync(dev)
    return (time.perf_counter() - t) / steps


def build_aim(c: dict, dev: torch.device) -> torch.nn.Module:
    from tfcovr.models.aim import create_aim
    torch.manual_seed(0)
    return create_aim(c["model"], num_frames=c["frames"], num_classes=c["classes"], pretrained=False,
                      freeze_backbone=True, img_size=c["size"]).to(dev)


def train_step_fn(net, model, c: dict, batch: int, amp: str, dev: torch.device):
    "One Stage-1 training step on a fixed random batch (`net` may be a DDP wrapper of `model`)."
    from tfcovr.core import autocast
    from tfcovr.train.common import param_groups
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    x = torch.randn(batch, c["frames"], 3, c["size"], c["size"], device=dev)   # [B, T, 3, H, W]
    y = torch.randint(0, c["classes"], (batch,), device=dev)

    def step():
        with autocast(amp, dev): logits = net(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
    return step


def with_halving(measure, batch: int, dev: torch.device) -> dict:
    "Run `measure(batch)`; on CUDA out-of-memory halve the batch until it fits (or reaches 0)."
    asked = batch
    while batch >= 1:
        try:
            reset_memory(dev)
            r = measure(batch)
            r.update(batch=batch, batch_asked=asked)
            if batch != asked: r["note"] = f"out of memory at batch {asked}; halved to {batch}"
            return r
        except torch.cuda.OutOfMemoryError:
            batch //= 2
    return {"batch": 0, "batch_asked": asked, "note": "out of memory even at batch 1"}


def stage1_train(c: dict, amp: str, dev: torch.device) -> dict:
    def measure(batch):
        model = build_aim(c, dev)
        try:
            sec = timed(train_step_fn(model, model, c, batch, amp, dev), c["steps"], c["warmup"], dev)
            return {"amp": amp, "clips_per_s": round(batch / sec, 2), "step_ms": round(1000 * sec, 1), "peak_gpu_mib": peak_mib(dev),
                    "trainable_M": round(model.param_counts()["trainable"] / 1e6, 3)}
        finally: del model
    return with_halving(measure, c["batch"], dev)


def extract(c: dict, amp: str, dev: torch.device) -> dict:
    from tfcovr.core import autocast

    def measure(batch):
        model = build_aim(c, dev).eval()
        x = torch.randn(batch, c["frames"], 3, c["size"], c["size"], device=dev)

        @torch.inference_mode()
        def fwd():
            with autocast(amp, dev): model.encode(x)
        try:
            sec = timed(fwd, c["steps"], c["warmup"], dev)
            return {"amp": amp, "clips_per_s": round(batch / sec, 2), "batch_ms": round(1000 * sec, 1), "peak_gpu_mib": peak_mib(dev)}
        finally: del model, x
    return with_halving(measure, c["extract_batch"], dev)


def stage2(c: dict, dev: torch.device) -> dict:
    "Steps/s of one Stage-2 training step: ComposedModel (params.yaml's text and fusion sections) + HN-NCE + AdamW."
    from tfcovr.models.composed import ComposedModel
    from tfcovr.models.fusion import FusionConfig
    from tfcovr.models.losses import create_loss
    from tfcovr.models.text import TextConfig
    from tfcovr.train.common import param_groups
    B, D = c["s2_batch"], 768
    text = TextConfig(name="minilm", pretrained_path=None, freeze=True, max_length=64)
    fusion = FusionConfig(name="combiner", hidden_dim=6144, projection_dim=3072, dropout=0.5, video_input="raw")   # the published widths
    torch.manual_seed(0)
    model = ComposedModel(D, "fusion", text, fusion).to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    loss_fn = create_loss("hnnce", temperature=0.07, alpha=1.0, beta=0.5)
    qv, tv = torch.randn(B, D, device=dev), torch.randn(B, D, device=dev)
    texts = [f"add {i % 7} twists and {i // 7} turns in pike" for i in range(B)]
    labels = torch.randint(0, max(2, B // 4), (B,), device=dev)
    same = labels[:, None] == labels[None, :]
    model.cache_texts(texts)                      # as in training: the frozen backbone runs once per distinct text
    reset_memory(dev)

    def step():
        loss = loss_fn(model.encode_query(qv, texts), model.encode_target(tv), same)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    sec = timed(step, c["s2_steps"], c["warmup"], dev)
    return {"batch": B, "dim": D, "text": "minilm (frozen, cached)", "fusion": "combiner 3072/6144, raw video", "loss": "hnnce",
            "steps_per_s": round(1 / sec, 2), "step_ms": round(1000 * sec, 2), "peak_gpu_mib": peak_mib(dev)}


def _ddp_worker(rank: int, world: int, c: dict, amp: str, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = c["device"] == "cuda"
    if cuda: torch.cuda.set_device(rank)
    else: torch.set_num_threads(1)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        model = build_aim(c, dev)
        net = DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        sec = timed(train_step_fn(net, model, c, c["batch"], amp, dev), c["steps"], c["warmup"], dev)
        t = torch.tensor([sec], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)                    # the slowest process sets the pace
        if rank == 0:
            Path(out).write_text(json.dumps({"world": world, "backend": "nccl" if cuda else "gloo", "amp": amp,
                                             "batch_per_process": c["batch"], "step_ms": round(1000 * t.item(), 1),
                                             "clips_per_s": round(world * c["batch"] / t.item(), 2), "peak_gpu_mib_rank0": peak_mib(dev)}))
    finally: dist.destroy_process_group()


def ddp(c: dict, amp: str) -> dict:
    if c["device"] == "cuda" and torch.cuda.device_count() < 2: return {"skipped": "one GPU"}
    import torch.multiprocessing as mp
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ddp.json")
        mp.spawn(_ddp_worker, args=(2, c, amp, port, out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())


def main():
    from tfcovr.core import write_json   # atomic: a temporary file, then a rename
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU run of every code path with aim-tiny (writes gpu_smoke.json)")
    ap.add_argument("--batch", type=int, default=32, help="Stage-1 training clips per step (per process for DDP)")
    ap.add_argument("--extract-batch", type=int, default=64, help="clips per forward pass for embedding extraction")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps before each measurement")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 Stage-1 comparison")
    a = ap.parse_args()
    if a.smoke:
        c = dict(model="aim-tiny", frames=4, size=64, classes=306, batch=2, extract_batch=2, steps=2, warmup=1,
                 s2_batch=16, s2_steps=2, device="cpu")
        amps, out = ["none"], RESULTS / "gpu_smoke.json"
    else:
        if not torch.cuda.is_available(): sys.exit("no CUDA device: run with --smoke for the CPU check of the code paths")
        c = dict(model="aim-b16", frames=12, size=224, classes=306, batch=a.batch, extract_batch=a.extract_batch,
                 steps=a.steps, warmup=a.warmup, s2_batch=256, s2_steps=max(a.steps, 50), device="cuda")
        amps, out = ["bf16"] + ([] if a.no_fp32 else ["none"]), RESULTS / "gpu.json"
    dev = torch.device(c["device"])
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
               "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
               "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
               "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    print(f"machine: {machine['gpu'] or 'no GPU (smoke)'}, {machine['gpus']} GPU(s), CUDA {machine['cuda']}, "
          f"torch {machine['torch']}, CPU {machine['cpu']}")
    res = {"stage1_train": [stage1_train(c, amp, dev) for amp in amps], "extract": extract(c, amps[0], dev),
           "stage2": stage2(c, dev)}
    fit = res["stage1_train"][0].get("batch") or 1                 # DDP: the per-process batch that fitted on one GPU
    res["ddp_stage1"] = ddp({**c, "batch": min(c["batch"], fit)}, amps[0])
    bf16 = next((r for r in res["stage1_train"] if r.get("amp") == "bf16" and "clips_per_s" in r), None)
    met = None if a.smoke or bf16 is None else bf16["clips_per_s"] >= TARGET
    target = {"text": f"target: >= {TARGET:.0f} clips/s Stage-1 training on an H100/H200 in bf16",
              "met": met, "note": "smoke run: not applicable" if a.smoke else None}
    write_json(out, {"smoke": a.smoke, "machine": machine, "config": c, "results": res, "target": target})

    prec = lambda amp: "bf16" if amp == "bf16" else "fp32"
    mem = lambda r: f"peak {r['peak_gpu_mib']} MiB" if r.get("peak_gpu_mib") is not None else "peak n/a (CPU)"
    tag = f"{c['model']} T={c['frames']} {c['size']}px"
    for r in res["stage1_train"]:
        if "clips_per_s" not in r: print(f"  stage-1 train  {tag}: {r['note']}"); continue
        print(f"  stage-1 train  {tag} {prec(r['amp'])} B={r['batch']:<4d} {r['clips_per_s']:9.2f} clips/s  "
              f"{r['step_ms']:8.1f} ms/step  {mem(r)}" + (f"  ({r['note']})" if "note" in r else ""))
    r = res["extract"]
    if "clips_per_s" in r:
        print(f"  extract        {tag} {prec(r['amp'])} B={r['batch']:<4d} {r['clips_per_s']:9.2f} clips/s  "
              f"{r['batch_ms']:8.1f} ms/batch {mem(r)}" + (f"  ({r['note']})" if "note" in r else ""))
    else: print(f"  extract        {tag}: {r['note']}")
    r = res["stage2"]
    print(f"  stage-2 step   ComposedModel + HN-NCE  B={r['batch']:<4d} {r['steps_per_s']:9.2f} steps/s  {r['step_ms']:8.2f} ms/step  {mem(r)}")
    r = res["ddp_stage1"]
    print(f"  ddp stage-1    skipped: {r['skipped']}" if "skipped" in r else
          f"  ddp stage-1    {r['world']} x {r['backend']} {prec(r['amp'])} B={r['batch_per_process']}/process "
          f"{r['clips_per_s']:9.2f} clips/s (sum)  {r['step_ms']:8.1f} ms/step")
    print(f"{target['text']}: " + ("n/a (smoke run)" if met is None and a.smoke else "met" if met else "not met"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark: chunked retrieval metrics vs a plain per-query loop, at the benchmark's gallery size.

Compares, on the same synthetic data (label-clustered, L2-normalised float32 embeddings; every query is a
gallery video, excluded from its own ranking, asking for another label):

- chunked: `tfcovr.eval.metrics.retrieval_metrics_from_embeddings` over all Q queries;
- loop:    the straightforward per-query evaluation (sims = gallery @ query, full argsort, drop the query,
           AP@K by cumulative precision), run on a subset of queries and extrapolated linearly to Q.

Each method runs in its own child process, so its memory is measured alone: peak resident memory (VmHWM,
reset through /proc/self/clear_refs once the data is built) minus the resident memory at that moment, i.e.
the extra memory the computation needs on top of the embeddings. For the loop, tracemalloc's peak of
numpy allocations is reported as well. The per-query AP@K of both methods is compared on the subset.

Usage: python bench/metrics.py [--q 20000] [--g 20000] [--d 768] [--loop-queries 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from machine import cpu_name

KS = (5, 10, 25, 50)


def machine() -> str:
    "CPU model, cores visible, torch threads and RAM of this machine."
    import torch
    model = cpu_name()
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration): pass
    return (f"{model}, {len(os.sched_getaffinity(0))} cores visible, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads{mem}, {platform.system()} {platform.machine()}")


def make_data(q: int, g: int, d: int, n_labels: int, seed: int):
    "Normalised float32 embeddings clustered by label; query i is gallery video i and asks for another label."
    r = np.random.default_rng(seed)
    gl = r.permutation(np.arange(g) % n_labels)
    centres = r.standard_normal((n_labels, d), dtype=np.float32)
    ge = r.standard_normal((g, d), dtype=np.float32)
    ge *= 4.0
    ge += centres[gl]
    ge /= np.linalg.norm(ge, axis=1, keepdims=True)
    own = np.arange(q) % g                                             # the query's position in the gallery
    ql = (gl[own] + r.integers(1, n_labels, q)) % n_labels             # a target label other than its own
    qe = r.standard_normal((q, d), dtype=np.float32)                   # the "composed" query: its own video,
    qe *= 1.0 / np.sqrt(d)                                             # noise, and a pull towards the target
    qe += ge[own]
    qe += (0.3 / np.sqrt(d)) * centres[ql]
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)
    return qe, ge, ql, gl, own


def _rss_kb(field: str) -> int:
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return True
    except OSError: return False


def loop_metrics(qe, ge, ql, gl, own, queries) -> np.ndarray:
    "The plain per-query evaluation; returns AP@K [len(queries), len(KS)]."
    out = np.empty((len(queries), len(KS)))
    for n, i in enumerate(queries):
        sims = ge @ qe[i]                                   # [G]
        order = np.argsort(-sims, kind="stable")            # full ranking, ties by lower index
        order = order[order != own[i]]                      # drop the query itself
        rel = gl[order] == ql[i]
        n_rel = int(rel.sum())
        if n_rel == 0: raise ValueError(f"query {i} has no relevant gallery item")
        for c, k in enumerate(KS):
            h = rel[:k]
            out[n, c] = float((np.cumsum(h) / np.arange(1, len(h) + 1) * h).sum() / min(n_rel, k))
    return out


def child(args) -> dict:
    "Build the data, reset the memory peak, run one method, report time, memory and results."
    import torch
    from tfcovr.eval.metrics import per_query_metrics_from_embeddings, summarize_metrics
    qe, ge, ql, gl, own = make_data(args.q, args.g, args.d, args.labels, args.seed)
    subset = np.linspace(0, args.q - 1, min(args.loop_queries, args.q)).round().astype(int)
    if args.method == "chunked":                                       # warm up: page in the kernels first
        per_query_metrics_from_embeddings(qe[:8], ge[:64], gl[:8], gl[:64], None, KS)
    else: loop_metrics(qe, ge, ql, gl, own, subset[:2])
    res: dict = {"peak_reset": _reset_peak()}
    base = _rss_kb("VmRSS") if res["peak_reset"] else _rss_kb("VmHWM")
    if args.method == "chunked":
        t, c = time.perf_counter(), time.process_time()
        pq = per_query_metrics_from_embeddings(qe, ge, ql, gl, own, KS, chunk_size=args.chunk_size)
        res["seconds"], res["cpu_seconds"] = time.perf_counter() - t, time.process_time() - c
        res["metrics"] = summarize_metrics(pq, KS)
        res["ap_subset"] = np.stack([pq[f"AP@{k}"][subset] for k in KS], 1).tolist()
    else:
        tracemalloc.start()
        t, c = time.perf_counter(), time.process_time()
        ap = loop_metrics(qe, ge, ql, gl, own, subset)
        res["seconds"], res["cpu_seconds"] = time.perf_counter() - t, time.process_time() - c
        res["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        res["ap_subset"] = ap.tolist()
        res["n_queries_run"] = len(subset)
    res["extra_peak_rss_mb"] = (_rss_kb("VmHWM") - base) / 1024
    res["data_mb"] = (qe.nbytes + ge.nbytes) / 2**20
    res["torch_threads"] = torch.get_num_threads()
    return res


def run_child(args, method: str) -> dict:
    cmd = [sys.executable, __file__, "--child", method] + [f"--{k.replace('_', '-')}={v}" for k, v in
           dict(q=args.q, g=args.g, d=args.d, labels=args.labels, seed=args.seed, loop_queries=args.loop_queries,
                chunk_size=args.chunk_size).items()]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0: raise SystemExit(f"{method} run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--q", type=int, default=20000, help="queries")
    p.add_argument("--g", type=int, default=20000, help="gallery videos")
    p.add_argument("--d", type=int, default=768, help="embedding size")
    p.add_argument("--labels", type=int, default=1000, help="distinct labels in the gallery")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loop-queries", type=int, default=1000, help="queries the per-query loop runs (then extrapolated)")
    p.add_argument("--chunk-size", type=int, default=512, help="queries ranked at once by the chunked method")
    p.add_argument("--child", choices=["chunked", "loop"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.method = args.child
        print(json.dumps(child(args)))
        return
    print(f"machine: {machine()}")
    print(f"data: Q={args.q} queries, G={args.g} gallery videos, D={args.d}, {args.labels} labels, ks={KS}")
    ch = run_child(args, "chunked")
    lp = run_child(args, "loop")
    n = lp["n_queries_run"]
    loop_full, loop_cpu = lp["seconds"] * args.q / n, lp["cpu_seconds"] * args.q / n
    load = os.getloadavg()[0]
    print(f"embeddings: {ch['data_mb']:.0f} MiB (query + gallery, float32); a [Q, G] float64 matrix would be "
          f"{args.q * args.g * 8 / 2**20:.0f} MiB")
    print("memory: extra peak resident memory over the resident memory once the data is built "
          f"(VmHWM reset via /proc/self/clear_refs: {ch['peak_reset'] and lp['peak_reset']})")
    print(f"chunked  retrieval_metrics_from_embeddings, all {args.q} queries, chunk {args.chunk_size}: "
          f"{ch['seconds']:.1f} s wall ({ch['cpu_seconds']:.1f} s CPU), extra peak RSS {ch['extra_peak_rss_mb']:.0f} MiB")
    print(f"loop     per-query sims + full argsort + AP, {n} of {args.q} queries: {lp['seconds']:.1f} s "
          f"wall -> extrapolated to {args.q} queries: {loop_full:.1f} s wall ({loop_cpu:.1f} s CPU); extra peak RSS {lp['extra_peak_rss_mb']:.0f} MiB "
          f"(tracemalloc peak {lp['tracemalloc_peak_mb']:.1f} MiB)")
    print(f"speed-up (loop extrapolated / chunked): {loop_full / ch['seconds']:.1f}x wall, "
          f"{loop_cpu / ch['cpu_seconds']:.1f}x CPU time (1-min load average at the end: {load:.1f})")
    a, b = np.array(ch["ap_subset"]), np.array(lp["ap_subset"])
    same = int((np.abs(a - b) < 1e-12).all(1).sum())
    print(f"agreement on the {n} loop queries: identical AP@K for {same}/{n} (max |diff| {np.abs(a - b).max():.2e})")
    print("chunked metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in ch["metrics"].items()))


if __name__ == "__main__":
    main()

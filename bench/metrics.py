"""Benchmark: `tfcovr.eval.metrics` against the published evaluation loop, in both regimes, same numbers.

The published loop (CIRCO style, as DESIGN.md section 8 describes it), re-implemented faithfully:
`sims -= 100 * (gallery == query)` excludes the query's own video, one batched `torch.topk(sims, 50)`
over all queries, then a Python loop over queries that marks the top 50 against the query's ground-truth
list (`np.isin`) and sums `cumsum(labels) * labels / rank` for AP@K (CIRCO); R@K = any ground truth in the
top K. Ids are ints here (the published code compares video-name strings, which is slower): the baseline
is, if anything, flattered.

Regimes, timed in one process, interleaved (published, then ours, per repeat), median of the repeats:

- random: random similarities (float32), Q = G = 3,000, about 6 ground truths per query (labels of 7
  videos; the query is one of them and is excluded). Almost no query has a hit in its top K: a weak model.
  Ours: `retrieval_metrics(sim, relevant, ks, exclude)`; the published loop gets the same `sim`.
- embeddings: label-clustered, L2-normalised float32 embeddings, D = 768, where a query lies near its
  ground truths (a trained model). Timed from the embeddings, the similarity matmul included on both sides.
  Ours: `retrieval_metrics_from_embeddings`. Q = G = 3,000 and 10,000.

Embedding rows also time the matmul `Q @ G.T` alone (interleaved likewise), and give the ratio with it
subtracted from both sides: the ranking and scoring alone. Each row also times ours with the first-hit rank (`per_query_metrics*(..., first_hit=True)`, what the
per-query breakdown asks for), and compares every mAP@K and R@K with the published loop's (continuous
scores: no ties, so both rank identically; the published AP is summed in float32).

Finally Q = G = 20,000 from embeddings in a child process: time and extra peak resident memory (VmHWM,
reset through /proc/self/clear_refs once the data is built) of `retrieval_metrics_from_embeddings`, against
the 1.5 GiB `[Q, G]` float32 matrix the published loop holds.

Usage: python bench/metrics.py [--repeats 5] [--big 20000] [--sizes 3000 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from machine import cpu_name

KS = (5, 10, 25, 50)


def machine() -> str:
    "CPU model, cores visible, torch threads and RAM of this machine."
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration): pass
    return (f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores visible, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads{mem}, {platform.system()} {platform.machine()}")


# ---------------------------------------------------------------- the published loop

def published_loop(sims: torch.Tensor,      # [Q, G] similarities (consumed: the exclusion is applied in place)
                   query_ids: np.ndarray,   # [Q] the query's own video id
                   gallery_ids: np.ndarray, # [G] gallery video ids
                   gts: list[np.ndarray],   # per query, its ground-truth video ids
                   ks=KS) -> dict[str, float]:
    "CIRCO-style evaluation: exclusion by -100, batched top-50, a per-query loop for AP@K and R@K."
    sims -= 100 * torch.from_numpy(gallery_ids[None, :] == query_ids[:, None])
    sorted_ids = gallery_ids[torch.topk(sims, dim=-1, k=50).indices.numpy()]
    ap = {k: [] for k in ks}
    rec = {k: [] for k in ks}
    for top, gt in zip(sorted_ids, gts):
        labels = torch.tensor(np.isin(top, gt), dtype=torch.uint8)
        precisions = torch.cumsum(labels, dim=0) * labels
        precisions = precisions / torch.arange(1, labels.shape[0] + 1)
        for k in ks:
            ap[k].append(float(torch.sum(precisions[:k]) / min(len(gt), k)))
            rec[k].append(float(torch.sum(labels[:k]) > 0))
    out = {}
    for k in ks:
        out[f"mAP@{k}"] = 100 * float(np.mean(ap[k]))
        out[f"R@{k}"] = 100 * float(np.mean(rec[k]))
    return out


# ---------------------------------------------------------------- data

def random_problem(n: int, seed: int):
    "Random similarities; labels of 7 videos, so 6 ground truths per query once its own video is excluded."
    r = np.random.default_rng(seed)
    gl = r.permutation(np.arange(n) // 7)
    sim = torch.from_numpy(r.random((n, n), dtype=np.float32))
    ids = np.arange(n)
    rel = torch.from_numpy(gl[:, None] == gl[None, :])
    excl = torch.eye(n, dtype=torch.bool)
    gts = [np.flatnonzero((gl == gl[i]) & (ids != i)) for i in range(n)]
    return sim, rel, excl, ids, gts


def embedding_problem(q: int, g: int, d: int, n_labels: int, seed: int):
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


# ---------------------------------------------------------------- timing

def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def compare(a: dict, b: dict) -> float:
    assert list(a) == list(b), (list(a), list(b))
    return max(abs(a[k] - b[k]) for k in a)


def row(name: str, size: str, fns: dict, repeats: int) -> dict:
    "Time the functions interleaved, `repeats` times each; medians, ratios and the largest metric difference."
    times = {k: [] for k in fns}
    outs = {}
    for _ in range(repeats):
        for k, f in fns.items():
            t, outs[k] = timed(f)
            times[k].append(t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med.setdefault("matmul", 0.0)
    return dict(name=name, size=size, med=med, diff=compare(outs["published"], outs["ours"]),
                diff_fh=compare(outs["ours"], outs["ours+first-hit"]), metrics=outs["ours"])


def random_row(n: int, repeats: int, seed: int = 0) -> dict:
    from tfcovr.eval.metrics import per_query_metrics, retrieval_metrics, summarize_metrics
    sim, rel, excl, ids, gts = random_problem(n, seed)
    return row("random", f"{n} x {n}", {
        "published": lambda: published_loop(sim.clone(), ids, ids, gts),
        "ours": lambda: retrieval_metrics(sim, rel, KS, excl),
        "ours+first-hit": lambda: summarize_metrics(per_query_metrics(sim, rel, KS, excl, first_hit=True), KS),
    }, repeats)


def embedding_row(n: int, repeats: int, d: int, seed: int = 0) -> dict:
    from tfcovr.eval.metrics import per_query_metrics_from_embeddings, retrieval_metrics_from_embeddings, summarize_metrics
    qe, ge, ql, gl, own = embedding_problem(n, n, d, max(2, n // 20), seed)
    ids = np.arange(n)
    gts = [np.flatnonzero((gl == ql[i]) & (ids != own[i])) for i in range(n)]
    Qt, Gt = torch.from_numpy(qe), torch.from_numpy(ge)
    return row("embeddings", f"{n} x {n}", {
        "published": lambda: published_loop(Qt @ Gt.T, own, ids, gts),
        "ours": lambda: retrieval_metrics_from_embeddings(qe, ge, ql, gl, own, KS),
        "matmul": lambda: Qt @ Gt.T,
        "ours+first-hit": lambda: summarize_metrics(
            per_query_metrics_from_embeddings(qe, ge, ql, gl, own, KS, first_hit=True), KS),
    }, repeats)


# ---------------------------------------------------------------- bounded memory at 20,000

def _rss_kb(field: str) -> int:
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return True
    except OSError: return False


def big_child(n: int, d: int, chunk_size: int) -> dict:
    "Build the data, reset the memory peak, run ours once; time and extra peak resident memory."
    from tfcovr.eval.metrics import retrieval_metrics_from_embeddings
    qe, ge, ql, gl, own = embedding_problem(n, n, d, max(2, n // 20), 0)
    retrieval_metrics_from_embeddings(qe[:8], ge[:64], gl[:8], gl[:64], None, KS)   # page in the kernels
    reset = _reset_peak()
    base = _rss_kb("VmRSS") if reset else _rss_kb("VmHWM")
    t, c = time.perf_counter(), time.process_time()
    m = retrieval_metrics_from_embeddings(qe, ge, ql, gl, own, KS, chunk_size=chunk_size)
    return dict(seconds=time.perf_counter() - t, cpu_seconds=time.process_time() - c, peak_reset=reset,
                extra_peak_rss_mb=(_rss_kb("VmHWM") - base) / 1024, data_mb=(qe.nbytes + ge.nbytes) / 2**20, metrics=m)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per method (median reported)")
    p.add_argument("--random-size", type=int, default=3000, help="Q = G of the random-similarity regime")
    p.add_argument("--sizes", type=int, nargs="*", default=[3000, 10000], help="Q = G of the embedding regime")
    p.add_argument("--d", type=int, default=768, help="embedding size")
    p.add_argument("--big", type=int, default=20000, help="Q = G of the bounded-memory run (0: skip)")
    p.add_argument("--chunk-size", type=int, default=512, help="queries ranked at once in the bounded-memory run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(big_child(args.big, args.d, args.chunk_size)))
        return
    print(f"machine: {machine()}; 1-min load average at the start: {os.getloadavg()[0]:.1f}")
    print(f"ks={KS}; times are medians of {args.repeats} interleaved repeats in one process")
    rows = [random_row(args.random_size, args.repeats)]
    rows += [embedding_row(n, max(1, args.repeats if n <= 3000 else (args.repeats + 1) // 2), args.d) for n in args.sizes]
    print(f"{'regime':<11} {'Q x G':>13} {'published':>10} {'ours':>8} {'ratio':>6} {'ours+first-hit':>15} {'ratio':>6}"
          f"  {'max |metric diff|':>17}  {'matmul':>7} {'ratio without it':>16}")
    for r in rows:
        m = r["med"]
        print(f"{r['name']:<11} {r['size']:>13} {m['published']:>9.3f}s {m['ours']:>7.3f}s "
              f"{m['published'] / m['ours']:>5.1f}x {m['ours+first-hit']:>14.3f}s {m['published'] / m['ours+first-hit']:>5.1f}x"
              f"  {r['diff']:>17.1e}  " + (f"{m['matmul']:>6.3f}s {(m['published'] - m['matmul']) / (m['ours'] - m['matmul']):>15.1f}x"
                                             if m["matmul"] else f"{'-':>7} {'-':>16}"))
        if r["diff_fh"] != 0: raise SystemExit(f"{r['name']} {r['size']}: first_hit changes the metrics ({r['diff_fh']})")
    for r in rows: print(f"  {r['name']} {r['size']} (ours): " + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items()))
    if args.big:
        cmd = [sys.executable, __file__, "--child", f"--big={args.big}", f"--d={args.d}", f"--chunk-size={args.chunk_size}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0: raise SystemExit(f"bounded-memory run failed:\n{res.stderr[-3000:]}")
        b = json.loads(res.stdout.strip().splitlines()[-1])
        n = args.big
        print(f"bounded memory: Q = G = {n}, D = {args.d}, chunk {args.chunk_size}: retrieval_metrics_from_embeddings "
              f"{b['seconds']:.1f} s wall ({b['cpu_seconds']:.1f} s CPU), extra peak RSS {b['extra_peak_rss_mb']:.0f} MiB "
              f"over the {b['data_mb']:.0f} MiB of embeddings (VmHWM reset: {b['peak_reset']}); the published loop's "
              f"[Q, G] float32 matrix alone is {n * n * 4 / 2**20:.0f} MiB")
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in b["metrics"].items()))
    print(f"1-min load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

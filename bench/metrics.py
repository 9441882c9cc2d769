"""Benchmark: `tfcovr.eval.metrics` against the published evaluation loop, in both regimes, same numbers.

Last measured figures (`nice -n 5 python bench/metrics.py` on the project's 2-core AMD EPYC, shared with other jobs
throughout: 1-min load average 3.5 to 3.8, so absolute times are inflated; the ratios are of interleaved medians):

    machine: AMD EPYC, 2 cores visible, torch 2.14.1+cu130 with 2 threads, 24 GiB RAM, Linux x86_64; 1-min load average at the start: 3.5
    ks=(5, 10, 25, 50); seconds are medians of 5 interleaved repeats in one process (fewer at 10,000), ratios = published / ours
    regime             data, Q x G published          dense          lists         labels       lists+fh max|diff| matmul: 1 piece / chunks ceiling ranking only: lists labels CPU-time ratio, lists
    random        sims 3000 x 3000    0.350s  0.039s   9.0x              -              -              -   3.1e-09                        -       -                   -      -                     -
    random     emb D=16 3000 x 3000    0.351s              -  0.025s  14.2x  0.022s  16.2x  0.048s   7.3x   4.7e-09          0.018s / 0.004s   89.0x               16.0x  18.8x                 14.1x
    embeddings   D=768 3000 x 3000    0.507s              -  0.163s   3.1x  0.161s   3.1x  0.167s   3.0x   2.0e-07          0.145s / 0.138s    3.7x               14.2x  15.5x                  3.1x
    embeddings D=768 10000 x 10000    3.656s              -  1.762s   2.1x  1.732s   2.1x  1.771s   2.1x   1.1e-07          1.613s / 1.574s    2.3x               10.9x  13.0x                  2.1x
      random sims 3000 x 3000 (ours): mAP@5 0.089, R@5 0.967, mAP@10 0.098, R@10 2.067, mAP@25 0.131, R@25 5.067, mAP@50 0.155, R@50 9.867
      random emb D=16 3000 x 3000 (ours): mAP@5 0.132, R@5 1.300, mAP@10 0.130, R@10 2.133, mAP@25 0.161, R@25 5.000, mAP@50 0.185, R@50 9.667
      embeddings D=768 3000 x 3000 (ours): mAP@5 12.072, R@5 62.267, mAP@10 7.821, R@10 77.667, mAP@25 5.102, R@25 92.933, mAP@50 6.001, R@50 97.900
      embeddings D=768 10000 x 10000 (ours): mAP@5 6.052, R@5 39.000, mAP@10 3.709, R@10 53.520, mAP@25 2.299, R@25 73.800, mAP@50 2.612, R@50 86.990
    bounded memory, lists path: Q = G = 20000, D = 768, chunk 512: 7.7 s wall (7.1 s CPU), extra peak RSS 98 MiB over the 117 MiB of embeddings (VmHWM reset: True)
      mAP@5 3.826, R@5 28.100, mAP@10 2.317, R@10 40.300, mAP@25 1.408, R@25 60.170, mAP@50 1.589, R@50 74.850
    bounded memory, labels path: Q = G = 20000, D = 768, chunk 512: 7.0 s wall (7.0 s CPU), extra peak RSS 83 MiB over the 117 MiB of embeddings (VmHWM reset: True)
      mAP@5 3.826, R@5 28.100, mAP@10 2.317, R@10 40.300, mAP@25 1.408, R@25 60.170, mAP@50 1.589, R@50 74.850
    the published loop's [Q, G] float32 matrix alone is 1526 MiB
    1-min load average at the end: 3.8

The published loop (CIRCO style, as DESIGN.md section 8 describes it), re-implemented faithfully:
`sims -= 100 * (gallery == query)` excludes the query's own video, one batched `torch.topk(sims, 50)`
over all queries, then a Python loop over queries that marks the top 50 against the query's ground-truth
list (`np.isin`) and sums `cumsum(labels) * labels / rank` for AP@K (CIRCO); R@K = any ground truth in the
top K. Ids are ints here (the published code compares video-name strings, which is slower): the baseline
is, if anything, flattered.

Ours, three ways: the list path `retrieval_metrics_from_lists` (per query, its ground-truth gallery indices
and its excluded ones: what the evaluator calls), the label path `retrieval_metrics_from_embeddings` (ground
truths = the gallery videos of the target label), and, on a given similarity matrix, `retrieval_metrics`.
The ground-truth lists are built from the same labels, so all give the same numbers. `lists+fh` is the list
path with the first-hit rank (`per_query_metrics_from_lists(..., first_hit=True)`, what the per-query
breakdown asks for).

Regimes, timed in one process, interleaved (published, then each of ours, per repeat), median of the repeats:

- random: a weak model, almost no query has a hit in its top K. About 6 ground truths per query (labels of 7
  videos; query i is gallery video i, of its target label, and is excluded), Q = G = 3,000. Row `sims`:
  uniform random float32 similarities, ours `retrieval_metrics(sim, relevant, ks, exclude)`, the published
  loop gets the same matrix. Row `emb D=16`: random Gaussian embeddings of size 16 (random similarities from
  a matmul that costs little), timed from the embeddings, the matmul included on both sides.
- embeddings: label-clustered, L2-normalised float32 embeddings, D = 768, where a query lies near its
  ground truths (a trained model); query i is gallery video i and asks for another label. Timed from the
  embeddings, the similarity matmul included on both sides. Q = G = 3,000 and 10,000.

Rows from embeddings also time the matmul alone (interleaved likewise), in one piece `Q @ G.T` as the published
loop computes it and in chunks of 512 queries into one reused buffer as ours does: the same work on both sides,
which no exact ranking can skip. `ceiling` = published / chunked matmul is the ratio that a ranking costing
nothing would reach: when it is below 3, 3x including the matmul is out of reach, and `ranking only` gives the
ratio with each side's own matmul subtracted (the ranking and scoring alone). Every row compares every mAP@K
and R@K with the published loop's (continuous scores: no ties, so both rank identically; the published AP is
summed in float32), and checks that the list path, the label path and the first-hit variant agree exactly.

Finally Q = G = 20,000 from embeddings, each path in a child process: time and extra peak resident memory
(VmHWM, reset through /proc/self/clear_refs once the data is built), against the 1.5 GiB `[Q, G]` float32
matrix the published loop holds.

The machine is shared with other jobs: wall times carry their load (the 1-min load average is printed at
the start and the end); the ratios are of medians of interleaved repeats in one process.

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

def gt_lists(query_labels: np.ndarray, gallery_labels: np.ndarray, own: np.ndarray) -> list[np.ndarray]:
    "Per query, the gallery videos of its target label other than its own video (sorted indices)."
    order = np.argsort(gallery_labels, kind="stable")
    labels, starts = np.unique(gallery_labels[order], return_index=True)
    members = dict(zip(labels.tolist(), np.split(order, starts[1:])))
    empty = np.zeros(0, np.int64)
    return [m[m != o] for m, o in ((members.get(l, empty), o) for l, o in zip(query_labels.tolist(), own.tolist()))]


def random_problem(n: int, seed: int):
    "Random similarities; labels of 7 videos, so 6 ground truths per query once its own video is excluded."
    r = np.random.default_rng(seed)
    gl = r.permutation(np.arange(n) // 7)
    sim = torch.from_numpy(r.random((n, n), dtype=np.float32))
    rel = torch.from_numpy(gl[:, None] == gl[None, :])
    excl = torch.eye(n, dtype=torch.bool)
    return sim, rel, excl, gl


def random_embeddings(n: int, d: int, seed: int):
    "Random Gaussian embeddings (a weak model): random similarities from a [n, d] x [d, n] matmul."
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d), dtype=np.float32), r.standard_normal((n, d), dtype=np.float32)


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

def chunked_matmul(q: torch.Tensor, g: torch.Tensor, chunk: int = 512):
    "The similarity matmul as ours computes it: [chunk, D] x [D, G] blocks into one reused buffer."
    buf = torch.empty((min(chunk, len(q)), len(g)))
    for o in range(0, len(q), chunk):
        torch.mm(q[o:o + chunk], g.T, out=buf[:len(q[o:o + chunk])])


def compare(a: dict, b: dict) -> float:
    assert list(a) == list(b), (list(a), list(b))
    return max(abs(a[k] - b[k]) for k in a)


def row(name: str, size: str, fns: dict, repeats: int) -> dict:
    "Time the functions interleaved, `repeats` times each: median wall and CPU seconds, and every output."
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    outs = {}
    for _ in range(repeats):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            outs[k] = f()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    ours = [k for k in fns if not k.startswith(("published", "matmul"))]
    diff = max(compare(outs["published"], outs[k]) for k in ours)
    for k in ours:                                                     # all of ours: the very same numbers
        if outs[k] != outs[ours[0]]: raise SystemExit(f"{name} {size}: {k} differs from {ours[0]}")
    return dict(name=name, size=size, med={k: float(np.median(v)) for k, v in wall.items()},
                cpu={k: float(np.median(v)) for k, v in cpu.items()}, diff=diff, metrics=outs[ours[0]])


def random_rows(n: int, repeats: int, seed: int = 0) -> list[dict]:
    from tfcovr.eval.metrics import (per_query_metrics_from_lists, retrieval_metrics, retrieval_metrics_from_embeddings,
                                     retrieval_metrics_from_lists, summarize_metrics)
    sim, rel, excl, gl = random_problem(n, seed)
    ids = np.arange(n)
    gts = gt_lists(gl, gl, ids)
    own = [np.array([i]) for i in ids]
    rows = [row("random", f"sims {n} x {n}", {
        "published": lambda: published_loop(sim.clone(), ids, ids, gts),
        "dense": lambda: retrieval_metrics(sim, rel, KS, excl),
    }, repeats)]
    qe, ge = random_embeddings(n, 16, seed)
    Qt, Gt = torch.from_numpy(qe), torch.from_numpy(ge)
    rows.append(row("random", f"emb D=16 {n} x {n}", {
        "published": lambda: published_loop(Qt @ Gt.T, ids, ids, gts),
        "matmul": lambda: Qt @ Gt.T,
        "matmul chunked": lambda: chunked_matmul(Qt, Gt),
        "lists": lambda: retrieval_metrics_from_lists(qe, ge, gts, own, KS),
        "labels": lambda: retrieval_metrics_from_embeddings(qe, ge, gl, gl, ids, KS),
        "lists+fh": lambda: summarize_metrics(per_query_metrics_from_lists(qe, ge, gts, own, KS, first_hit=True), KS),
    }, repeats))
    return rows


def embedding_row(n: int, repeats: int, d: int, seed: int = 0) -> dict:
    from tfcovr.eval.metrics import (per_query_metrics_from_lists, retrieval_metrics_from_embeddings,
                                     retrieval_metrics_from_lists, summarize_metrics)
    qe, ge, ql, gl, own = embedding_problem(n, n, d, max(2, n // 20), seed)
    ids = np.arange(n)
    gts = gt_lists(ql, gl, own)
    excl = [np.array([o]) for o in own]
    Qt, Gt = torch.from_numpy(qe), torch.from_numpy(ge)
    return row("embeddings", f"D={d} {n} x {n}", {
        "published": lambda: published_loop(Qt @ Gt.T, own, ids, gts),
        "matmul": lambda: Qt @ Gt.T,
        "matmul chunked": lambda: chunked_matmul(Qt, Gt),
        "lists": lambda: retrieval_metrics_from_lists(qe, ge, gts, excl, KS),
        "labels": lambda: retrieval_metrics_from_embeddings(qe, ge, ql, gl, own, KS),
        "lists+fh": lambda: summarize_metrics(per_query_metrics_from_lists(qe, ge, gts, excl, KS, first_hit=True), KS),
    }, repeats)


def table(rows: list[dict]) -> list[str]:
    """The printed comparison: seconds and ratios (published / ours). `matmul`: the similarity matmul alone, in one
    piece as the published loop computes it / in chunks as ours does; `ceiling`: published / chunked matmul, the
    ratio an exact ranking that cost nothing would reach; `ranking only`: (published - its matmul) / (ours - ours)."""
    cols = ("dense", "lists", "labels", "lists+fh")
    out = [f"{'regime':<10} {'data, Q x G':>19} {'published':>9} " + " ".join(f"{c:>14}" for c in cols)
           + f" {'max|diff|':>9} {'matmul: 1 piece / chunks':>24} {'ceiling':>7} {'ranking only: lists':>19} {'labels':>6}"
           + f" {'CPU-time ratio, lists':>21}"]
    for r in rows:
        m, p = r["med"], r["med"]["published"]
        cells = [f"{m[c]:>6.3f}s {p / m[c]:>5.1f}x" if c in m else f"{'-':>14}" for c in cols]
        mm, mc = m.get("matmul"), m.get("matmul chunked")
        mat = f"{mm:.3f}s / {mc:.3f}s" if mm else "-"
        ceil = f"{p / mc:.1f}x" if mc else "-"
        wo = [f"{(p - mm) / (m[c] - mc):.1f}x" if mm else "-" for c in ("lists", "labels")]
        cpu = f"{r['cpu']['published'] / r['cpu']['lists']:.1f}x" if "lists" in m else "-"
        out.append(f"{r['name']:<10} {r['size']:>19} {p:>8.3f}s " + " ".join(cells) + f" {r['diff']:>9.1e} {mat:>24} {ceil:>7}"
                   + f" {wo[0]:>19} {wo[1]:>6} {cpu:>21}")
    return out


# ---------------------------------------------------------------- bounded memory at 20,000

def _rss_kb(field: str) -> int:
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return True
    except OSError: return False


def big_child(n: int, d: int, chunk_size: int, path: str) -> dict:
    "Build the data, reset the memory peak, run one path once; time and extra peak resident memory."
    from tfcovr.eval.metrics import retrieval_metrics_from_embeddings, retrieval_metrics_from_lists
    qe, ge, ql, gl, own = embedding_problem(n, n, d, max(2, n // 20), 0)
    gts, excl = gt_lists(ql, gl, own), [np.array([o]) for o in own]
    retrieval_metrics_from_lists(qe[:8], ge[:64], [np.array([i]) for i in range(8)], None, KS)   # page in the kernels
    retrieval_metrics_from_embeddings(qe[:8], ge[:64], gl[:8], gl[:64], None, KS)
    reset = _reset_peak()
    base = _rss_kb("VmRSS") if reset else _rss_kb("VmHWM")
    t, c = time.perf_counter(), time.process_time()
    if path == "lists": m = retrieval_metrics_from_lists(qe, ge, gts, excl, KS, chunk_size=chunk_size)
    else: m = retrieval_metrics_from_embeddings(qe, ge, ql, gl, own, KS, chunk_size=chunk_size)
    return dict(seconds=time.perf_counter() - t, cpu_seconds=time.process_time() - c, peak_reset=reset,
                extra_peak_rss_mb=(_rss_kb("VmHWM") - base) / 1024, data_mb=(qe.nbytes + ge.nbytes) / 2**20, metrics=m)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per method (median reported)")
    p.add_argument("--random-size", type=int, default=3000, help="Q = G of the random regime")
    p.add_argument("--sizes", type=int, nargs="*", default=[3000, 10000], help="Q = G of the embedding regime")
    p.add_argument("--d", type=int, default=768, help="embedding size")
    p.add_argument("--big", type=int, default=20000, help="Q = G of the bounded-memory run (0: skip)")
    p.add_argument("--chunk-size", type=int, default=512, help="queries ranked at once in the bounded-memory run")
    p.add_argument("--child", choices=["lists", "labels"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(big_child(args.big, args.d, args.chunk_size, args.child)))
        return
    print(f"machine: {machine()}; 1-min load average at the start: {os.getloadavg()[0]:.1f}")
    print(f"ks={KS}; seconds are medians of {args.repeats} interleaved repeats in one process (fewer at 10,000), "
          "ratios = published / ours")
    rows = random_rows(args.random_size, args.repeats)
    rows += [embedding_row(n, max(1, args.repeats if n <= 3000 else (args.repeats + 1) // 2), args.d) for n in args.sizes]
    for line in table(rows): print(line)
    for r in rows: print(f"  {r['name']} {r['size']} (ours): " + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items()))
    if args.big:
        n = args.big
        for path in ("lists", "labels"):
            cmd = [sys.executable, __file__, f"--child={path}", f"--big={n}", f"--d={args.d}", f"--chunk-size={args.chunk_size}"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0: raise SystemExit(f"bounded-memory run failed:\n{res.stderr[-3000:]}")
            b = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"bounded memory, {path} path: Q = G = {n}, D = {args.d}, chunk {args.chunk_size}: {b['seconds']:.1f} s wall "
                  f"({b['cpu_seconds']:.1f} s CPU), extra peak RSS {b['extra_peak_rss_mb']:.0f} MiB over the "
                  f"{b['data_mb']:.0f} MiB of embeddings (VmHWM reset: {b['peak_reset']})")
            print("  " + ", ".join(f"{k} {v:.3f}" for k, v in b["metrics"].items()))
        print(f"the published loop's [Q, G] float32 matrix alone is {n * n * 4 / 2**20:.0f} MiB")
    print(f"1-min load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

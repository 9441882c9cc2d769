"""Retrieval metrics against hand-worked rankings and a brute-force, one-query-at-a-time reference."""
import numpy as np
import pytest
import torch

from tfcovr.eval.metrics import (ap_at_k, map_at_k, per_query_metrics, per_query_metrics_from_embeddings,
                                 per_query_metrics_from_lists, recall_at_k, retrieval_metrics,
                                 retrieval_metrics_from_embeddings, retrieval_metrics_from_lists, summarize_metrics)


def brute_force(sim, rel, excl, ks):
    "Per query: rank the non-excluded items by (-score, index); AP@K, R@K and first-hit rank by plain loops."
    Q, G = sim.shape
    ap = {k: [] for k in ks}
    first = []
    for i in range(Q):
        order = sorted((j for j in range(G) if not excl[i, j]), key=lambda j: (-float(sim[i, j]), j))
        n = sum(1 for j in order if rel[i, j])
        if n == 0: raise ValueError(f"query {i} has no GT")
        first.append(next(r for r, j in enumerate(order, 1) if rel[i, j]))
        for k in ks:
            found, s = 0, 0.0
            for r, j in enumerate(order[:k], 1):
                if rel[i, j]:
                    found += 1
                    s += found / r
            ap[k].append(s / min(n, k))
    metrics = {}
    for k in ks:
        metrics[f"mAP@{k}"] = 100 * float(np.mean(ap[k]))
        metrics[f"R@{k}"] = 100 * float(np.mean([f <= k for f in first]))
    return {k: np.array(v) for k, v in ap.items()}, np.array(first), metrics


def labelled_problem(seed, Q, G, D, n_labels, integer=False, own_fraction=0.5):
    "Random embeddings (clustered by label), labels, and the query's own gallery position for some queries."
    g = torch.Generator().manual_seed(seed)
    gl = torch.arange(G) % n_labels
    centres = torch.randn(n_labels, D, generator=g)
    ge = centres[gl] + torch.randn(G, D, generator=g)
    ql = torch.randint(0, n_labels, (Q,), generator=g)
    qe = centres[ql] + 1.5 * torch.randn(Q, D, generator=g)
    if integer: qe, ge = qe.round().clamp(-3, 3), ge.round().clamp(-3, 3)   # exact sims, many ties
    qgi = torch.where(torch.rand(Q, generator=g) < own_fraction, torch.randint(0, G, (Q,), generator=g), -1)
    return qe, ge, ql, gl, qgi


def dense_inputs(qe, ge, ql, gl, qgi):
    sim = (qe.double() @ ge.double().T).numpy()
    rel = (ql[:, None] == gl[None]).numpy()
    excl = np.zeros_like(rel)
    own = np.flatnonzero(qgi.numpy() >= 0)
    excl[own, qgi.numpy()[own]] = True
    return sim, rel, excl


# ---------------------------------------------------------------- hand-worked cases

SIM = np.array([[.9, .8, .7, .6, .5, .4]])  # ranking = index order


@pytest.mark.parametrize("gts,k,expected", [
    ([0, 2, 5], 5, (1 + 2 / 3) / 3),        # several GTs, one past the cut
    ([0, 2, 5], 2, 1 / 2),                  # denominator min(|G|, K) = 2
    ([1], 5, 1 / 2),                        # fewer GTs than K
    ([4], 3, 0.0),                          # GT below the cut
    ([0, 1, 2, 3, 4, 5], 5, 1.0),           # more GTs than K, all top ranks hit
    ([1, 2, 3], 2, (1 / 2) / 2),            # more GTs than K, first rank missed
    ([0, 2], 10, (1 + 2 / 3) / 2),          # K beyond the end of the gallery
])
def test_hand_worked_ap(gts, k, expected):
    rel = np.zeros_like(SIM, dtype=bool)
    rel[0, gts] = True
    pq = per_query_metrics(SIM, rel, ks=(k,), first_hit=True)
    assert pq[f"AP@{k}"][0] == pytest.approx(expected)
    assert pq["first_hit_rank"][0] == min(gts) + 1
    assert retrieval_metrics(SIM, rel, ks=(k,))[f"mAP@{k}"] == pytest.approx(100 * expected)


def test_primitives_on_hits():
    hits = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], bool)
    n = np.array([2, 3])
    np.testing.assert_allclose(ap_at_k(hits, n, 4), [(1 + 2 / 3) / 2, (1 / 4) / 3])
    assert map_at_k(hits, n, 1) == pytest.approx(50.0)
    assert recall_at_k(hits, 3) == pytest.approx(50.0)
    assert recall_at_k(hits, 4) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="query 1: 2 hits in the top 4 but only 1"):
        ap_at_k(np.array([[1, 0, 0, 0], [1, 1, 0, 0]], bool), np.array([1, 1]), 4)


def test_exclusion_removes_the_query_from_its_ranking():
    rel = np.zeros_like(SIM, dtype=bool)
    rel[0, [0, 2]] = True            # item 0 is the query itself and carries the target label
    excl = np.zeros_like(rel)
    excl[0, 0] = True
    pq = per_query_metrics(SIM, rel, ks=(5,), exclude=excl, first_hit=True)
    assert pq["AP@5"][0] == pytest.approx(1 / 2)        # item 2 moves up to rank 2
    assert pq["n_relevant"][0] == 1
    assert pq["first_hit_rank"][0] == 2
    assert pq["top_index"][0].tolist() == [1, 2, 3, 4, 5]
    assert per_query_metrics(SIM, rel, ks=(5,))["AP@5"][0] == pytest.approx((1 + 2 / 3) / 2)


def test_query_without_gt_raises_naming_it():
    sim = np.tile(SIM, (3, 1))
    rel = np.ones_like(sim, dtype=bool)
    rel[2] = False
    with pytest.raises(ValueError, match="query 2 has no relevant"):
        retrieval_metrics(sim, rel)
    rel[2] = False
    rel[2, 3] = True
    excl = np.zeros_like(rel)
    excl[2, 3] = True                # its only GT is the query itself
    with pytest.raises(ValueError, match="query 2 has no relevant"):
        retrieval_metrics(sim, rel, exclude=excl)
    with pytest.raises(ValueError, match="query 2 has no relevant"):
        retrieval_metrics_from_embeddings(np.eye(3), np.eye(3), [0, 1, 7], [0, 1, 2])


def test_ties_broken_by_lower_gallery_index():
    sim = np.array([[.5, .5, .5, .9, .5]])
    rel = np.array([[False, False, True, False, False]])
    pq = per_query_metrics(sim, rel, ks=(2, 3, 5), first_hit=True)
    assert pq["top_index"][0].tolist() == [3, 0, 1, 2, 4]
    assert pq["first_hit_rank"][0] == 4
    assert pq["AP@5"][0] == pytest.approx(1 / 4)
    assert pq["AP@3"][0] == 0.0
    excl = np.array([[False, True, False, False, False]])
    assert per_query_metrics(sim, rel, ks=(3,), exclude=excl)["AP@3"][0] == pytest.approx(1 / 3)


def test_all_equal_scores_rank_by_index():
    sim = np.zeros((2, 40), np.float32)
    rel = np.zeros((2, 40), bool)
    rel[0, 7] = rel[1, 39] = True
    pq = per_query_metrics(sim, rel, ks=(10, 25), first_hit=True)
    assert pq["first_hit_rank"].tolist() == [8, 40]
    assert pq["top_index"][0].tolist() == list(range(25))
    assert pq["AP@10"].tolist() == pytest.approx([1 / 8, 0.0])


def test_numpy_and_torch_inputs_agree():
    qe, ge, ql, gl, qgi = labelled_problem(1, 20, 30, 6, 5)
    sim, rel, excl = dense_inputs(qe, ge, ql, gl, qgi)
    m = retrieval_metrics(sim, rel, (1, 5, 10), excl)
    assert retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(rel), (1, 5, 10), torch.from_numpy(excl)) == m
    assert retrieval_metrics(sim, rel, (1, 5, 10), excl, chunk_size=3) == m
    assert retrieval_metrics_from_embeddings(qe.numpy(), ge.numpy(), ql.numpy(), gl.numpy(), qgi.numpy(),
                                             (1, 5, 10), dtype=torch.float64) == m


def test_string_labels():
    qe, ge, ql, gl, qgi = labelled_problem(2, 15, 25, 4, 4)
    names = np.array(["vault", "floor", "beam", "bars"])
    a = retrieval_metrics_from_embeddings(qe, ge, ql, gl, qgi, (5,))
    b = retrieval_metrics_from_embeddings(qe, ge, names[ql.numpy()], names[gl.numpy()], qgi, (5,))
    assert a == b


# ---------------------------------------------------------------- against the brute-force reference

@pytest.mark.parametrize("seed,integer,G", [(0, False, 500), (1, True, 500), (2, True, 37), (3, True, 8)])
def test_chunked_equals_dense_and_reference(seed, integer, G):
    Q, ks = 300, (5, 10, 25, 50)
    qe, ge, ql, gl, qgi = labelled_problem(seed, Q, G, 16, min(40, G // 2), integer=integer)
    sim, rel, excl = dense_inputs(qe, ge, ql, gl, qgi)
    # float64 similarities are exact for the integer case and order-stable for the continuous one
    chunked = per_query_metrics_from_embeddings(qe, ge, ql, gl, qgi, ks, chunk_size=64, dtype=torch.float64, first_hit=True)
    dense = per_query_metrics(sim, rel, ks, excl, chunk_size=100, first_hit=True)
    for key in ["first_hit_rank", "n_relevant", "hits", "top_index"] + [f"AP@{k}" for k in ks]:
        np.testing.assert_array_equal(chunked[key], dense[key], err_msg=key)
    ap, first, metrics = brute_force(sim, rel & ~excl, excl, ks)
    np.testing.assert_array_equal(chunked["first_hit_rank"], first)
    for k in ks: np.testing.assert_allclose(chunked[f"AP@{k}"], ap[k], rtol=0, atol=1e-12)
    got = summarize_metrics(chunked, ks)
    assert list(got) == list(metrics)
    for key, v in metrics.items(): assert got[key] == pytest.approx(v, abs=1e-9), key


def test_float32_embeddings_with_ties_match_reference():
    qe, ge, ql, gl, qgi = labelled_problem(4, 120, 200, 8, 20, integer=True)
    sim, rel, excl = dense_inputs(qe, ge, ql, gl, qgi)   # integer sims: exact in float32 too
    got = retrieval_metrics_from_embeddings(qe, ge, ql, gl, qgi, (5, 10), chunk_size=32)
    _, _, ref = brute_force(sim, rel & ~excl, excl, (5, 10))
    for key, v in ref.items(): assert got[key] == pytest.approx(v, abs=1e-9), key


def _best_highest_index_first(x, kk):
    "A legal selection that resolves ties the worst way for us: the highest index first."
    i = x.flip(1).sort(dim=1, descending=True, stable=True).indices
    return (x.shape[1] - 1 - i)[:, :kk]


def _descending_highest_index_first(v, i):
    "A legal descending sort that puts equal scores in the worst order for us: the highest column first."
    o = v.shape[1] - 1 - v.flip(1).sort(dim=1, descending=True, stable=True).indices
    return v.gather(1, o), i.gather(1, o)


@pytest.mark.parametrize("G", [120, 1500])
def test_ties_do_not_depend_on_selection_tie_order(monkeypatch, G):
    "The selection may return any of several tied items; the ranking must still be stable by gallery index."
    from tfcovr.eval import metrics
    qe, ge, ql, gl, qgi = labelled_problem(7, 150, G, 6, 12, integer=True)
    sim, rel, excl = dense_inputs(qe, ge, ql, gl, qgi)
    _, first, ref = brute_force(sim, rel & ~excl, excl, (1, 5, 10))
    top, _ = brute_top(sim, rel & ~excl, excl, 10)
    monkeypatch.setattr(metrics, "_best", _best_highest_index_first)
    monkeypatch.setattr(metrics, "_descending", _descending_highest_index_first)
    assert metrics._best(torch.tensor([[1., 2., 2., 0., 2.]]), 2).tolist() == [[4, 2]]   # the patch is active
    pq = per_query_metrics_from_embeddings(qe, ge, ql, gl, qgi, (1, 5, 10), chunk_size=40, first_hit=True)
    np.testing.assert_array_equal(pq["top_index"], top)
    np.testing.assert_array_equal(pq["first_hit_rank"], first)
    got = summarize_metrics(pq, (1, 5, 10))
    for key, v in ref.items(): assert got[key] == pytest.approx(v, abs=1e-9), key
    pq = per_query_metrics(np.array([[.5, .9, .5, .5, .5, .1]]), np.array([[0, 0, 0, 0, 1, 0]], bool), ks=(3,))
    assert pq["top_index"][0].tolist() == [1, 0, 2]


def test_bad_inputs_raise():
    qe, ge, ql, gl, qgi = labelled_problem(5, 4, 6, 3, 2)
    with pytest.raises(ValueError, match="must share D"):
        retrieval_metrics_from_embeddings(qe, ge[:, :2], ql, gl)
    with pytest.raises(ValueError, match="expected 4 query labels"):
        retrieval_metrics_from_embeddings(qe, ge, ql[:3], gl)
    with pytest.raises(ValueError, match="query 0: query_gallery_index 6"):
        retrieval_metrics_from_embeddings(qe, ge, ql, gl, [6, -1, -1, -1])
    bad = qe.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="query 2: similarity is not finite"):
        retrieval_metrics_from_embeddings(bad, ge, ql, gl)
    with pytest.raises(ValueError, match="ks must be distinct"):
        retrieval_metrics(np.zeros((1, 2)), np.ones((1, 2), bool), ks=(5, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    qe, ge, ql, gl, qgi = labelled_problem(6, 200, 300, 16, 30, integer=True)
    cpu = retrieval_metrics_from_embeddings(qe, ge, ql, gl, qgi)
    gpu = retrieval_metrics_from_embeddings(qe.cuda(), ge.cuda(), ql, gl, qgi)
    assert gpu == cpu


# ---------------------------------------------------------------- the fast path against the reference

def brute_top(sim, rel, excl, kmax):
    "Per query: the top `kmax` gallery indices of the ranking by (-score, index), -1 past its end, and their relevance."
    Q, G = sim.shape
    top = np.full((Q, kmax), -1)
    for i in range(Q):
        order = sorted((j for j in range(G) if not excl[i, j]), key=lambda j: (-float(sim[i, j]), j))[:kmax]
        top[i, :len(order)] = order
    return top, np.where(top >= 0, np.take_along_axis(rel, np.maximum(top, 0), 1), False)


@pytest.mark.parametrize("seed,integer,exclusion,G,ks", [
    (10, False, "index", 1500, (1, 5, 10, 25, 50)),   # candidates from the best blocks, one excluded index per query
    (11, True, "index", 1500, (1, 5, 10, 25, 50)),    # ties at every cut
    (12, True, "few", 1200, (5, 10)),                 # a bool mask with a few excluded items per row
    (13, False, "many", 1200, (5, 10)),               # a bool mask with many excluded items per row
    (14, True, "none", 900, (1, 10)),
    (15, True, "index", 30, (5, 50)),                 # K larger than the gallery
])
def test_fast_path_equals_brute_force(seed, integer, exclusion, G, ks):
    "Top indices, hits, |G_q|, AP@K, R@K and (when asked) the first-hit rank equal the per-query reference."
    Q, kmax = 90, max(ks)
    qe, ge, ql, gl, qgi = labelled_problem(seed, Q, G, 6, G // 3, integer=integer, own_fraction=0.7)  # ~3 GTs each
    sim, rel, _ = dense_inputs(qe, ge, ql, gl, qgi)
    r = np.random.default_rng(seed)
    excl = np.zeros_like(rel)
    if exclusion == "index": excl[np.flatnonzero(qgi >= 0), qgi[qgi >= 0]] = True
    elif exclusion == "few": excl = r.random(rel.shape) < 3 / G
    elif exclusion == "many": excl = r.random(rel.shape) < 0.05
    if exclusion == "few": assert excl.sum(1).max() <= 16
    if exclusion == "many": assert excl.sum(1).min() > 16
    rel[np.arange(Q), r.integers(0, G, Q)] = True          # at least one GT, most likely not excluded
    for i in np.flatnonzero(~(rel & ~excl).any(1)): rel[i, np.flatnonzero(~excl[i])[0]] = True
    n_gt = (rel & ~excl).sum(1)
    assert (n_gt < kmax).any()                              # queries with fewer GTs than K
    ap, first, ref = brute_force(sim, rel & ~excl, excl, ks)
    top, hits = brute_top(sim, rel & ~excl, excl, kmax)
    for fh in (True, False):
        pq = per_query_metrics(sim, rel, ks, excl, chunk_size=32, first_hit=fh)
        np.testing.assert_array_equal(pq["top_index"], top)
        np.testing.assert_array_equal(pq["hits"], hits)
        np.testing.assert_array_equal(pq["n_relevant"], n_gt)
        for k in ks: np.testing.assert_allclose(pq[f"AP@{k}"], ap[k], rtol=0, atol=1e-12)
        if fh: np.testing.assert_array_equal(pq["first_hit_rank"], first)
        else: assert "first_hit_rank" not in pq
    got = retrieval_metrics(sim, rel, ks, excl)
    assert list(got) == list(ref)
    for key, v in ref.items(): assert got[key] == pytest.approx(v, abs=1e-9), key


def test_embeddings_fast_path_equals_brute_force():
    "From embeddings and labels (the query's own video excluded), on a gallery large enough for the candidate path."
    Q, G, ks = 80, 1000, (5, 10, 50)
    qe, ge, ql, gl, qgi = labelled_problem(20, Q, G, 6, 250, integer=True, own_fraction=0.8)   # 4 GTs each, ties
    sim, rel, excl = dense_inputs(qe, ge, ql, gl, qgi)
    ap, first, ref = brute_force(sim, rel & ~excl, excl, ks)
    top, hits = brute_top(sim, rel & ~excl, excl, max(ks))
    pq = per_query_metrics_from_embeddings(qe, ge, ql, gl, qgi, ks, chunk_size=30, first_hit=True)  # float32: integer sims are exact
    np.testing.assert_array_equal(pq["top_index"], top)
    np.testing.assert_array_equal(pq["hits"], hits)
    np.testing.assert_array_equal(pq["first_hit_rank"], first)
    for k in ks: np.testing.assert_allclose(pq[f"AP@{k}"], ap[k], rtol=0, atol=1e-12)
    assert "first_hit_rank" not in per_query_metrics_from_embeddings(qe, ge, ql, gl, qgi, ks)
    got = retrieval_metrics_from_embeddings(qe, ge, ql, gl, qgi, ks, chunk_size=30)
    for key, v in ref.items(): assert got[key] == pytest.approx(v, abs=1e-9), key


# ---------------------------------------------------------------- the block selection

@pytest.mark.parametrize("G,kk", [(30, 6), (200, 51), (1500, 1), (1500, 11), (3001, 51), (10007, 51)])
@pytest.mark.parametrize("kind", ["continuous", "integer", "excluded"])
def test_top_selects_the_best_scores(G, kk, kind):
    "The kk best scores of every row, as topk over the whole row finds them, each item once."
    from tfcovr.eval.metrics import _top
    g = torch.Generator().manual_seed(G + kk)
    s = torch.randn(24, G, generator=g) if kind == "continuous" else torch.randint(0, 40, (24, G), generator=g).float()
    s[0] = 0.0                                            # one tie over the whole row
    s[1, :G - 3] = float("-inf")                          # fewer finite items than kk in a block-sized row
    if kind == "excluded": s[torch.rand(24, G, generator=g) < 0.2] = float("-inf")
    v, i = _top(s, kk)
    assert torch.equal(v, s.topk(kk, dim=1).values)
    assert torch.equal(s.gather(1, i), v)
    assert all(len(set(r)) == kk for r in i.tolist())


# ---------------------------------------------------------------- ground truths as lists

def list_problem(seed, Q, G, D, integer, max_gt=8, max_excl=4):
    "Random embeddings; per query a random set of GTs and a disjoint random set of excluded items; their dense masks."
    r = np.random.default_rng(seed)
    qe, ge = r.standard_normal((Q, D)), r.standard_normal((G, D))
    if integer: qe, ge = np.clip(np.round(qe), -2, 2), np.clip(np.round(ge), -2, 2)   # exact sims, many ties
    rel = [r.choice(G, r.integers(1, max_gt + 1), replace=False) for _ in range(Q)]
    excl = [r.choice(np.setdiff1d(np.arange(G), g_), r.integers(0, max_excl + 1), replace=False) for g_ in rel]
    rel_d, excl_d = np.zeros((Q, G), bool), np.zeros((Q, G), bool)
    for i in range(Q): rel_d[i, rel[i]], excl_d[i, excl[i]] = True, True
    return qe.astype(np.float32), ge.astype(np.float32), rel, excl, rel_d, excl_d


@pytest.mark.parametrize("seed,integer,G,chunk", [(30, False, 1500, 32), (31, True, 1500, 25), (32, True, 37, 7),
                                                  (33, True, 6, 4), (34, False, 400, 1000)])
def test_lists_equal_dense_masks_and_reference(seed, integer, G, chunk):
    "Every output equals per_query_metrics on the equivalent dense masks and the one-query-at-a-time reference."
    Q, ks = 70, (1, 5, 10, 50)
    qe, ge, rel, excl, rel_d, excl_d = list_problem(seed, Q, G, 6, integer, max_gt=min(8, G // 2), max_excl=min(4, G // 3))
    sim = qe.astype(np.float64) @ ge.astype(np.float64).T   # exact in float32 too for the integer case
    dtype = torch.float32 if integer else torch.float64     # float64: the reference's order for continuous scores
    pq = per_query_metrics_from_lists(qe, ge, rel, excl, ks, chunk_size=chunk, dtype=dtype, first_hit=True)
    dense = per_query_metrics(sim, rel_d, ks, excl_d, first_hit=True)
    assert list(pq) == list(dense)
    if integer:
        for key in dense: np.testing.assert_array_equal(pq[key], dense[key], err_msg=key)
    ap, first, ref = brute_force(sim, rel_d, excl_d, ks)
    top, hits = brute_top(sim, rel_d, excl_d, max(ks))
    np.testing.assert_array_equal(pq["top_index"], top)
    np.testing.assert_array_equal(pq["hits"], hits)
    np.testing.assert_array_equal(pq["first_hit_rank"], first)
    np.testing.assert_array_equal(pq["n_relevant"], [len(r) for r in rel])
    for k in ks: np.testing.assert_allclose(pq[f"AP@{k}"], ap[k], rtol=0, atol=1e-12)
    got = retrieval_metrics_from_lists(qe, ge, rel, excl, ks, chunk_size=chunk, dtype=dtype)
    assert list(got) == list(ref)
    for key, v in ref.items(): assert got[key] == pytest.approx(v, abs=1e-9), key


def test_lists_hand_worked_circo_convention():
    "AP@K = sum_{k<=K} rel_k P@k / min(|G_q|, K), with the excluded items out of the ranking."
    ge = np.eye(6, dtype=np.float32)
    qe = np.array([[.9, .8, .7, .6, .5, .4]] * 3, np.float32)    # ranking = index order
    pq = per_query_metrics_from_lists(qe, ge, [[0, 2, 5], [3], [1, 2, 3, 4]], [[], [0, 1], [0]], ks=(2, 5), first_hit=True)
    np.testing.assert_allclose(pq["AP@5"], [(1 + 2 / 3) / 3, 1 / 2, 1.0])   # query 1: ranking 2, 3, 4, 5
    np.testing.assert_allclose(pq["AP@2"], [1 / 2, 1 / 2, 1.0])             # min(|G_q|, 2) = 2, 1, 2
    assert pq["first_hit_rank"].tolist() == [1, 2, 1]
    assert pq["top_index"][1].tolist() == [2, 3, 4, 5, -1]


def test_lists_from_labels_equal_label_path():
    "GT lists built from labels, the query's own video excluded, give the label path's numbers exactly."
    Q, G = 120, 1300
    qe, ge, ql, gl, qgi = labelled_problem(40, Q, G, 8, 200, integer=True, own_fraction=1.0)
    own = qgi.numpy()
    rel = [np.setdiff1d(np.flatnonzero(gl.numpy() == ql[i].item()), [own[i]]) for i in range(Q)]
    by_label = per_query_metrics_from_embeddings(qe, ge, ql, gl, qgi, chunk_size=50, first_hit=True)
    by_list = per_query_metrics_from_lists(qe, ge, rel, [[o] for o in own], chunk_size=50, first_hit=True)
    assert list(by_list) == list(by_label)
    for key in by_label: np.testing.assert_array_equal(by_list[key], by_label[key], err_msg=key)


def test_first_hit_only_when_asked():
    qe, ge, ql, gl, qgi = labelled_problem(41, 10, 30, 4, 5)
    sim, rel, excl = dense_inputs(qe, ge, ql, gl, qgi)
    lists = [np.flatnonzero(r) for r in rel & ~excl]
    outs = [per_query_metrics(sim, rel, exclude=excl), per_query_metrics_from_embeddings(qe, ge, ql, gl, qgi),
            per_query_metrics_from_lists(qe, ge, lists)]
    for pq in outs: assert list(pq) == ["AP@5", "AP@10", "AP@25", "AP@50", "n_relevant", "hits", "top_index"]
    asked = per_query_metrics_from_lists(qe, ge, lists, first_hit=True)
    assert list(asked) == ["AP@5", "AP@10", "AP@25", "AP@50", "first_hit_rank", "n_relevant", "hits", "top_index"]


@pytest.mark.parametrize("relevant,exclude,message", [
    ([[1], []], None, "query 1 has no relevant, non-excluded gallery item"),
    ([[1], [2, 3, 2]], None, "query 1: relevant lists gallery index 2 more than once"),
    ([[1], [4]], None, r"query 1: relevant gallery index 4 is outside \[0, 4\)"),
    ([[-1], [2]], None, r"query 0: relevant gallery index -1 is outside \[0, 4\)"),
    ([[1], [2]], [[0], [7]], r"query 1: exclude gallery index 7 is outside \[0, 4\)"),
    ([[1], [2, 3]], [[0], [3]], "query 1: gallery index 3 is both relevant and excluded"),
    ([[1], [2.0]], None, "query 1: relevant must hold integer gallery indices"),
    ([[1], [[2]]], None, "query 1: relevant must be a 1-d list of gallery indices"),
    ([1, [2]], None, "query 0: relevant must be a 1-d list of gallery indices"),
    ([[1], [2], [3]], None, "relevant must hold one index list per query: expected 2, got 3"),
    ([[1], [2]], [[0]], "exclude must hold one index list per query: expected 2, got 1"),
    (5, None, "relevant must be a sequence of 2 index lists"),
])
def test_lists_bad_input_raises(relevant, exclude, message):
    qe, ge = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=message):
        per_query_metrics_from_lists(qe, ge, relevant, exclude)


def test_lists_accept_arrays_tensors_and_repeated_exclusions():
    qe, ge, rel, excl, _, _ = list_problem(42, 20, 300, 5, True)
    a = per_query_metrics_from_lists(qe, ge, rel, excl)
    b = per_query_metrics_from_lists(torch.from_numpy(qe), torch.from_numpy(ge), [torch.from_numpy(r) for r in rel],
                                     [list(e) + list(e) for e in excl])
    for key in a: np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_lists_gpu_matches_cpu():
    qe, ge, rel, excl, _, _ = list_problem(43, 200, 1500, 16, True)
    cpu = per_query_metrics_from_lists(qe, ge, rel, excl, first_hit=True)
    gpu = per_query_metrics_from_lists(torch.from_numpy(qe).cuda(), torch.from_numpy(ge).cuda(), rel, excl, first_hit=True)
    for key in cpu: np.testing.assert_array_equal(gpu[key], cpu[key], err_msg=key)


def test_summary_from_per_query_ap_equals_summary_from_hits():
    "summarize_metrics reads the per-query AP@K when present; from hits and |G_q| alone it gives the very same numbers."
    qe, ge, rel, excl, _, _ = list_problem(44, 60, 400, 5, True)
    pq = per_query_metrics_from_lists(qe, ge, rel, excl)
    assert summarize_metrics(pq) == summarize_metrics({k: pq[k] for k in ("hits", "n_relevant")})
    half = {k: pq[k][:30] for k in ("hits", "n_relevant")} | {"AP@5": pq["AP@5"]}   # a stale AP@5 of another length
    assert summarize_metrics(half, (5,))["mAP@5"] == map_at_k(pq["hits"][:30], pq["n_relevant"][:30], 5)

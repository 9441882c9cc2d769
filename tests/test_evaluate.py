"""The evaluation protocol on a tiny synthetic benchmark: perfect and video-only scores, a unique-video gallery, query
exclusion, unreachable ground truths, the protocol card, the results files, bootstrap intervals and the figures."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch.nn import functional as F

from tfcovr.core import file_sha256, to_dict
from tfcovr.eval.evaluate import (ABLATION_NAMES, ROW_NAMES, EvaluateConfig, TableRow, bootstrap_ci, build_gallery, evaluate_model, evaluate_table,
                                  query_features, table_rows)
from tfcovr.models.composed import ArrayEmbeddings
from tfcovr.toys import PrototypeModel, synthetic_benchmark
from tfcovr.eval.metrics import DEFAULT_KS
from tfcovr.eval.report import ReportConfig, report_figures, write_reports

ROW_KEYS = {"model", "modalities", "fusion", "query_frames", "target_frames", "mAP@5", "mAP@10", "mAP@25", "mAP@50"}
# the Stage-2 runs of the tests: row -> (encoder, the saved config's query and fusion)
RUNS = {"TF-CoVR-Base": ("emb", "fusion", "combiner"), "1-frame": ("emb1f", "fusion", "combiner"), "text-only": ("emb", "text", None),
        "avg-fusion": ("emb", "fusion", "average"), "Stage-2-only": ("emb", "fusion", "combiner")}
TARGETS = {"1-frame": "emb"}   # the image baseline: 1-frame queries, 8-frame targets
VIDEO_ONLY = {"video-only": {"embeddings": "emb"}}
ALL_ROWS = ["TF-CoVR-Base", "1-frame", "Stage-2-only", "text-only", VIDEO_ONLY]
ABLATIONS = ["avg-fusion"]


@pytest.fixture(scope="module")
def bench():
    "30 videos in 6 labels (2 val + 3 test each) over two datasets, prototype embeddings, test triplets."
    return synthetic_benchmark(seed=0)


class NoisyModel(PrototypeModel):
    "A stand-in that mixes the target prototype with the query video: good, not perfect."
    def encode_query(self, video_emb, texts):
        return F.normalize(super().encode_query(video_emb, texts) + 0.7 * F.normalize(video_emb, dim=-1), dim=-1)


def _config(query: str, fusion: str | None) -> dict:
    "A config.json as `ComposedModel.save_pretrained` writes it (the parts the table reads)."
    return {"video_dim": 16, "query": query, "text": None if query == "video" else {"name": "minilm"},
            "fusion": None if fusion is None else {"name": fusion, "hidden_dim": 64, "dropout": 0.5}}


@pytest.fixture(scope="module")
def stage2_root(tmp_path_factory):
    "<root>/<run>/model/config.json for every run of RUNS (their files are hashed into the protocol card)."
    root = tmp_path_factory.mktemp("stage2")
    for run, (_, query, fusion) in RUNS.items():
        (root / run / "model").mkdir(parents=True)
        (root / run / "model" / "config.json").write_text(json.dumps(_config(query, fusion)))
    return root


def _loaders(bench):
    "Stand-in loaders: the perfect model for TF-CoVR-Base, the noisy one for every other run; caches by folder name."
    one_frame = ArrayEmbeddings(bench["embeddings"].ids, bench["embeddings"].emb, {"key": "one-frame", "num_frames": 1})
    caches = {"emb": bench["embeddings"], "emb1f": one_frame}
    def load_model(model_dir, device):
        return (PrototypeModel if Path(model_dir).parent.name == "TF-CoVR-Base" else NoisyModel)(bench["prototypes"])
    return dict(load_embeddings=lambda folder: caches[Path(folder).name], load_model=load_model)


def _table(rows, stage2_root, bootstrap=30, ablations=()):
    "The `evaluate` section listing `rows` (and `ablations`), and its table resolved against RUNS."
    cfg = EvaluateConfig(rows, list(ablations), bootstrap=bootstrap)
    return cfg, table_rows(cfg, {run: (enc, TARGETS.get(run)) for run, (enc, _, _) in RUNS.items()}, "caches", stage2_root)


def _evaluate(bench, stage2_root, rows, bootstrap=30, seed=0, ablations=(), **kw):
    cfg, table = _table(rows, stage2_root, bootstrap, ablations)
    return evaluate_table(cfg, table, bench["videos"], bench["triplets"], seed=seed, progress=False, **{**_loaders(bench), **kw})


def test_perfect_model_scores_100_and_video_only_lower(bench, stage2_root):
    perfect, video = _evaluate(bench, stage2_root, ["TF-CoVR-Base", VIDEO_ONLY], 50).rows
    assert [perfect[f"mAP@{k}"] for k in DEFAULT_KS] == [100.0] * 4
    assert perfect["R@5"] == 100.0
    assert all(video[f"mAP@{k}"] < 50 for k in DEFAULT_KS)


def test_columns_come_from_the_model_config_and_the_cache_meta(bench, stage2_root):
    "Nothing in the params describes a row: a 1-frame cache gives 1 frame, a text model's config gives text and no fusion."
    rows = {r["model"]: r for r in _evaluate(bench, stage2_root, ALL_ROWS, ablations=ABLATIONS).rows}
    cols = {n: (r["modalities"], r["fusion"], r["query_frames"], r["target_frames"]) for n, r in rows.items()}
    assert cols == {"TF-CoVR-Base": ("video+text", "combiner", 8, 8), "1-frame": ("video+text", "combiner", 1, 8),
                    "text-only": ("text", "none", 8, 8), "video-only": ("video", "none", 8, 8),
                    "avg-fusion": ("video+text", "average", 8, 8), "Stage-2-only": ("video+text", "combiner", 8, 8)}
    twelve = ArrayEmbeddings(bench["embeddings"].ids, bench["embeddings"].emb, {"num_frames": 12})
    row = _evaluate(bench, stage2_root, ["TF-CoVR-Base"], load_embeddings=lambda f: twelve).rows[0]
    assert (row["query_frames"], row["target_frames"]) == (12, 12)
    with pytest.raises(ValueError, match=r"^evaluate.rows.TF-CoVR-Base \(model .*\): the query embedding cache's meta.json gives no frame count"):
        _evaluate(bench, stage2_root, ["TF-CoVR-Base"], load_embeddings=lambda f: ArrayEmbeddings(twelve.ids, twelve.emb))


def test_trained_rows_are_their_stage2_runs(stage2_root):
    cfg, table = _table(ALL_ROWS, stage2_root, ablations=ABLATIONS)
    assert [r.name for r in table] == ["TF-CoVR-Base", "1-frame", "Stage-2-only", "text-only", "video-only", "avg-fusion"]
    assert table[1] == TableRow("1-frame", stage2_root / "1-frame" / "model", Path("caches/emb1f"), Path("caches/emb"))
    assert table[4] == TableRow("video-only", None, Path("caches/emb"))
    assert table[5].table == "ablations" and {r.table for r in table[:5]} == {"results"}
    with pytest.raises(ValueError, match="evaluate.rows.TF-CoVR-Large: 'TF-CoVR-Large' is no run of the stage2 section"):
        _table(["TF-CoVR-Large"], stage2_root)


def test_gallery_holds_each_video_once_and_ap_never_exceeds_one(bench):
    videos = pd.concat([bench["videos"], bench["videos"].iloc[:10]], ignore_index=True)   # rows listed twice
    trip = bench["triplets"]
    trip2 = pd.concat([trip, trip.assign(query_id=trip.query_id + len(trip))], ignore_index=True)  # every target_video twice
    g = build_gallery(videos, "test", bench["embeddings"])
    n_test = int((bench["videos"].split == "test").sum())
    assert len(g) == len(set(g.ids)) == n_test == 18
    q = query_features(NoisyModel(bench["prototypes"]), trip2, bench["embeddings"])
    r = evaluate_model(q, g, trip2)
    for k in DEFAULT_KS: assert (r["per_query"][f"AP@{k}"] <= 1).all()
    # a GT counted once: |G_q| is the number of test videos of the target label, never inflated by repeated rows
    assert (r["per_query"]["n_relevant"] == 3).all()
    single = evaluate_model(query_features(NoisyModel(bench["prototypes"]), trip, bench["embeddings"]), g, trip)
    assert single["mAP@10"] == pytest.approx(r["mAP@10"])


def test_query_is_excluded_from_its_own_ranking(bench):
    g = build_gallery(bench["videos"], "test", bench["embeddings"])
    t = bench["triplets"].head(3).drop(columns=["target_videos", "target_video"])
    t["target_label_id"] = t["query_label_id"]          # the query's own label: its video would rank first
    r = evaluate_model(query_features(None, t, bench["embeddings"]), g, t, ks=(1, 2), ground_truth="label")
    own = g.position(t.query_video)
    assert not (r["top_index"] == own[:, None]).any()
    assert (r["per_query"]["n_relevant"] == 2).all()    # 3 videos of the label, minus the query itself
    assert r["mAP@2"] == 100.0                          # the two other videos of the label fill the top 2


def test_query_without_reachable_ground_truth_raises_naming_it(bench):
    g = build_gallery(bench["videos"], "test", bench["embeddings"])
    t = bench["triplets"].head(4).drop(columns="target_videos")
    t.loc[2, "target_label_id"] = "l99"
    with pytest.raises(ValueError, match=rf"query {t.query_id[2]} \(video '{t.query_video[2]}', target label 'l99'\) has no reachable ground truth"):
        evaluate_model(query_features(None, t, bench["embeddings"]), g, t, ground_truth="label")
    # a label whose only video is the query itself is unreachable too (the query is excluded)
    v = bench["videos"].copy()
    v.loc[v.video_id == t.query_video[0], "label_id"] = "solo"
    t2 = t.head(1).assign(target_label_id="solo")
    with pytest.raises(ValueError, match=f"query {t2.query_id[0]} .* has no reachable ground truth"):
        evaluate_model(query_features(None, t2, bench["embeddings"]), build_gallery(v, "test", bench["embeddings"]), t2, ground_truth="label")


def test_protocol_card_fields(bench, stage2_root, tmp_path):
    files = [tmp_path / "test.parquet", tmp_path / "videos.parquet"]
    bench["triplets"].to_parquet(files[0]); bench["videos"].to_parquet(files[1])
    p = _evaluate(bench, stage2_root, ["TF-CoVR-Base", VIDEO_ONLY], 20, seed=7, dataset_files=files).protocol
    assert p["split"] == "test" and p["gallery"]["size"] == 18 and "unique" in p["gallery"]["definition"]
    assert p["queries"] == len(bench["triplets"]) and p["ks"] == [5, 10, 25, 50] and p["seed"] == 7
    assert "normalis" in p["normalisation"] or "L2" in p["normalisation"]
    assert "excluded" in p["exclusion"] or "removed" in p["exclusion"]
    assert p["dataset"]["files"] == {f.name: file_sha256(f) for f in files} and len(p["dataset"]["hash"]) == 16
    base = p["rows"]["TF-CoVR-Base"]
    assert base["model_dir"] == str(stage2_root / "TF-CoVR-Base" / "model") and base["embeddings"] == "caches/emb"
    assert base["model_sha256"] == {"config.json": file_sha256(stage2_root / "TF-CoVR-Base" / "model" / "config.json")}
    assert p["rows"]["video-only"]["model_sha256"] is None
    assert base["embedding_key"] == "synthetic" and (base["query_frames"], base["target_frames"]) == (8, 8)
    assert "encoder_checkpoint_sha256" in base


def test_results_files_schema_and_names(bench, stage2_root, tmp_path):
    run = _evaluate(bench, stage2_root, ALL_ROWS, ablations=ABLATIONS)
    out = write_reports(run, tmp_path, DEFAULT_KS)
    rows = json.loads(out["results_json"].read_text())
    assert isinstance(rows, list) and [r["model"] for r in rows] == list(ROW_NAMES + ABLATION_NAMES)
    assert [r["table"] for r in rows] == ["results"] * len(ROW_NAMES) + ["ablations"] * len(ABLATION_NAMES)
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert all(isinstance(r[f"mAP@{k}"], float) and 0 <= r[f"mAP@{k}"] <= 100 for k in DEFAULT_KS)
    metrics = {p.stem: json.loads(p.read_text()) for p in out["metrics_dir"].glob("*.json")}
    assert set(metrics) == set(ROW_NAMES + ABLATION_NAMES)
    # one narrow line per row in `dvc metrics show`: mAP@K at each K, and the recalls at K = 10
    assert list(metrics["1-frame"]) == [f"mAP@{k}" for k in DEFAULT_KS] + ["R@10", "R_target@10"]
    assert all(isinstance(v, float) for m in metrics.values() for v in m.values())
    assert metrics["TF-CoVR-Base"]["mAP@10"] == 100.0 and metrics["video-only"]["mAP@10"] < metrics["avg-fusion"]["mAP@10"]
    md = out["results_md"].read_text()
    assert "| Modalities | Model | Fusion | Query frames | Target frames | mAP@5 | mAP@10 | mAP@25 | mAP@50 |" in md
    assert "| video+text | 1-frame | combiner | 1 | 8 |" in md and "| text | text-only | none | 8 | 8 |" in md
    head, ablations = md.split("## Ablations")
    assert "avg-fusion" not in head.split("## Recall")[0] and "| video+text | avg-fusion | average | 8 | 8 |" in ablations
    assert "| Model | R@5 | R@10 | R@25 | R@50 | R_target@5 | R_target@10 | R_target@25 | R_target@50 |" in md
    bd = json.loads(out["breakdown_json"].read_text())
    assert list(bd["modification_type"]["TF-CoVR-Base"]) == ["turns", "somersaults", "twists", "position", "event"]
    assert list(bd["discipline"]["video-only"]) == ["gymnastics", "diving"]
    pq = pd.read_parquet(out["per_query_parquet"])
    assert len(pq) == len(ROW_NAMES + ABLATION_NAMES) * len(bench["triplets"])


def test_bootstrap_interval_contains_estimate_and_follows_the_seed():
    ap = np.random.default_rng(3).random(150)
    a = bootstrap_ci(ap, 1000, 0.95, 0, "TF-CoVR-Base", "turns")
    assert a["lo"] <= a["value"] <= a["hi"] and a["value"] == pytest.approx(100 * ap.mean())
    assert a == bootstrap_ci(ap, 1000, 0.95, 0, "TF-CoVR-Base", "turns")
    assert a != bootstrap_ci(ap, 1000, 0.95, 1, "TF-CoVR-Base", "turns")
    wide = bootstrap_ci(ap, 1000, 0.99, 0, "TF-CoVR-Base", "turns")
    assert wide["lo"] <= a["lo"] and wide["hi"] >= a["hi"]


def test_breakdown_intervals_contain_estimates(bench, stage2_root):
    bd = _evaluate(bench, stage2_root, ALL_ROWS, 200).breakdown
    for by in ("modification_type", "discipline"):
        for groups in bd[by].values():
            for c in groups.values(): assert c["lo"] - 1e-9 <= c["value"] <= c["hi"] + 1e-9


def test_saved_stage2_model_goes_through_the_default_loader(bench, tmp_path):
    from tfcovr.models.composed import ComposedModel
    ComposedModel(16, "video").save_pretrained(tmp_path / "stage2" / "saved" / "model")
    cfg = EvaluateConfig([VIDEO_ONLY, "saved"], bootstrap=10)
    table = table_rows(cfg, {"saved": "emb"}, "caches", tmp_path / "stage2")
    run = evaluate_table(cfg, table, bench["videos"], bench["triplets"], seed=0, progress=False,
                         load_embeddings=lambda f: bench["embeddings"])
    assert run.rows[0]["mAP@10"] == run.rows[1]["mAP@10"]
    assert (run.rows[1]["modalities"], run.rows[1]["fusion"]) == ("video", "none")     # from the saved config.json
    assert set(run.protocol["rows"]["saved"]["model_sha256"]) == {"config.json", "model.safetensors"}


def _frame_folders(videos, root):
    for vid, lab in zip(videos.video_id, videos.label_id):
        (root / vid).mkdir(parents=True)
        for t in range(4): Image.fromarray(np.full((32, 32, 3), 40 * int(lab[1:]) + 10 * t, np.uint8)).save(root / vid / f"{t:05d}.jpg")


def test_figures_are_written(bench, stage2_root, tmp_path):
    cfg, table = _table(["TF-CoVR-Base", VIDEO_ONLY], stage2_root, 20)
    run = evaluate_table(cfg, table, bench["videos"], bench["triplets"], seed=0, progress=False, **_loaders(bench))
    _frame_folders(bench["videos"], tmp_path / "videos")
    written = report_figures(ReportConfig(n_queries=2, n_frames=3, frame_size=32, heatmap_queries=8, heatmap_gallery=12), cfg,
                             table, bench["videos"], bench["triplets"], run.rows, run.breakdown, tmp_path / "videos",
                             tmp_path / "fig", 0, progress=False, **_loaders(bench))
    names = sorted(p.name for p in written)
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == names
    assert {"results.png", "breakdown_modification_type.png", "breakdown_discipline.png", "similarity.png"} <= set(names)
    assert sum(n.startswith("query_") for n in names) == 2
    for p in written: assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def _with_bad_value(bench, video_id, value):
    "The benchmark's embeddings with one value of `video_id`'s row replaced."
    emb = bench["embeddings"].emb.copy()
    emb[bench["embeddings"].ids.index(video_id), 3] = value
    return ArrayEmbeddings(bench["embeddings"].ids, emb, bench["embeddings"].meta)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_embedding_fails_naming_the_row_and_model(bench, stage2_root, value):
    video = sorted(bench["videos"].query("split == 'test'").video_id)[4]
    emb = _with_bad_value(bench, video, value)
    with pytest.raises(ValueError) as e:
        _evaluate(bench, stage2_root, [VIDEO_ONLY, "TF-CoVR-Base"], 20, load_embeddings=lambda folder: emb)
    assert str(e.value) == (f"evaluate.rows.video-only (model none: video only, embeddings caches/emb): the cached embedding of video "
                            f"{video!r} holds NaN or infinite values (1 of 18 rows do)")


def test_diverged_model_fails_naming_the_row_and_model(bench, stage2_root):
    class Diverged(NoisyModel):
        def encode_target(self, video_emb): return super().encode_target(video_emb) / 0.0 * 0.0   # NaN everywhere
    with pytest.raises(ValueError, match=rf"^evaluate.rows.avg-fusion \(model {stage2_root / 'avg-fusion' / 'model'}, embeddings caches/emb\): "
                                         r"the model's target feature \(encode_target\) of video '\w+' holds NaN"):
        _evaluate(bench, stage2_root, [VIDEO_ONLY, "avg-fusion"], 20, load_model=lambda d, dev: Diverged(bench["prototypes"]))


def test_report_figures_name_the_row_of_non_finite_embeddings(bench, stage2_root, tmp_path):
    cfg, table = _table(["TF-CoVR-Base", VIDEO_ONLY], stage2_root, 20)
    run = evaluate_table(cfg, table, bench["videos"], bench["triplets"], seed=0, progress=False, **_loaders(bench))
    video = bench["triplets"].query_video.iloc[0]
    loaders = {**_loaders(bench), "load_embeddings": lambda folder: _with_bad_value(bench, video, np.nan)}
    with pytest.raises(ValueError, match=rf"evaluate.rows.TF-CoVR-Base \(model .*\): the cached embedding of video '{video}' holds NaN"):
        report_figures(ReportConfig(n_queries=1), cfg, table, bench["videos"], bench["triplets"], run.rows, run.breakdown, tmp_path,
                       tmp_path / "fig", 0, progress=False, **loaders)


def _write_cache(folder: Path, emb) -> None:
    "An embedding cache in the format of tfcovr.eval.embed."
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", emb.emb.astype(np.float32))
    (folder / "index.json").write_text(json.dumps({"video_ids": emb.ids}))
    (folder / "meta.json").write_text(json.dumps({"key": "k0", "checkpoint": "none", "checkpoint_sha256": "0" * 64, "model": "aim-tiny",
                                                  "num_frames": 12, "sampling": "center", "size": 224, "dim": emb.dim,
                                                  "n_videos": len(emb.ids), "complete": True, "missing": [], "failed": {}}))


def test_evaluate_and_report_stages_run_through_papermill(root, bench, tmp_path):
    "The stages resolve the rows from params (a Stage-2 run and an untrained row) and read the columns from the files."
    from tfcovr.models.composed import ComposedModel
    from tfcovr.data.triplets import EVAL_COLUMNS
    from tfcovr.train.stage2 import Stage2Config
    _write_cache(tmp_path / "emb", bench["embeddings"])
    ComposedModel(16, "video").save_pretrained(tmp_path / "stage2" / "TF-CoVR-Base" / "model")
    t = bench["triplets"].assign(query_label="q", query_source="s", target_label="t", n_targets=3, split="test")[EVAL_COLUMNS]
    (tmp_path / "trip").mkdir()
    t.to_parquet(tmp_path / "trip" / "test.parquet"); bench["videos"].to_parquet(tmp_path / "trip" / "videos.parquet")
    params = {"seed": 0, "threads": 1, "stage2": {"TF-CoVR-Base": {"embeddings": "emb", "target_embeddings": None, "train": to_dict(Stage2Config(epochs=1))}},
              "evaluate": to_dict(EvaluateConfig(["TF-CoVR-Base", {"video-only": {"embeddings": "emb"}}], bootstrap=20)),
              "report": to_dict(ReportConfig(n_queries=1, n_frames=3, frame_size=32))}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _frame_folders(bench["videos"], tmp_path / "videos")
    rep = tmp_path / "reports"
    pm = str(Path(sys.executable).parent / "papermill")
    where = ["-p", "params_file", str(tmp_path / "params.yaml"), "-p", "triplets_dir", str(tmp_path / "trip"),
             "-p", "embeddings_root", str(tmp_path), "-p", "stage2_root", str(tmp_path / "stage2")]
    outs = {k: rep / f"{k.rsplit('_', 1)[0]}.{k.rsplit('_', 1)[1]}" for k in
            ("results_json", "results_md", "breakdown_json", "breakdown_md", "protocol_json", "per_query_parquet")}
    outs["metrics_dir"] = rep / "metrics"
    args = [pm, "--no-progress-bar", "nbs/stages/evaluate.ipynb", str(tmp_path / "evaluate.ipynb"), *where] + \
           [a for k, v in outs.items() for a in ("-p", k, str(v))]
    r = subprocess.run(args, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(outs["results_json"].read_text())
    assert [(x["model"], x["modalities"], x["query_frames"]) for x in results] == [("TF-CoVR-Base", "video", 12), ("video-only", "video", 12)]
    assert json.loads(outs["protocol_json"].read_text())["rows"]["TF-CoVR-Base"]["embedding_key"] == "k0"
    args = [pm, "--no-progress-bar", "nbs/stages/report.ipynb", str(tmp_path / "report.ipynb"), *where,
            "-p", "results_json", str(outs["results_json"]), "-p", "breakdown_json", str(outs["breakdown_json"]),
            "-p", "figures_dir", str(rep / "figures"), "-p", "video_roots", str(tmp_path / "videos")]
    r = subprocess.run(args, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (rep / "figures" / "similarity.png").stat().st_size > 1000


def test_builder_and_evaluator_agree_on_every_ground_truth():
    "One definition: the evaluator scores exactly the builder's target_videos and never ranks the query's own-source target videos."
    from tfcovr.data.triplets import TripletsConfig, build_triplets
    g = np.random.default_rng(0)
    clips = pd.DataFrame([(f"v{l}_{s}_{i}", f"src{s}", f"l{l}", f"label {l}", "FX", "test")
                          for l in range(4) for s in range(3) for i in range(2)],
                         columns=["video_id", "source_video", "label_id", "label", "event", "split"]).assign(dataset="finegym")
    pairs = pd.DataFrame([(f"l{a}", f"l{b}", f"label {a}", f"label {b}") for a in range(4) for b in range(4) if a != b],
                         columns=["query_label_id", "target_label_id", "query_label", "target_label"])
    mods = pairs[["query_label_id", "target_label_id"]].assign(modification=lambda d: "make it " + d.target_label_id, modification_type="turns")
    res = build_triplets(clips, pairs, mods, TripletsConfig(), seed=0, progress=False)
    test = res.splits["test"]
    assert (test.n_targets == 4).all()                        # 6 videos of the target label, 2 from the query's own source
    emb = ArrayEmbeddings(res.videos.video_id.tolist(), g.standard_normal((len(res.videos), 8)).astype(np.float32), {"num_frames": 8})
    gal = build_gallery(res.videos, "test", emb)
    q = query_features(None, test, emb)
    r = evaluate_model(q, gal, test, ks=(5, 25))
    assert (r["per_query"]["n_relevant"].to_numpy() == test.n_targets.to_numpy()).all()
    src = res.videos.set_index("video_id").loc[gal.ids, "source_video"].to_numpy()
    lab = np.asarray(gal.labels)
    for i, t in enumerate(test.itertuples()):
        ranked = r["top_index"][i][r["top_index"][i] >= 0]
        own = (lab[ranked] == t.target_label_id) & (src[ranked] == t.query_source)
        assert not own.any() and gal.ids.index(t.query_video) not in ranked
        assert len(ranked) == len(gal) - 1 - 2              # everything else is ranked: the query and its 2 own-source targets are not
    loose = evaluate_model(q, gal, test, ks=(5, 25), ground_truth="label")
    assert (loose["per_query"]["n_relevant"] == 6).all()

"""Label pairing on the real labels: the band, the attribute rules, the cap, pairs across events but never across disciplines,
the paper's class list, the plots and the params section."""
import json

import numpy as np
import pytest
import yaml

from tfcovr.data.attributes import diff_attributes, parse_label
from tfcovr.core import ParamsError, from_dict, to_dict
from tfcovr.data.fetch import real_labels_config
from tfcovr.data.labels import action_classes, load_finediving, load_labels
from tfcovr.data.pairing import (CANDIDATE_COLUMNS, PAIR_COLUMNS, PairingConfig, build_pairs, candidate_pairs, pairing_summary,
                            plot_pairs_per_label, plot_similarity, select_pairs)


_CACHE: dict = {}


@pytest.fixture
def diving(shared_data):
    "The real FineDiving clip table and its pairs with the default rules (built once per session)."
    if "diving" not in _CACHE:
        clips = load_finediving(shared_data / "finediving")
        _CACHE["diving"] = clips, build_pairs(clips, PairingConfig())
    return _CACHE["diving"]


@pytest.fixture
def real(shared_data):
    "The real FineGym + FineDiving clip table and its pairs with the default rules (built once per session)."
    if "real" not in _CACHE:
        clips = load_labels(real_labels_config(), shared_data)
        _CACHE["real"] = clips, build_pairs(clips, PairingConfig())
    return _CACHE["real"]


def _disciplines(res):
    d = res.labels.set_index("label_id").discipline
    return res.pairs.query_label_id.map(d), res.pairs.target_label_id.map(d)


def test_pairs_cross_events_never_disciplines(real):
    clips, res = real
    assert PairingConfig().same_event is False                              # the paper's rule is the default
    q, t = _disciplines(res)
    assert (q == t).all() and set(q) == {"gymnastics", "diving"}
    gym = res.pairs[res.pairs.discipline == "gymnastics"]
    cross = gym[gym.event.str.contains("->")]
    assert len(cross) > 0 and all(json.loads(d)["event"][0] != json.loads(d)["event"][1] for d in cross["diff"])
    one = select_pairs(res.candidates, PairingConfig(same_event=True))      # the older rule: a subset of the candidates
    assert not one.event.str.contains("->").any()
    assert set(zip(one.query_label_id, one.target_label_id)) != set(zip(res.pairs.query_label_id, res.pairs.target_label_id))
    s = pairing_summary(res, PairingConfig())
    assert s["disciplines"]["gymnastics"]["cross_event_pairs"] == len(cross) and s["disciplines"]["diving"]["cross_event_pairs"] == 0


def test_paper_classes_leave_out_34_labels(real):
    clips, _ = real
    paper = action_classes(clips, "paper")
    res = build_pairs(clips, PairingConfig(), classes=paper)
    assert len(res.labels) == 306 and set(res.labels.label_id) == set(paper)
    assert set(res.pairs.query_label_id) | set(res.pairs.target_label_id) <= set(paper)
    assert res.left_out.groupby("dataset").size().to_dict() == {"finediving": 5, "finegym": 29}
    assert set(res.left_out.label_id) == set(clips.label_id) - set(paper)
    assert pairing_summary(res, PairingConfig())["left_out"] == {"labels": 34, "datasets": {"finediving": 5, "finegym": 29}}
    q, t = _disciplines(res)
    assert (q == t).all()
    every = build_pairs(clips, PairingConfig(), classes=action_classes(clips, "all"))   # `all`: nothing left out
    assert every.left_out.empty and len(every.labels) == 340


def test_real_diving_pairs_follow_the_rules(diving):
    clips, res = diving
    cfg = PairingConfig()
    assert len(res.labels) == clips.label_id.nunique() == 52
    assert list(res.pairs.columns) == PAIR_COLUMNS and list(res.candidates.columns) == CANDIDATE_COLUMNS
    assert len(res.candidates) == 52 * 51                                   # every ordered pair of distinct labels
    p = res.pairs
    assert len(p) > 50
    assert (p.query_label_id != p.target_label_id).all()
    assert p.similarity.between(*cfg.band).all()
    assert p.n_diff.between(1, cfg.max_attr_diff).all()
    assert p.groupby("query_label_id").size().max() <= cfg.max_pairs_per_label
    assert set(p.discipline) == {"diving"} and set(p.event) == {"diving"}   # dive labels pair across boards
    assert not p.duplicated(["query_label_id", "target_label_id"]).any()
    text = res.labels.set_index("label_id")["label"]
    for r in p.itertuples():                                                # diff is the attributes' JSON, query value first
        d = diff_attributes(parse_label(text[r.query_label_id], "finediving"), parse_label(text[r.target_label_id], "finediving"))
        assert json.loads(r.diff) == {k: list(v) for k, v in d.items()}
        assert r.query_label == text[r.query_label_id] and r.target_label == text[r.target_label_id]


def test_both_directions_and_cap(diving):
    _, res = diving
    c = res.candidates
    uncapped = select_pairs(c, PairingConfig(max_pairs_per_label=None))
    keys = set(zip(uncapped.query_label_id, uncapped.target_label_id))
    assert all((b, a) in keys for a, b in keys)                              # the rules are symmetric: both directions kept
    capped = select_pairs(c, PairingConfig(max_pairs_per_label=2))
    for q, g in capped.groupby("query_label_id"):                           # the cap keeps the most similar targets
        allq = uncapped[uncapped.query_label_id == q].similarity.sort_values(ascending=False)
        assert np.allclose(sorted(g.similarity, reverse=True), allq.iloc[:len(g)])
    narrow = select_pairs(c, PairingConfig(band=(0.95, 1.0), max_pairs_per_label=None))
    assert 0 < len(narrow) < len(uncapped) and (narrow.similarity >= 0.95).all()
    one = select_pairs(c, PairingConfig(max_attr_diff=1, max_pairs_per_label=None))
    assert (one.n_diff == 1).all() and len(one) < len(uncapped)


def test_min_videos_and_summary(diving):
    clips, res = diving
    few = res.labels.n_clips.min()
    cfg = PairingConfig(min_videos_per_label=int(few) + 1)
    c = candidate_pairs(res.labels, res.embeddings, cfg)
    rare = set(res.labels.label_id[res.labels.n_clips <= few])
    assert rare and not (set(c.query_label_id) | set(c.target_label_id)) & rare
    s = pairing_summary(res, PairingConfig())
    assert s["disciplines"]["diving"]["pairs"] == len(res.pairs)
    assert s["disciplines"]["diving"]["labels_used"] == len(set(res.pairs.query_label_id) | set(res.pairs.target_label_id))


def test_plots_are_png(diving, tmp_path):
    _, res = diving
    plot_similarity(res.candidates, PairingConfig(), tmp_path / "fig" / "sim.png")
    plot_pairs_per_label(res.pairs, res.labels, PairingConfig(), tmp_path / "fig" / "ppl.png")
    for f in ("sim.png", "ppl.png"): assert (tmp_path / "fig" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["ppl.png", "sim.png"]   # no temporary left


def test_params_section_round_trip_and_errors():
    text = yaml.safe_dump({"pairing": to_dict(PairingConfig())})
    sec = yaml.safe_load(text)["pairing"]
    assert from_dict(PairingConfig, sec, "pairing") == PairingConfig()
    with pytest.raises(ParamsError, match="pairing: band must satisfy"): from_dict(PairingConfig, {**sec, "band": [0.9, 0.5]}, "pairing")
    with pytest.raises(ParamsError, match=r"pairing.band\[1\]: expected float"): from_dict(PairingConfig, {**sec, "band": [0.5, "x"]}, "pairing")
    with pytest.raises(ParamsError, match="pairing.colour: unknown key"): from_dict(PairingConfig, {**sec, "colour": 1}, "pairing")

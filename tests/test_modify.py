"""Modification texts of a pair table: the modify config, the generator it names, the table, the names re-exported."""
import pandas as pd
import pytest

import tfcovr.data.llm
import tfcovr.data.modify as M
import tfcovr.data.rules
from tfcovr.data.attributes import parse_label
from tfcovr.core import ParamsError, from_dict, to_dict
from tfcovr.data.llm import PromptExample


KEY = "sk-test-4f2b9c0d1e"  # a key-like value that must never be echoed
VT = "(VT) round-off, flic-flac with 0.5 turn on, stretched salto forward with {} turn off"
PAIRS = [(1, 3, VT.format("0.5"), VT.format("2")),
         (1, 2, VT.format("0.5"), VT.format("1")),
         (1, 0, VT.format("0.5"), VT.format("1.5")),
         (40, 41, "(FX) switch leap with 0.5 turn", "(FX) switch leap with 1 turn")]


def _table(pairs=PAIRS):
    return pd.DataFrame(pairs, columns=["query_label_id", "target_label_id", "query_label", "target_label"])


# ---------------------------------------------------------------- config
def test_config_roundtrip_and_validation():
    raw = to_dict(M.ModifyConfig())
    assert from_dict(M.ModifyConfig, raw, "modify") == M.ModifyConfig()
    raw["llm"]["examples"] = [{"query": "a", "target": "b", "modification": "c"}]
    assert from_dict(M.ModifyConfig, raw, "modify").llm.examples == [PromptExample("a", "b", "c")]
    for k, v, msg in [("max_retries", -1, "max_retries"), ("timeout_s", 0, "timeout_s"), ("base_url", "ftp://x", "base_url"),
                      ("examples", [], "examples")]:
        bad = to_dict(M.ModifyConfig()); bad["llm"][k] = v
        with pytest.raises(ParamsError, match=f"modify.*{msg}"): from_dict(M.ModifyConfig, bad, "modify")
    bad = to_dict(M.ModifyConfig()); bad["llm"]["api_key_env"] = KEY
    with pytest.raises(ParamsError) as e: from_dict(M.ModifyConfig, bad, "modify")
    assert KEY not in str(e.value) and "NAME" in str(e.value)


# ---------------------------------------------------------------- the pair table
def test_generate_modifications_table():
    out = M.generate_modifications(_table(), None, M.ModifyConfig(), seed=0, progress=False)
    assert list(out.columns) == list(M.OUT_COLUMNS) and len(out) == len(PAIRS)
    assert list(out.query_label_id) == [p[0] for p in PAIRS] and set(out.source) == {"rule"}
    attrs = {qi: parse_label(q) for qi, _, q, _ in PAIRS} | {ti: parse_label(t) for _, ti, _, t in PAIRS}
    same = M.generate_modifications(_table(), attrs, M.ModifyConfig(), seed=0, progress=False)
    pd.testing.assert_frame_equal(same, out)
    with pytest.raises(ValueError, match="target_label"):
        M.generate_modifications(_table().drop(columns="target_label"), None, M.ModifyConfig(), 0)


def test_make_modifier_and_reexported_names():
    assert type(M.make_modifier(M.ModifyConfig(), 0)) is tfcovr.data.rules.RuleModifier
    llm = M.make_modifier(M.ModifyConfig(generator="llm", llm=tfcovr.data.llm.LLMConfig(cache_path=None)), 0)
    assert type(llm) is tfcovr.data.llm.LLMModifier
    assert M.MOD_TYPES is tfcovr.data.rules.MOD_TYPES       # the evaluator imports the types from tfcovr.data.modify
    assert M.RuleModifier is tfcovr.data.rules.RuleModifier and M.LLMConfig is tfcovr.data.llm.LLMConfig


# ---------------------------------------------------------------- the answers cache is always a stage output
def test_ensure_cache_file(tmp_path):
    path = tmp_path / "cache" / "modify_llm.jsonl"
    cfg = M.ModifyConfig(llm=tfcovr.data.llm.LLMConfig(cache_path=path))
    M.generate_modifications(_table(), None, cfg, seed=0, progress=False)
    assert M.ensure_cache_file(cfg) == path and path.read_text() == ""     # the rules asked nothing: an empty file
    path.write_text('{"key": "k", "answer": "show with 2 turns", "base_url": "https://a/v1"}\n')
    M.ensure_cache_file(cfg)
    assert "show with 2 turns" in path.read_text()                           # answers survive a rule run
    assert [p.name for p in path.parent.iterdir()] == ["modify_llm.jsonl"]  # no temporary left behind
    with pytest.raises(ParamsError, match=r"modify\.llm\.cache_path"):
        M.ensure_cache_file(M.ModifyConfig(llm=tfcovr.data.llm.LLMConfig(cache_path=None)))


def test_a_pairs_table_without_its_columns_is_named():
    with pytest.raises(ValueError, match=r"pairs table lacks column\(s\) \['target_label'\]"):
        M.generate_modifications(_table().drop(columns="target_label"), None, M.ModifyConfig(), 0, progress=False)

"""The chat-endpoint generator against a local server: requests, retries, answer checks, fallback, cache replay."""
import contextlib
import http.server
import json
import logging
import socket
import threading
import time

import pandas as pd
import pytest

import tfcovr.llm as L
from tfcovr.attributes import parse_label
from tfcovr.modify import ModifyConfig, generate_modifications
from tfcovr.rules import RuleModifier


KEY_ENV, KEY = "TFCOVR_TEST_LLM_KEY", "sk-test-4f2b9c0d1e"
from modify_cases import PAIRS, VT, _gen, _table


# ---------------------------------------------------------------- a scripted chat-completions server
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, content, delay = srv.script.pop(0) if srv.script else (200, "show it again", 0)
        if delay: time.sleep(delay)
        if content.startswith("RAW:"): out = content[4:].encode()
        else: out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        try:
            self.send_response(status); self.send_header("Content-Length", str(len(out))); self.end_headers()
            self.wfile.write(out)
        except OSError: pass

    def log_message(self, *a): pass


class _Server(http.server.HTTPServer):
    def handle_error(self, *a): pass


@contextlib.contextmanager
def serve(script=()):
    "A chat endpoint on 127.0.0.1 answering (status, content, delay_s) in order; yields (base_url, server)."
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.script, srv.requests = list(script), []
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    th.start()
    try: yield f"http://127.0.0.1:{srv.server_address[1]}/v1", srv
    finally:
        srv.shutdown(); srv.server_close(); th.join(5)


def closed_url() -> str:
    "A URL on a local port nobody listens on."
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def cfg_for(url, tmp_path, **kw):
    return L.LLMConfig(**{**dict(base_url=url, model="test-model", api_key_env=KEY_ENV, max_retries=2, backoff_s=0.001,
                                 timeout_s=5.0, give_up_after=0, max_words=12, cache_path=tmp_path / "cache.jsonl"), **kw})


# ---------------------------------------------------------------- the language-model generator
def test_llm_answers_headers_and_request(tmp_path, key):
    with serve([(200, "show with 2 turns", 0), (200, "  'make it 1 turn.'  ", 0)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
        out = _gen(gen, PAIRS[:2])
    assert [m.text for m in out] == ["show with 2 turns", "make it 1 turn"]
    assert [m.source for m in out] == ["llm", "llm"] and out[0].type == "turns"
    assert gen.stats["llm"] == 2 and gen.stats["fallback"] == 0
    r = srv.requests[0]
    assert r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {KEY}"
    assert set(r["body"]) == {"model", "messages", "temperature"} and r["body"]["temperature"] == 0
    assert r["body"]["model"] == "test-model" and r["body"]["messages"][0]["role"] == "system"
    assert r["body"]["messages"][-1]["content"] == f"Query: {PAIRS[0][2]}\nTarget: {PAIRS[0][3]}"


def test_llm_retry_with_backoff(tmp_path, key, monkeypatch):
    delays = []
    monkeypatch.setattr(L.time, "sleep", delays.append)
    with serve([(500, "", 0), (429, "", 0), (200, "show with 2 turns", 0)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path, backoff_s=0.5), seed=0)
        m = _gen(gen, PAIRS[:1])[0]
    assert m.text == "show with 2 turns" and m.source == "llm"
    assert delays == [0.5, 1.0] and gen.stats["retries"] == 2 and len(srv.requests) == 3


def test_llm_gives_up_after_retries_and_no_retry_on_400(tmp_path, key):
    with serve([(503, "", 0)] * 3 + [(400, "", 0)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
        out = _gen(gen, PAIRS[:2])
    assert [m.source for m in out] == ["rule", "rule"]
    assert out == _gen(RuleModifier(0), PAIRS[:2])  # the fallback is the seeded rule text
    assert dict(gen.stats["failures"]) == {"http_503": 1, "http_400": 1}
    assert len(srv.requests) == 4 and gen.stats["fallback"] == 2


@pytest.mark.parametrize("answer,reason", [("", "empty"), ("show with\n2 turns", "multiline"),
                                           ('show "2 turns"', "quotes"), ("word " * 13, "too_long"),
                                           ("stretched salto forward with 2 turn off", "copies_label"),
                                           ("RAW:not json", "bad_response"), ("RAW:{\"choices\": []}", "bad_response")])
def test_llm_invalid_answer_falls_back(tmp_path, key, answer, reason):
    with serve([(200, answer, 0)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
        m = _gen(gen, PAIRS[:1])[0]
    assert m == _gen(RuleModifier(0), PAIRS[:1])[0]
    assert dict(gen.stats["failures"]) == {reason: 1} and gen.stats["fallback"] == 1
    assert len(srv.requests) == 1                   # an invalid answer is not asked again


def test_llm_unreachable_and_timeout_fall_back(tmp_path, key):
    gen = L.LLMModifier(cfg_for(closed_url(), tmp_path, give_up_after=2), seed=0)
    out = _gen(gen)
    assert out == _gen(RuleModifier(0))
    assert gen.stats["failures"] == {"unreachable": 2, "gave_up": 2}
    assert gen.stats["retries"] == 4               # 2 pairs x 2 retries, then no more calls
    with serve([(200, "show with 2 turns", 0.3)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path, timeout_s=0.05, max_retries=0), seed=0)
        m = _gen(gen, PAIRS[:1])[0]
    assert m.source == "rule" and dict(gen.stats["failures"]) == {"timeout": 1}


def test_llm_cache_replay_offline_is_identical(tmp_path, key, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    script = [(200, "show with 2 turns", 0), (500, "", 0), (200, "make it 1 turn", 0),
              (200, "stretched salto forward with 1.5 turn off", 0), (200, "show with 1 turn", 0)]
    cfg = ModifyConfig(generator="llm", llm=cfg_for("http://unused", tmp_path))
    with serve(script) as (url, srv):
        cfg.llm.base_url = url
        first = generate_modifications(_table(), None, cfg, seed=3, progress=False)
    assert list(first.source) == ["llm", "llm", "rule", "llm"]
    assert first.attrs["modify_stats"]["failures"] == {"copies_label": 1}
    assert {r["auth"] for r in srv.requests} == {f"Bearer {KEY}"}   # the key was sent ...
    cache = (tmp_path / "cache.jsonl").read_text()
    assert len(cache.splitlines()) == 4 and KEY not in cache         # ... and never written
    recs = [json.loads(l) for l in cache.splitlines()]
    assert [r["key"] for r in recs] == sorted(r["key"] for r in recs)
    assert all(set(r) == {"key", "model", "prompt_version", "query", "target", "answer"} for r in recs)
    # the server is gone: the cache alone gives the same table, bit for bit
    replay = generate_modifications(_table(), None, cfg, seed=3, progress=False)
    pd.testing.assert_frame_equal(replay, first)
    assert replay.attrs["modify_stats"]["cache"] == 3 and replay.attrs["modify_stats"]["llm"] == 0
    assert (tmp_path / "cache.jsonl").read_text() == cache             # nothing new to write
    # also without the key in the environment
    monkeypatch.delenv(KEY_ENV)
    again = generate_modifications(_table(), None, cfg, seed=3, progress=False)
    pd.testing.assert_frame_equal(again, first)
    assert KEY not in caplog.text


def test_llm_without_key_uses_cache_only(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with serve([(200, "show with 2 turns", 0)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
        out = _gen(gen, PAIRS[:2])
    assert srv.requests == [] and [m.source for m in out] == ["rule", "rule"]
    assert dict(gen.stats["failures"]) == {"no_api_key": 2}
    assert KEY_ENV in caplog.text                   # the variable's name is reported, once


def test_llm_bad_key_is_never_echoed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, "sk-bad\nkey-77")
    with serve([(200, "show with 2 turns", 0)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
        m = _gen(gen, PAIRS[:1])[0]
    assert srv.requests == [] and m.source == "rule" and dict(gen.stats["failures"]) == {"bad_api_key": 1}
    assert "sk-bad" not in caplog.text and "key-77" not in caplog.text
    monkeypatch.setenv(KEY_ENV, f"  {KEY}\n")                         # surrounding whitespace is tolerated
    with serve([(200, "show with 2 turns", 0)]) as (url, srv):
        assert _gen(L.LLMModifier(cfg_for(url, tmp_path / "b"), seed=0), PAIRS[:1])[0].source == "llm"
    assert srv.requests[0]["auth"] == f"Bearer {KEY}"


def test_llm_no_auth_header_when_no_key_env(tmp_path):
    with serve([(200, "show with 2 turns", 0)]) as (url, srv):
        m = _gen(L.LLMModifier(cfg_for(url, tmp_path, api_key_env=None, cache_path=None), seed=0), PAIRS[:1])[0]
    assert m.source == "llm" and srv.requests[0]["auth"] is None


def test_cache_key_depends_on_model_and_prompt(tmp_path, key):
    with serve([(200, "show with 2 turns", 0), (200, "make it 2 turns", 0)]) as (url, srv):
        a = _gen(L.LLMModifier(cfg_for(url, tmp_path), seed=0), PAIRS[:1])[0]
        b = _gen(L.LLMModifier(cfg_for(url, tmp_path, model="other"), seed=0), PAIRS[:1])[0]
    assert (a.text, b.text) == ("show with 2 turns", "make it 2 turns") and len(srv.requests) == 2


def test_cache_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"key": "k", "answer": "a"}\n{"key": 3}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:2"): L.LLMCache(p)

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

import tfcovr.data.llm as L
from tfcovr.data.attributes import parse_label
from tfcovr.core import ParamsError, from_dict, stable_hash, to_dict
from tfcovr.data.modify import ModifyConfig, generate_modifications
from tfcovr.data.rules import RuleModifier


KEY_ENV, KEY = "TFCOVR_TEST_LLM_KEY", "sk-test-4f2b9c0d1e"
from modify_cases import PAIRS, VT, _gen, _table


# ---------------------------------------------------------------- a scripted chat-completions server
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        srv = self.server
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        srv.requests.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, content, delay = srv.script.pop(0) if srv.script else (200, "show it again", 0)
        if delay: time.sleep(delay)
        if content.startswith("RAW:"): out = content[4:].encode()
        else: out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        try:
            self.send_response(status)
            if content.startswith("LOCATION:"): self.send_header("Location", content[9:])
            self.send_header("Content-Length", str(len(out))); self.end_headers()
            self.wfile.write(out)
        except OSError: pass

    do_GET = do_POST   # a followed redirect may arrive as a GET

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
    assert len(srv.requests) == 1                   # an invalid answer is not asked again in this run ...
    gen.save()
    assert (tmp_path / "cache.jsonl").read_text() == ""   # ... nor stored


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
    with serve(script) as (url, srv):
        cfg = ModifyConfig(generator="llm", llm=cfg_for(url, tmp_path))
        first = generate_modifications(_table(), None, cfg, seed=3, progress=False)
    assert list(first.source) == ["llm", "llm", "rule", "llm"]
    assert first.attrs["modify_stats"]["failures"] == {"copies_label": 1}
    assert {r["auth"] for r in srv.requests} == {f"Bearer {KEY}"}   # the key was sent ...
    cache = (tmp_path / "cache.jsonl").read_text()
    assert len(cache.splitlines()) == 3 and KEY not in cache         # ... and never written; the rejected answer neither
    recs = [json.loads(l) for l in cache.splitlines()]
    assert [r["key"] for r in recs] == sorted(r["key"] for r in recs)
    assert all(set(r) == {"key", "base_url", "model", "prompt_version", "query", "target", "answer"} for r in recs)
    assert {r["base_url"] for r in recs} == {url}
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


# ---------------------------------------------------------------- the key goes to the configured endpoint only
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_llm_redirect_is_an_error_and_the_key_stays(tmp_path, key, code):
    with serve([(200, "show with 2 turns", 0)]) as (other, srv2):
        with serve([(code, "LOCATION:" + other + "/chat/completions", 0)]) as (url, srv1):
            gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
            with pytest.raises(ValueError) as e: _gen(gen, PAIRS[:1])
            gen.save()
    msg = str(e.value)
    assert "\n" not in msg and "modify.llm.base_url" in msg and url in msg and other in msg and KEY not in msg
    assert srv1.requests[0]["auth"] == f"Bearer {KEY}" and len(srv1.requests) == 1
    assert srv2.requests == []                                   # the other origin never saw the key, nor a request
    assert (tmp_path / "cache.jsonl").read_text() == ""          # and nothing was cached


@pytest.mark.parametrize("url", ["http://api.example.com/v1", "http://10.1.2.3:8000/v1", "https://u:p@api.example.com/v1"])
def test_llm_base_url_https_or_loopback(url):
    with pytest.raises(ValueError, match=r"^base_url: "): L.LLMConfig(base_url=url)
    raw = to_dict(ModifyConfig()); raw["llm"]["base_url"] = url
    with pytest.raises(ParamsError, match=r"^modify\.llm: base_url: ") as e: from_dict(ModifyConfig, raw, "modify")
    assert "\n" not in str(e.value)
    for ok in ("https://api.example.com/v1", "http://localhost:1234/v1", "http://127.8.0.1/v1", "http://[::1]/v1"):
        assert L.LLMConfig(base_url=ok).base_url == ok


# ---------------------------------------------------------------- answers that spell out the target label
DIVE_Q, DIVE_T = "Inward, 2.5 Soms.Pike, Entry", "Inward, 2.5 Soms.Tuck, Entry"


@pytest.mark.parametrize("answer", ["make it inward, 2.5 soms.tuck, entry", "Inward 2.5 Soms Tuck Entry",
                                    "show it as inward, 2.5 soms. tuck, entry"])
def test_answer_naming_a_short_target_label_is_rejected(answer):
    assert L.validate_answer(answer, DIVE_Q, DIVE_T, 12) == (None, "copies_label")


def test_answer_naming_a_gym_target_label_is_rejected():
    q, t = "(VT) handspring forward on, tucked salto forward off", "(VT) handspring forward on, tucked salto forward with 1 turn off"
    assert L.validate_answer("make it (vt) handspring forward on, tucked salto forward with 1 turn off", q, t, 20)[1] == "copies_label"
    assert L.validate_answer("do the salto forward with 1 turn", q, t, 12)[1] == "copies_label"
    assert L.validate_answer("show with 1 turn", q, t, 12) == ("show with 1 turn", None)   # shared words are fine
    assert L.validate_answer("same dive but in tuck position", DIVE_Q, DIVE_T, 12)[1] is None


def test_llm_answer_naming_the_target_falls_back(tmp_path, key):
    pair = [("finediving/5253b", "finediving/5253c", DIVE_Q, DIVE_T)]
    with serve([(200, "make it inward, 2.5 soms.tuck, entry", 0)]) as (url, srv):
        gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
        m = _gen(gen, pair)[0]
    assert m.source == "rule" and "soms" not in m.text.lower() and dict(gen.stats["failures"]) == {"copies_label": 1}


# ---------------------------------------------------------------- the cache
def test_rejected_answer_is_asked_again_next_run(tmp_path, key):
    with serve([(200, "stretched salto forward with 2 turn off", 0), (200, "show with 2 turns", 0)]) as (url, srv):
        first = _gen(L.LLMModifier(cfg_for(url, tmp_path), seed=0), PAIRS[:1])[0]
        gen = L.LLMModifier(cfg_for(url, tmp_path), seed=0)
        second = _gen(gen, PAIRS[:1])[0]
        gen.save()
        third = _gen(L.LLMModifier(cfg_for(url, tmp_path), seed=0), PAIRS[:1])[0]
    assert (first.source, second.text, third.text) == ("rule", "show with 2 turns", "show with 2 turns")
    assert len(srv.requests) == 2                   # asked again after the rejection, then replayed from the cache


def test_cache_key_depends_on_endpoint(tmp_path, key):
    with serve([(200, "show with 2 turns", 0)]) as (url_a, a), serve([(200, "make it 2 turns", 0)]) as (url_b, b):
        gen = L.LLMModifier(cfg_for(url_a, tmp_path), seed=0); ma = _gen(gen, PAIRS[:1])[0]; gen.save()
        gen = L.LLMModifier(cfg_for(url_b, tmp_path), seed=0); mb = _gen(gen, PAIRS[:1])[0]; gen.save()
    assert (ma.text, mb.text) == ("show with 2 turns", "make it 2 turns")
    assert len(a.requests) == len(b.requests) == 1  # the second endpoint was asked, not answered from the first's cache
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 2


def test_old_cache_records_are_read_but_not_used(tmp_path, key, caplog):
    q, t = PAIRS[0][2], PAIRS[0][3]
    with serve([(200, "make it 2 turns", 0)]) as (url, srv):
        cfg = cfg_for(url, tmp_path)
        version = L.prompt_version(cfg)
        old = {"key": stable_hash([cfg.model, version, q, t], n=32), "model": cfg.model, "prompt_version": version,
               "query": q, "target": t, "answer": "show with 2 turns"}
        (tmp_path / "cache.jsonl").write_text(json.dumps(old) + "\n")
        gen = L.LLMModifier(cfg, seed=0)
        m = _gen(gen, PAIRS[:1])[0]
        gen.save()
    assert m.text == "make it 2 turns" and len(srv.requests) == 1   # the endpoint-less answer is not replayed
    assert "older cache format" in caplog.text
    recs = [json.loads(l) for l in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert old in recs and len(recs) == 2                              # kept in the file


def test_cached_answer_rejected_today_is_dropped_and_asked_again(tmp_path, key):
    q, t = PAIRS[0][2], PAIRS[0][3]
    with serve([(200, "show with 2 turns", 0)]) as (url, srv):
        cfg = cfg_for(url, tmp_path)
        k = L.LLMCache.key(cfg.base_url, cfg.model, L.prompt_version(cfg), q, t)
        c = L.LLMCache(tmp_path / "cache.jsonl")
        c.put(k, {"base_url": cfg.base_url, "answer": "stretched salto forward with 2 turn off"}); c.save()
        gen = L.LLMModifier(cfg, seed=0)
        m = _gen(gen, PAIRS[:1])[0]
        gen.save()
    assert m.text == "show with 2 turns" and len(srv.requests) == 1
    assert [json.loads(l)["answer"] for l in (tmp_path / "cache.jsonl").read_text().splitlines()] == ["show with 2 turns"]


def test_cache_truncated_line_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"key": "k", "answer": "a", "base_url": "x"}\n{"key": "k2", "answer": "sho')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: truncated"): L.LLMCache(p)
    p.write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(ValueError, match=r"c\.jsonl: not a UTF-8"): L.LLMCache(p)


def test_cache_save_is_atomic(tmp_path):
    p = tmp_path / "c.jsonl"
    c = L.LLMCache(p); c.put("a", {"answer": "show with 2 turns"}); c.save()
    before = p.read_text()
    c.put("b", {"answer": object()})                # not JSON: the write fails half-way
    with pytest.raises(TypeError): c.save()
    assert p.read_text() == before and sorted(x.name for x in tmp_path.iterdir()) == ["c.jsonl"]


def test_cache_file_written_when_nothing_was_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = ModifyConfig(generator="llm", llm=cfg_for(closed_url(), tmp_path))
    out = generate_modifications(_table(), None, cfg, seed=0, progress=False)
    assert set(out.source) == {"rule"} and (tmp_path / "cache.jsonl").read_text() == ""

"""`tfcovr fetch-labels` against a local HTTP server, `--from` a local folder, the pinned checksums, and the
`shared_data` fixture's skip / fail rule."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tfcovr.data.fetch as fetch
from tfcovr.cli import main
from tfcovr.data.fetch import LABEL_FILES, FetchError, check_labels, fetch_labels, labels_dir

ROOT = Path(__file__).resolve().parents[1]
GOOD, BAD = b"Clabel: 0; set: 1; Glabel: 0; (VT) a\n", b"Clabel: 0; set: 1; Glabel: 0; (VT) b\n"


class Server:
    "A local HTTP server: `routes` maps a URL path to bytes, an int status, ('sleep', s) or ('redirect', url)."
    def __init__(self):
        self.routes, self.requests, self.wake = {}, [], threading.Event()
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                srv.requests.append(self.path)
                what = srv.routes.get(self.path, 404)
                if isinstance(what, tuple) and what[0] == "sleep": srv.wake.wait(what[1]); what = GOOD
                if isinstance(what, tuple) and what[0] == "redirect":
                    self.send_response(302); self.send_header("Location", what[1]); self.end_headers(); return
                if isinstance(what, int): self.send_error(what); return
                self.send_response(200); self.send_header("Content-Length", str(len(what))); self.end_headers()
                self.wfile.write(what)

            def log_message(self, *args): pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/labels/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.wake.set()
        self.httpd.shutdown(); self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for v in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"): monkeypatch.delenv(v, raising=False)
    s = Server()
    yield s
    s.close()


def sha(b: bytes) -> str: return hashlib.sha256(b).hexdigest()


def leftovers(folder: Path) -> list[str]:
    "Every file under `folder` (temporaries included)."
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---- over HTTP ----------------------------------------------------------------------------------------------

def test_good_file_is_fetched_once(server, tmp_path):
    server.routes["/labels/finegym/a.txt"] = GOOD
    files = {"finegym/a.txt": sha(GOOD)}
    assert fetch_labels(tmp_path, server.url, files, timeout=5) == {"finegym/a.txt": "fetched"}
    assert (tmp_path / "finegym" / "a.txt").read_bytes() == GOOD
    assert fetch_labels(tmp_path, server.url, files, timeout=5) == {"finegym/a.txt": "present"}
    assert server.requests == ["/labels/finegym/a.txt"]                  # not downloaded again


def test_corrupted_and_missing_files_are_all_named(server, tmp_path):
    server.routes.update({"/labels/finegym/a.txt": GOOD, "/labels/finegym/bad.txt": BAD})
    files = {"finegym/a.txt": sha(GOOD), "finegym/bad.txt": sha(GOOD), "finediving/gone.pkl": sha(GOOD)}
    with pytest.raises(FetchError) as e: fetch_labels(tmp_path, server.url, files, timeout=5)
    msg = str(e.value)
    assert msg.startswith("2 of 3 label files not fetched") and "\n" not in msg
    assert f"finegym/bad.txt ({server.url}finegym/bad.txt): SHA-256 {sha(BAD)} differs from the pinned {sha(GOOD)}" in msg
    assert f"finediving/gone.pkl ({server.url}finediving/gone.pkl): HTTP 404" in msg
    assert leftovers(tmp_path) == ["finegym/a.txt"]                        # the good file; no wrong file, no temporary


def test_a_hanging_server_times_out(server, tmp_path):
    server.routes["/labels/finegym/slow.txt"] = ("sleep", 30)
    t = time.monotonic()
    with pytest.raises(FetchError, match=r"finegym/slow.txt \(.*\): no answer within 0.5 s"):
        fetch_labels(tmp_path, server.url, {"finegym/slow.txt": sha(GOOD)}, timeout=0.5)
    assert time.monotonic() - t < 3
    assert leftovers(tmp_path) == []


def test_redirects_to_other_schemes_and_huge_answers_are_refused(server, tmp_path, monkeypatch):
    server.routes["/labels/finegym/a.txt"] = ("redirect", "ftp://127.0.0.1/labels/a.txt")
    server.routes["/labels/finegym/big.txt"] = GOOD
    monkeypatch.setattr(fetch, "MAX_BYTES", 10)
    with pytest.raises(FetchError) as e:
        fetch_labels(tmp_path, server.url, {"finegym/a.txt": sha(GOOD), "finegym/big.txt": sha(GOOD)}, timeout=5)
    assert "finegym/a.txt" in str(e.value) and "redirect to a non-http(s) URL ftp://127.0.0.1/labels/a.txt" in str(e.value)
    assert "finegym/big.txt" in str(e.value) and "answer larger than 10 bytes" in str(e.value)
    assert leftovers(tmp_path) == []


def test_command_over_http_prints_one_line(server, tmp_path, capsys):
    assert main(["fetch-labels", "--dest", str(tmp_path), "--from", server.url, "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfcovr fetch-labels: error: 9 of 9 label files not fetched") and err.count("\n") == 1
    assert all(f"{p} ({server.url}{p}): HTTP 404" in err for p in LABEL_FILES)


# ---- from a local folder ------------------------------------------------------------------------------------

def test_from_a_local_folder(tmp_path, capsys):
    src = tmp_path / "src"
    for p in LABEL_FILES: (src / p).parent.mkdir(parents=True, exist_ok=True); (src / p).write_bytes(b"not the real file")
    (src / "finegym" / "set_categories.txt").unlink()
    assert main(["fetch-labels", "--dest", str(tmp_path / "raw"), "--from", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "9 of 9 label files not fetched" in err
    assert f"finegym/set_categories.txt ({src}/finegym/set_categories.txt): missing" in err
    assert f"finediving/train_split.pkl ({src}/finediving/train_split.pkl): SHA-256 {sha(b'not the real file')}" in err
    assert leftovers(tmp_path / "raw") == []


def test_from_the_real_folder(shared_data, tmp_path, capsys):
    assert main(["fetch-labels", "--dest", str(tmp_path), "--from", str(shared_data)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{tmp_path}: 9 label files checked (9 fetched, 0 already present)"
    assert check_labels(tmp_path) == [] and leftovers(tmp_path) == sorted(LABEL_FILES)
    before = {p: (tmp_path / p).stat().st_ino for p in LABEL_FILES}
    assert main(["fetch-labels", "--dest", str(tmp_path), "--from", str(shared_data)]) == 0
    assert {p: (tmp_path / p).stat().st_ino for p in LABEL_FILES} == before   # not copied again
    assert capsys.readouterr().out.strip() == f"{tmp_path}: 9 label files checked (0 fetched, 9 already present)"


# ---- the pinned checksums and the real files ----------------------------------------------------------------

def test_pinned_checksums_equal_sha256sums(shared_data):
    sums = [p / "SHA256SUMS" for p in (shared_data, ROOT.parent / "shared" / "data") if (p / "SHA256SUMS").is_file()]
    if not sums: pytest.skip(f"no SHA256SUMS beside the label files in {shared_data}")
    listed = dict(reversed(line.split(None, 1)) for line in sums[0].read_text().splitlines() if line.strip())
    assert {p: h for p, h in listed.items() if p.split("/")[0] in fetch.SOURCES} == LABEL_FILES


def test_real_files_match_the_pinned_checksums(shared_data):
    assert check_labels(shared_data) == []


# ---- the shared_data fixture --------------------------------------------------------------------------------

def run_fixture(tmp_path: Path, labels: Path | None) -> subprocess.CompletedProcess:
    "Run a one-test suite using `shared_data` in a project without label files beside it."
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True, exist_ok=True)
    (repo / "settings.ini").write_text("")
    (repo / "tests" / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (repo / "tests" / "test_x.py").write_text("def test_x(shared_data): assert (shared_data / 'finegym').is_dir()\n")
    env = {k: v for k, v in os.environ.items() if k != "TFCOVR_LABELS"}
    if labels is not None: env["TFCOVR_LABELS"] = str(labels)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_x.py"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def test_fixture_skips_without_files_and_fails_on_a_wrong_variable(tmp_path):
    r = run_fixture(tmp_path, None)
    assert r.returncode == 0 and "1 skipped" in r.stdout and "tfcovr fetch-labels" in r.stdout, r.stdout
    part = tmp_path / "part"
    for p in list(LABEL_FILES)[:-1]: (part / p).parent.mkdir(parents=True, exist_ok=True); (part / p).write_text("x")
    r = run_fixture(tmp_path, part)
    assert r.returncode != 0 and "skipped" not in r.stdout, r.stdout
    assert f"TFCOVR_LABELS={part}: 1 real label file(s) missing: {list(LABEL_FILES)[-1]}" in r.stdout, r.stdout
    (part / list(LABEL_FILES)[-1]).write_text("x")
    r = run_fixture(tmp_path, part)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout


def test_labels_dir_finds_the_real_files(shared_data):
    assert labels_dir(ROOT) == shared_data

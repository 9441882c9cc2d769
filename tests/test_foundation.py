"""The project's set-up: the command line, params.yaml checking and the papermill stage runner."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True)


def test_params_command_accepts_repository_params(root):
    r = run([str(Path(sys.executable).parent / "tfcovr"), "params", "params.yaml"], root)
    assert r.returncode == 0, r.stderr
    assert "params.yaml: ok" in r.stdout


@pytest.mark.parametrize("text,message", [
    ("seed: 0\ndata:\n  source: synth\n  colour: red\n", "data.colour: unknown key"),
    ("seed: zero\ndata:\n  source: synth\n", "seed: expected int, got 'zero'"),
    ("seed: 0\n", "data: missing section"),
    ("seed: 0\ndata:\n  source: synth\nsynthh: {}\n", "synthh: unknown section"),
])
def test_bad_params_give_one_line(tmp_path, text, message):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    r = run([str(Path(sys.executable).parent / "tfcovr"), "params", str(p)], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and str(p) in lines[0]


def test_params_stage_runs_through_papermill(root, tmp_path):
    out = tmp_path / "params.json"
    r = run([str(Path(sys.executable).parent / "papermill"), "--no-progress-bar", "nbs/stages/params.ipynb",
             str(tmp_path / "executed.ipynb"), "-p", "params_file", "params.yaml", "-p", "out", str(out)], root)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["params"]["data"]["source"] in ("synth", "real")
    assert rec["environment"]["device"] in ("cpu", "cuda")

"""The project's set-up: the command line, params.yaml checking and the papermill stage runner."""
import json
import os
import signal
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
    ("seed: 0\nthreads: 2\ndata:\n  source: synth\n  colour: red\n", "data.colour: unknown key"),
    ("seed: zero\ndata:\n  source: synth\n", "seed: expected int, got 'zero'"),
    ("seed: 0\nthreads: 2\n", "data: missing section"),
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


WRITER = """
import sys, time
from pathlib import Path
from tfcovr.core import atomic_dir, atomic_write
out = Path(sys.argv[1])
with atomic_dir(out / "last") as t:                          # a checkpoint folder, half written
    (t / "model.safetensors").write_bytes(b"half")
    with atomic_write(out / "embeddings.npy", "wb") as f:   # and a cache file, half written
        f.write(b"half"); f.flush()
        print("writing", flush=True)
        time.sleep(60)
"""


def test_killed_write_leaves_nothing_in_the_output_and_the_next_write_cleans_up(tmp_path):
    out, temps = tmp_path / "models" / "aim", tmp_path / "tmp"
    out.mkdir(parents=True)
    (out / "best.json").write_text("{}")
    env = {**os.environ, "TFCOVR_TMPDIR": str(temps)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
    finally: child.wait()
    assert sorted(p.name for p in out.iterdir()) == ["best.json"]        # nothing of the killed write in the output
    left = [p.name for p in temps.iterdir()]
    assert len(left) == 1 and f"-{child.pid}-" in left[0]                 # its temporaries are in its own folder
    r = subprocess.run([sys.executable, "-c", "from tfcovr.core import write_json; import sys; write_json(sys.argv[1], {})",
                        str(out / "best.json")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (temps / left[0]).exists()                                 # the next write removed them
    assert sorted(p.name for p in out.iterdir()) == ["best.json"]


def test_dvcignore_hides_temporaries_beside_a_target(root):
    names = ["models/stage1/aim/.last.tmpab12cd", "embeddings/aim/.embeddings.x1y2.tmp.npy",
             "models/stage2/TF-CoVR-Base/.model.oldzz9", ".tmp"]
    r = run([str(Path(sys.executable).parent / "dvc"), "check-ignore", *names, "embeddings/aim/embeddings.npy",
             "models/stage1/aim/best.safetensors"], root)
    assert sorted(r.stdout.split()) == sorted(names), r.stdout + r.stderr


def test_safetensors_outputs_get_the_mode_of_every_other_output(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file
    from tfcovr.core import atomic_dir, atomic_path, write_json
    monkeypatch.setenv("TFCOVR_TMPDIR", str(tmp_path / "tmp"))
    with atomic_path(tmp_path / "best.safetensors") as t: save_file({"w": torch.zeros(2)}, str(t))
    with atomic_dir(tmp_path / "last") as t: save_file({"w": torch.zeros(2)}, str(t / "model.safetensors"))
    write_json(tmp_path / "best.json", {})
    modes = {p: (tmp_path / p).stat().st_mode & 0o777 for p in ("best.safetensors", "last/model.safetensors", "best.json")}
    mask = os.umask(0o022); os.umask(mask)
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_core_is_cheap_to_import_and_inference_does_not_import_training():
    "`tfcovr.core` loads without torch; embedding extraction and its checkpoint loading load no training module."
    code = ("import sys, tfcovr.core; assert 'torch' not in sys.modules, 'core imported torch'\n"
            "import tfcovr.eval.embed, tfcovr.models.aim\n"
            "bad = sorted(m for m in sys.modules if m.startswith('tfcovr.train'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

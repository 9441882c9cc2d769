"""`tfcovr params` on modified copies of the repository's params.yaml: every mistake is one line naming the file and key."""
import re

import pytest

from tfcovr.cli import main


def edited(root, tmp_path, old, new, count=1):
    "The repository's params.yaml with `old` replaced by `new` (`count` times), written to tmp_path."
    text = (root / "params.yaml").read_text()
    assert text.count(old) >= count, f"{old!r} not in params.yaml"
    p = tmp_path / "params.yaml"
    p.write_text(text.replace(old, new, count))
    return p


def params_error(path, capsys):
    "Run `tfcovr params path`; it must exit 2 with one line on stderr, naming the file. Returns that line."
    assert main(["params", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(path) in lines[0]
    return lines[0]


def test_repository_params_pass(root, capsys):
    assert main(["params", str(root / "params.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_duplicate_key_is_rejected_with_its_line(root, tmp_path, capsys):
    p = edited(root, tmp_path, "    lr: 0.005                #", "    lr: 0.005\n    lr: 0.001                #")
    line = next(i for i, l in enumerate(p.read_text().splitlines(), 1) if l.startswith("    lr: 0.001                # the paper: 1e-5"))
    err = params_error(p, capsys)
    assert f"line {line}: stage1.aim.lr: duplicate key (first at line {line - 1}" in err


def test_duplicate_section_is_rejected(root, tmp_path, capsys):
    p = edited(root, tmp_path, "seed: 0 ", "seed: 1\nseed: 0 ")
    assert "line 6: seed: duplicate key (first at line 5" in params_error(p, capsys)


def test_merge_keys_may_still_be_overridden(root, tmp_path, capsys):
    p = edited(root, tmp_path, "{<<: *stage2_train, query: text}", "{<<: *stage2_train, query: text, epochs: 3}")
    assert main(["params", str(p)]) == 0, capsys.readouterr().err


def test_report_model_must_be_a_table_row(root, tmp_path, capsys):
    p = edited(root, tmp_path, "  model: TF-CoVR-Base\n  n_queries", "  model: TF-CoVR-Large\n  n_queries")
    assert "report.model: 'TF-CoVR-Large' is not a row of evaluate.rows (rows: TF-CoVR-Base, 1-frame, Stage-2-only, text-only, video-only, avg-fusion)" in params_error(p, capsys)


def test_row_that_is_no_run_and_names_no_embeddings(root, tmp_path, capsys):
    p = edited(root, tmp_path, "    - text-only ", "    - TF-CoVR-Large\n    - text-only ")
    assert ("evaluate.rows.TF-CoVR-Large: 'TF-CoVR-Large' is no run of the stage2 section (runs: TF-CoVR-Base, 1-frame, "
            "Stage-2-only, avg-fusion, text-only) and names no embeddings") in params_error(p, capsys)


def test_trained_row_reads_its_runs_embeddings(root, tmp_path, capsys):
    "A trained row's embeddings are stage2.<row>.embeddings: naming them again in the table is an error, not a second truth."
    p = edited(root, tmp_path, "    - 1-frame ", "    - 1-frame: {embeddings: aim} ")
    assert "evaluate.rows.1-frame: a Stage-2 run's row reads the run's embeddings (stage2.1-frame.embeddings: aim1f)" \
        in params_error(p, capsys)


def test_untrained_row_embeddings_must_be_an_encoder(root, tmp_path, capsys):
    p = edited(root, tmp_path, "video-only: {embeddings: aim}", "video-only: {embeddings: aim8f}")
    assert "evaluate.rows.video-only.embeddings: 'aim8f' is not an encoder of embed.encoders (known: aim, aim1f, aim1f-targets, untrained)" \
        in params_error(p, capsys)


def test_untrained_row_with_a_misspelled_key(root, tmp_path, capsys):
    p = edited(root, tmp_path, "video-only: {embeddings: aim}", "video-only: {embedding: aim}")
    assert "evaluate: rows.video-only: a row without Stage-2 training names its encoder as {embeddings: <encoder>}" \
        in params_error(p, capsys)


def test_row_listed_twice(root, tmp_path, capsys):
    p = edited(root, tmp_path, "    - text-only ", "    - avg-fusion\n    - text-only ")
    assert "evaluate: rows and ablations: avg-fusion listed twice" in params_error(p, capsys)


def test_float_written_as_text_is_explained(root, tmp_path, capsys):
    p = edited(root, tmp_path, "    lr: 0.005                #", "    lr: 3e-4                 #")
    err = params_error(p, capsys)
    assert "stage1.aim.lr: expected float, got '3e-4' (YAML reads 3e-4 as text: write 3.0e-4 or 0.0003)" in err


def test_optional_float_written_as_text_is_explained(root, tmp_path, capsys):
    p = edited(root, tmp_path, "max_grad_norm: null", "max_grad_norm: 1e0")
    assert "stage1.aim.max_grad_norm: expected float or NoneType, got '1e0' (YAML reads 1e0 as text: write 1.0e+0 or 1.0)" \
        in params_error(p, capsys)


@pytest.mark.parametrize("old,new,message", [
    ("threads: 2 ", "threads: 0 ", "threads: expected an int >= 1, got 0"),
    ("threads: 2 ", "threads: two ", "threads: expected int, got 'two'"),
    ("threads: 2 ", "# threads: 2 ", "threads: missing section"),
])
def test_threads_is_required_and_positive(root, tmp_path, capsys, old, new, message):
    assert message in params_error(edited(root, tmp_path, old, new), capsys)


def test_evaluate_device_is_checked(root, tmp_path, capsys):
    text = (root / "params.yaml").read_text()
    old = re.search(r"\n  device: auto\n  rows:", text).group(0)
    p = edited(root, tmp_path, old, old.replace("auto", "gpu"))
    assert "evaluate: device: 'gpu' is not a device (allowed: auto, cpu, cuda, cuda:N, mps)" in params_error(p, capsys)


@pytest.mark.parametrize("old,new,key", [
    ("  device: cpu\n  band:", "  device: gpu\n  band:", "pairing"),
    ("    device: auto\n    amp: auto                # bf16", "    device: gpu\n    amp: auto                # bf16", "stage1.aim"),
    ("  device: auto\n  amp: auto\n\nstage2:", "  device: gpu\n  amp: auto\n\nstage2:", "embed"),
    ("      device: auto\n  1-frame:", "      device: gpu\n  1-frame:", "stage2.TF-CoVR-Base.train"),
])
def test_unknown_device_is_rejected(root, tmp_path, capsys, old, new, key):
    err = params_error(edited(root, tmp_path, old, new), capsys)
    assert key in err and "'gpu'" in err


def test_paper_classes_need_the_real_source(root, tmp_path, capsys):
    "SynthGym's labels are not the paper's: `classes: paper` with `data.source: synth` is one line naming the key."
    p = edited(root, tmp_path, "classes: all ", "classes: paper ")
    assert "classes: 'paper' lists the published model's FineGym and FineDiving classes, and data.source 'synth' has labels " \
        "of its own (SynthGym's): use classes: all, or data.source: real" in params_error(p, capsys)
    real = edited(root, tmp_path, "  source: synth ", "  source: real ")
    real.write_text(real.read_text().replace("classes: all ", "classes: paper ").replace("  root: data/synth ", "  root: data/raw "))
    assert main(["params", str(real)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("old,new,message", [
    ("classes: all ", "classes: some ", "classes: expected one of 'all' | 'paper', got 'some'"),
    ("classes: all ", "# classes: all ", "classes: missing section"),
    ("    test_from_val: 0.5 ", "    test_from_val: 1.0 ", "data.splits: test_from_val must be in [0, 1), got 1.0"),
    ("    exclusive_sources: true ", "    exclusive_sources: yes_please ", "data.splits.exclusive_sources: expected bool"),
    ("  same_event: false ", "  same_event: false\n  test_from_val: 0.5 ", "pairing.test_from_val: unknown key"),
    ("  distinct_source: true ", "  distinct_source: true\n  test_from_val: 0.5 ", "triplets.test_from_val: unknown key"),
])
def test_data_side_keys_are_checked(root, tmp_path, capsys, old, new, message):
    assert message in params_error(edited(root, tmp_path, old, new), capsys)

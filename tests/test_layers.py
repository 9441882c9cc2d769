"""The package's shape is the paper's: `tfcovr.data` -> `tfcovr.models` -> `tfcovr.eval` -> `tfcovr.train`, with `core` below
all and `pipeline`, `cli` (and the test fixtures of `toys` and `rehearsal`) above. Imports run one way, read from the code with `ast`."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"core": 0, "data": 1, "models": 2, "eval": 3, "train": 4, "toys": 5, "rehearsal": 5, "pipeline": 5, "cli": 5}
TRAIN_USERS = {"pipeline", "cli"}                      # the only modules outside tfcovr.train that may import it


def modules() -> dict[str, Path]:
    "Dotted name -> file of every module of the package (private ones like _modidx left out)."
    out = {}
    for f in sorted((ROOT / "tfcovr").rglob("*.py")):
        if f.name.startswith("_") and f.name != "__init__.py" or "__pycache__" in f.parts: continue
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if f.name == "__init__.py" else parts)] = f
    return out


def layer(name: str) -> str:
    "The layer of a dotted module name: its first part below `tfcovr`."
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "core"


def tfcovr_imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    "(imported module, line, at module level) for every import of a tfcovr module in `path`."
    tree, package = ast.parse(path.read_text(encoding="utf-8")), name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import): targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] if base != "tfcovr" else [f"tfcovr.{a.name}" for a in node.names]
        else: continue
        out += [(t, node.lineno, id(node) in top) for t in targets if t.split(".")[0] == "tfcovr" and t != "tfcovr"]
    return out


MODULES = modules()


def test_every_module_has_a_layer():
    unknown = sorted(m for m in MODULES if m != "tfcovr" and layer(m) not in LAYERS)
    assert not unknown, f"modules outside the layers {sorted(LAYERS)}: {unknown}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "tfcovr"))
def test_imports_run_one_way(name):
    own = layer(name)
    bad = []
    for target, line, top in tfcovr_imports(name, MODULES[name]):
        other = layer(target)
        if other == "train" and own != "train" and own not in TRAIN_USERS:
            bad.append(f"line {line}: {target} (only pipeline and cli import tfcovr.train)")
        elif LAYERS[other] > LAYERS[own]:
            bad.append(f"line {line}: {target} ({own} may not import {other})")
        if not top and own not in ("cli",):
            bad.append(f"line {line}: {target} imported inside a function (it hides the import graph)")
    assert not bad, f"{MODULES[name].relative_to(ROOT)}:\n  " + "\n  ".join(bad)


def test_layer_rules_catch_a_reversed_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from tfcovr.train.stage1 import train_stage1\ndef g():\n    from tfcovr.core import rng\n")
    got = tfcovr_imports("tfcovr.data.x", f)
    assert got == [("tfcovr.train.stage1", 1, True), ("tfcovr.core", 3, False)]
    assert LAYERS[layer(got[0][0])] > LAYERS[layer("tfcovr.data.x")]

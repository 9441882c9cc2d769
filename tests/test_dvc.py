"""dvc.yaml is checked against the code: every stage depends on exactly the `tfcovr` modules its notebook imports,
directly or through other modules (found with `ast`, function-level imports included), so that a change of any of
them re-runs the stage and a change of any other module does not."""
import ast
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = "tfcovr"


def imported_modules(source: str, package: str | None = None) -> set[str]:
    "Dotted names of the `tfcovr` modules that `source` imports anywhere (`package`: the importing module's package)."
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PKG}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = (package or "").split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != PKG: continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}          # `from tfcovr import core` names a module
    return {m for m in found if module_file(m) is not None}


def module_file(name: str) -> Path | None:
    "The source file of module `name` in the repository, or None when `name` is not a module (a function, a class)."
    path = ROOT.joinpath(*name.split("."))
    for p in (path.with_suffix(".py"), path / "__init__.py"):
        if p.exists(): return p
    return None


def closure(modules: set[str]) -> set[str]:
    "`modules` and every `tfcovr` module they import, transitively."
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        if m in seen: continue
        seen.add(m)
        f = module_file(m)
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        todo += imported_modules(f.read_text(encoding="utf-8"), package) - seen
        parent = m.rpartition(".")[0]                      # importing a.b runs a/__init__.py first
        if parent and parent not in seen: todo.append(parent)
    return seen


def notebook_source(path: Path) -> str:
    "The code cells of a notebook, joined (cells with shell escapes or magics dropped)."
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n".join(c for c in code if not c.lstrip().startswith(("!", "%")))


def module_deps(deps: list[str]) -> set[str]:
    "The `tfcovr` files among a stage's deps (a folder dep stands for every module in it)."
    out = set()
    for d in deps:
        p = ROOT / d
        if not str(d).startswith(PKG + "/") and d != PKG: continue
        out |= {f.relative_to(ROOT).as_posix() for f in p.rglob("*.py") if "__pycache__" not in f.parts} if p.is_dir() \
            else {Path(d).as_posix()}
    return out


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_notebook(stage: dict) -> Path:
    nbs = [d for d in stage["deps"] if str(d).startswith("nbs/stages/")]
    assert len(nbs) == 1, f"expected one stage notebook among the deps, got {nbs}"
    return ROOT / nbs[0]


def test_imported_modules_resolves_absolute_relative_and_package_imports():
    src = "import tfcovr.core\nfrom tfcovr.data.video import load_clip\nfrom .labels import x\nfrom . import rules\n" \
          "from ..models.aim import AIM\ndef f():\n    from tfcovr.eval import embed\nimport numpy\n"
    assert imported_modules(src, "tfcovr.data") == {"tfcovr.core", "tfcovr.data", "tfcovr.data.video",
                                                    "tfcovr.data.labels", "tfcovr.data.rules", "tfcovr.models.aim",
                                                    "tfcovr.eval", "tfcovr.eval.embed"}


def test_closure_follows_imports_transitively():
    got = closure({"tfcovr.data.triplets"})
    assert "tfcovr.core" in got and "tfcovr.data.triplets" in got and "tfcovr.pipeline" not in got


@pytest.mark.parametrize("name", list(stages()))
def test_stage_deps_are_its_import_closure(name):
    stage = stages()[name]
    nb = stage_notebook(stage)
    need = {module_file(m).relative_to(ROOT).as_posix() for m in closure(imported_modules(notebook_source(nb)))}
    have = module_deps(stage["deps"])
    missing, extra = sorted(need - have), sorted(have - need)
    assert not missing and not extra, (f"dvc.yaml stage {name!r} ({nb.name}): missing deps {missing}; "
                                       f"deps it does not import {extra}")


def test_every_stage_notebook_is_a_stage():
    used = {stage_notebook(s).name for s in stages().values()}
    assert used == {p.name for p in (ROOT / "nbs" / "stages").glob("*.ipynb")}


@pytest.mark.parametrize("name", list(stages()))
def test_every_stage_follows_the_preset(name):
    "A preset changes what every stage reads: each stage depends on the shipped presets and on `preset` and `override`."
    stage = stages()[name]
    assert "tfcovr/presets" in stage["deps"], f"stage {name!r} does not depend on tfcovr/presets"
    params = stage["params"]
    whole_file = any(isinstance(p, dict) and "params.yaml" in p for p in params)
    assert whole_file or {"preset", "override"} <= set(params), f"stage {name!r} does not read preset and override"


def test_no_stage_hashes_the_raw_data():
    "Stages that read clips depend on the manifest of the raw data, never on the data folder itself."
    for name, stage in stages().items():
        assert not any(str(d).startswith(("data/raw", "${data.root}")) for d in stage["deps"]), name
    readers = [n for n, s in stages().items() if "data/build/raw_manifest.json" in s["deps"]]
    assert {"labels", "stage1", "embed", "report"} <= set(readers), readers
    assert stages()["manifest"].get("always_changed") is True

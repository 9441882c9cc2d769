"""README.md is the front page of the docs site, nbs/index.ipynb, written out by docs/readme.py: the two never drift."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_written_from_the_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + "\nrun `make readme` after editing nbs/index.ipynb (README.md is written from it)"


def test_render_joins_cells_and_rewrites_links(tmp_path):
    sys.path.insert(0, str(ROOT / "docs"))
    from readme import render
    nb = {"cells": [{"cell_type": "markdown", "source": ["# t\n", "\n", "![a](../reports/synth/x.png)\n"]},
                    {"cell_type": "code", "source": ["#|hide\n", "import os"]},
                    {"cell_type": "code", "source": ["print(1)"]},
                    {"cell_type": "markdown", "source": ["## s\n", "<img src=\"../reports/y.png\">"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "i.ipynb").write_text(json.dumps(nb))
    assert render(tmp_path / "i.ipynb") == "# t\n\n![a](reports/synth/x.png)\n\n```python\nprint(1)\n```\n\n## s\n<img src=\"reports/y.png\">\n"


def test_every_notebook_is_in_the_reading_order_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for nb in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        assert f"| `{nb.stem}` |" in text, f"{nb.name} is missing from the README's notebook table"

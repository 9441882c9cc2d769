"""README.md is written from nbs/index.ipynb, the front page of the docs site: `python docs/readme.py` writes it,
`python docs/readme.py --check` exits 1 when README.md differs (tests/test_readme.py runs the check).

The notebook's markdown cells, in order, joined by blank lines; a code cell becomes a fenced Python block. Links
relative to nbs/ (`../reports/...`) become relative to the repository root (`reports/...`)."""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README = ROOT / "nbs" / "index.ipynb", ROOT / "README.md"
_UP = re.compile(r"(\]\(|src=\")\.\./")          # a markdown link or an <img src="..."> that starts at nbs/../


def render(index: Path = INDEX) -> str:
    "The README text of an index notebook."
    cells = json.loads(index.read_text(encoding="utf-8"))["cells"]
    parts = []
    for c in cells:
        src = "".join(c["source"]).strip("\n")
        if not src: continue
        if c["cell_type"] == "markdown": parts.append(_UP.sub(r"\1", src))
        elif c["cell_type"] == "code" and not src.lstrip().startswith("#|"): parts.append(f"```python\n{src}\n```")
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not what nbs/index.ipynb renders to")
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        if README.read_text(encoding="utf-8") == text: print("README.md matches nbs/index.ipynb"); return 0
        print("README.md differs from nbs/index.ipynb: edit the notebook, then run `make readme`", file=sys.stderr); return 1
    tmp = README.with_name(".README.md.tmp")
    tmp.write_text(text, encoding="utf-8"); tmp.replace(README)
    print(f"wrote {README.relative_to(ROOT)} from {INDEX.relative_to(ROOT)}")
    return 0


if __name__ == "__main__": sys.exit(main())

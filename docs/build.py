#!/usr/bin/env python
"""Build tfcovr's documentation site into `_docs/` from the notebooks, offline and without Quarto.

nbdev's own notebook processors (`nbdev.processors.FilterDefaults`, what `nbdev_proc_nbs` runs before Quarto) insert
and execute the API reference (`show_doc`) of every exported symbol; nbconvert renders each processed notebook with
JupyterLab's cell styles and no script, font or style sheet from the network. The Quarto syntax those processors leave
behind (cell options, fenced divs, link attributes) is translated here, and formulas are drawn by matplotlib's mathtext.

Pages: the front page (nbs/index.ipynb); one page per chapter (nbs/*.ipynb) in reading order (the file numbers);
the results of the committed default run (results.md, breakdown.md, every PNG figure and, when the run left them,
its executed stage notebooks); and the library's source with line anchors, where the API reference's links point.
Every page is checked: nothing it loads comes from the network and every local link and anchor resolves.
The site is built in a temporary folder that replaces the output folder only when the whole build succeeded.

    python docs/build.py                      # -> _docs/
    python docs/build.py --out /tmp/site --only 32_eval.evaluate
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import fnmatch
import html
import io
import multiprocessing
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
SECTIONS = ("Home", "Chapters", "Results", "Stage notebooks")


@dataclass
class Page:
    "One page of the site: what it is built from, where it goes, and its entry in the navigation."
    section: str      # one of SECTIONS
    src: Path         # the notebook, Markdown file or folder it is built from
    file: str         # its path in the site, relative to the site's root
    title: str
    note: str = ""    # a second line in the navigation (a chapter's module)
    process: bool = False  # run nbdev's processors (API reference) before rendering


@dataclass
class Site:
    "Where the site's inputs are and how its links are rewritten."
    root: Path        # the repository (settings.ini)
    nbs: Path         # the chapters
    reports: Path     # the committed default run
    lib: Path         # the package's source
    doc_url: str      # the published site's address, rewritten to relative links
    src_url: str      # the repository's source address, rewritten to the local source pages
    name: str         # the site's title
    doc_path: Path    # where the site goes by default (settings.ini's doc_path)
    pages: list[Page] = field(default_factory=list)


# --- what the site holds ------------------------------------------------------------------------------------------

def read_site(root: Path, reports: Path) -> Site:
    "The site's settings from settings.ini (nbdev's config)."
    from nbdev.config import get_config
    cfg = get_config(path=root)
    return Site(root=root, nbs=Path(cfg.nbs_path), reports=reports, lib=Path(cfg.lib_path),
                doc_url=f"{cfg.doc_host.rstrip('/')}/{cfg.doc_baseurl.strip('/')}/".replace("//", "/").replace(":/", "://"),
                src_url=f"{cfg.git_url.rstrip('/')}/blob/{cfg.branch}/", name=cfg.title,
                doc_path=Path(cfg.doc_path))


def notebook_front(path: Path) -> tuple[dict, str]:
    "A notebook's frontmatter as nbdev reads it (title, description, output-file) and its module, running nothing."
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    proc = NBProcessor(path, procs=[FrontmatterProc])
    proc.process()
    module = next((c.directives_["default_exp"][0] for c in proc.nb.cells if "default_exp" in c.directives_), "")
    return proc.nb.frontmatter_, module


def chapter_pages(site: Site) -> list[Page]:
    "The front page and the chapters, in reading order (file names sort by their numbers)."
    index = site.nbs / "index.ipynb"
    if not index.exists(): raise FileNotFoundError(f"{index}: the front page notebook is missing")
    pages = [Page("Home", index, "index.html", notebook_front(index)[0].get("title", site.name), process=True)]
    for path in sorted(site.nbs.glob("*.ipynb")):
        if path.name == "index.ipynb" or path.name[0] in "._": continue
        fm, module = notebook_front(path)
        if "title" not in fm: raise ValueError(f"{path}: the first markdown cell must be '# Title' (nbdev's frontmatter)")
        pages.append(Page("Chapters", path, fm["output-file"], fm["title"],
                          note=f"{site.lib.name}.{module}" if module else "", process=True))
    return pages


def stage_order(root: Path) -> list[str]:
    "The stage notebooks' names in dvc.yaml's order of stages."
    import yaml
    dvc = root / "dvc.yaml"
    if not dvc.exists(): return []
    names = []
    for stage in (yaml.safe_load(dvc.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []) if isinstance(stage, dict) else []:
            out = next(iter(out)) if isinstance(out, dict) else out
            if str(out).endswith(".ipynb"): names.append(Path(out).stem)
    return names


def figure_files(reports: Path) -> list[Path]:
    "The run's PNG figures: reports/<run>/*.png and everything under figures/, sorted."
    return sorted(reports.glob("*.png")) + sorted((reports / "figures").rglob("*.png"))


def result_pages(site: Site) -> list[Page]:
    "Results, breakdown and figures of the committed run, and its executed stage notebooks when present."
    rep = site.reports
    pages = []
    for name in ("results", "breakdown"):
        md = rep / f"{name}.md"
        if md.exists(): pages.append(Page("Results", md, f"{name}.html", name.title()))
    if figure_files(rep): pages.append(Page("Results", rep, "figures.html", "Figures"))
    stages = rep / "stages"
    if stages.is_dir():
        order = {n: i for i, n in enumerate(stage_order(site.root))}
        for nb in sorted(stages.glob("*.ipynb"), key=lambda p: (order.get(p.stem, len(order)), p.stem)):
            pages.append(Page("Stage notebooks", nb, f"stage.{nb.stem}.html", nb.stem))
    return pages


def nav_html(site: Site, current: Page | None, prefix: str) -> str:
    "The navigation column: every page by section, links relative to a page `prefix` below the site's root."
    out = [f'<a class="site-title" href="{prefix}index.html">{html.escape(site.name)}</a>']
    for section in SECTIONS:
        pages = [p for p in site.pages if p.section == section]
        if not pages or section == "Home": continue
        tag = "ol" if section == "Chapters" else "ul"
        out.append(f"<h2>{section}</h2><{tag}>")
        for p in pages:
            cls = ' class="current"' if p is current else ""
            note = f'<span class="module">{html.escape(p.note)}</span>' if p.note else ""
            out.append(f'<li><a href="{prefix}{p.file}"{cls}>{html.escape(p.title)}</a>{note}</li>')
        out.append(f"</{tag}>")
    return "\n".join(out)


# --- notebooks: nbdev's processors, then what Quarto would have done -------------------------------------------

_OPT = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")
_FENCE_DIV = re.compile(r"^\s*:::.*$")
_SOURCE_LINK = re.compile(r"\[source\]\((\S+?)\)\{[^}]*\}")
_CODE_LINK = re.compile(r"\[`([^`]+)`\]\([^)\s]*\)")
_FENCED = re.compile(r"(```.*?```)", re.S)
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])", re.S)
_TEX_FIXES = [(re.compile(r"\\[Bb]igg?[lr]?(?![a-zA-Z])"), ""), (re.compile(r"\\le(?![a-zA-Z])"), r"\\leq"),
              (re.compile(r"\\ge(?![a-zA-Z])"), r"\\geq"), (re.compile(r"\s*\n\s*"), " ")]


def tex_image(tex: str, display: bool) -> str:
    "A formula as an <img> of an SVG drawn by matplotlib's mathtext (no script, no network); the TeX as code if mathtext can't."
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import math_to_image
    src = tex.strip()
    for pat, rep in _TEX_FIXES: src = pat.sub(rep, src)
    buf = io.BytesIO()
    try: depth = math_to_image(f"${src}$", buf, prop=FontProperties(size=13 if display else 11), format="svg")
    except ValueError: return f"<code>{html.escape(tex.strip())}</code>"
    data = base64.b64encode(buf.getvalue()).decode()
    alt = html.escape(tex.strip(), quote=True)
    if display: return f'<img class="math-display" alt="{alt}" src="data:image/svg+xml;base64,{data}">'
    return f'<img class="math" alt="{alt}" style="vertical-align:-{depth:.1f}pt" src="data:image/svg+xml;base64,{data}">'


def render_math(md: str) -> str:
    "Replace $...$ and $$...$$ outside code with formula images."
    parts = _CODE.split(md)
    for i in range(0, len(parts), 2):
        parts[i] = _MATH.sub(lambda m: tex_image(m.group(1) or m.group(2), m.group(1) is not None), parts[i])
    return "".join(parts)


def api_markdown(md: str) -> str:
    "A `show_doc` output without Quarto's syntax: a plain source link, signatures without Markdown links."
    md = _SOURCE_LINK.sub(lambda m: f'<a class="source-link" href="{m.group(1)}">source</a>', md)
    return _FENCED.sub(lambda m: _CODE_LINK.sub(r"\1", m.group(1)), md)


def cell_options(source: str) -> tuple[dict, str]:
    "The Quarto options (`#| key: value`) leading a code cell, and the source without them."
    lines, opts = source.splitlines(), {}
    while lines and lines[0].startswith("#|"):
        m = _OPT.match(lines.pop(0))
        if m: opts[m.group(1)] = m.group(2).strip("'\"").lower()
    return opts, "\n".join(lines)


def _text(x) -> str: return "".join(x) if isinstance(x, list) else (x or "")


def coalesce_streams(outputs: list[dict]) -> list[dict]:
    "Join consecutive stdout/stderr pieces and keep what a terminal shows of a line rewritten with \\r (progress bars)."
    res = []
    for out in outputs:
        if out.get("output_type") == "stream" and res and res[-1].get("output_type") == "stream" \
                and res[-1].get("name") == out.get("name"):
            res[-1]["text"] = _text(res[-1]["text"]) + _text(out["text"])
        else: res.append(dict(out))
    for out in res:
        if out.get("output_type") == "stream":
            out["text"] = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in _text(out["text"]).split("\n"))
    return [o for o in res if o.get("output_type") != "stream" or o["text"].strip()]


def quarto_to_nbconvert(nb: dict) -> tuple[dict, int]:
    "Translate what nbdev's processors leave for Quarto; returns the notebook and its number of API entries."
    import yaml
    cells, n_api = [], 0
    for cell in nb["cells"]:
        src = _text(cell.get("source"))
        if cell["cell_type"] == "raw" and src.lstrip().startswith("---"):
            fm = yaml.safe_load(src.strip().strip("-")) or {}
            head = f"# {fm.get('title', '')}" + (f"\n\n> {fm['description']}" if fm.get("description") else "")
            cells.append({"cell_type": "markdown", "metadata": {}, "source": head})
            continue
        if cell["cell_type"] == "markdown":
            if all(_FENCE_DIV.match(l) for l in src.splitlines() if l.strip()) and src.strip(): continue
            cell["source"] = render_math(src)
        elif cell["cell_type"] == "code":
            opts, cell["source"] = cell_options(src)
            if opts.get("include") == "false": continue
            if opts.get("output") == "false": cell["outputs"] = []
            cell["outputs"] = coalesce_streams(cell.get("outputs", []))
            if opts.get("echo") == "false" or not cell["source"].strip():
                cell.setdefault("metadata", {}).setdefault("tags", []).append("remove_input")
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "text/markdown" in data:
                    md = _text(data["text/markdown"])
                    n_api += bool(_SOURCE_LINK.search(md))
                    data["text/markdown"] = api_markdown(md)
        cells.append(cell)
    nb["cells"] = cells
    return nb, n_api


def doc_filter(skipped: list[str]):
    "nbdev's documentation processors, where a cell that imports *and* computes may fail (noted in `skipped`)."
    import ast
    from nbdev.processors import FilterDefaults, exec_show_docs

    class exec_api_cells(exec_show_docs):
        "`exec_show_docs`, except that an example cell nbdev runs only for its imports may fail without failing the page."
        def __call__(self, cell):
            stored = cell.get("outputs")
            try: return super().__call__(cell)
            except Exception:
                stmts = cell.parsed_() or []  # the cell's top-level statements
                imports = any(isinstance(n, (ast.Import, ast.ImportFrom)) for t in stmts for n in ast.walk(t))
                computes = any(not isinstance(t, (ast.Import, ast.ImportFrom)) for t in stmts)
                mixed = (imports and computes and "show_doc" not in cell.source
                         and not cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"})
                if not mixed: raise
                cause = self.k.exc
                self.k.exc, cell["outputs"] = None, stored or []  # the outputs stored in the notebook, if any
                skipped.append(f"a cell that imports and computes failed ({type(cause).__name__}: {cause}); "
                               f"it starts {cell.source.strip().splitlines()[0][:60]!r}")

    class DocFilter(FilterDefaults):
        def base_procs(self): return [exec_api_cells if p is exec_show_docs else p for p in super().base_procs()]
    return DocFilter()


def processed_notebook(path: Path, skipped: list[str]) -> dict:
    "nbdev's documentation processing of one notebook (show_doc inserted and executed), as a plain dict."
    from execnb.nbio import nb2dict, read_nb
    os.environ["IN_TEST"] = "1"  # as nbdev's own processing does
    nb, main, cwd = read_nb(path), sys.modules["__main__"], os.getcwd()
    os.chdir(path.parent)  # the notebook's cells run where Jupyter and nbdev_test run them
    try: doc_filter(skipped)(nb)
    except Exception as e: raise RuntimeError(f"{path}: nbdev could not build its API reference: {e}") from e
    finally: sys.modules["__main__"], _ = main, os.chdir(cwd)  # IPython's shell puts its own __main__ there
    return nb2dict(nb)


def rewrite_html(text: str, site: Site, prefix: str) -> str:
    "Links to the published site become relative, links to the repository's source point at the source pages, anchors lower case."
    text = text.replace(f'href="{site.doc_url}', f'href="{prefix}')
    run = "../" + rel(site.reports, site.root) + "/"          # a notebook's link into the committed run (nbs/../reports/synth/)
    for attr in ("src", "href"): text = text.replace(f'{attr}="{run}', f'{attr}="{prefix}results/')
    src = re.escape(site.src_url)
    text = re.sub(rf'href="{src}([^"#]+\.py)(?:#L(\d+))?"',
                  lambda m: f'href="{prefix}src/{m.group(1)}.html' + (f'#L-{m.group(2)}"' if m.group(2) else '"'), text)
    text = re.sub(r'(<h[1-6] id=")([^"]+)(")', lambda m: m.group(1) + m.group(2).lower() + m.group(3), text)
    return re.sub(r'(class="anchor-link" href="#)([^"]+)(")', lambda m: m.group(1) + m.group(2).lower() + m.group(3), text)


_EXPORTER = None


def html_page(nb: dict, title: str, nav: str, footer: str) -> str:
    "One notebook as a page of the site (nbconvert, the site's template)."
    global _EXPORTER
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    if _EXPORTER is None:
        c = Config()
        c.HTMLExporter.extra_template_basedirs = [str(DOCS / "templates")]
        c.HTMLExporter.template_name = "tfcovr"
        c.HTMLExporter.exclude_input_prompt = True
        c.HTMLExporter.exclude_output_prompt = True
        c.TagRemovePreprocessor.enabled = True
        c.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
        _EXPORTER = HTMLExporter(config=c)
    node = nbformat.from_dict(nb)
    for i, cell in enumerate(node.cells): cell.setdefault("id", f"cell-{i}")  # nbdev_clean drops them
    node.metadata["title"] = title
    body, _ = _EXPORTER.from_notebook_node(node, resources={"site": {"root": "", "nav": nav, "footer": footer}})
    return body


def build_page(page: Page, site: Site, out: Path, nav: str, footer: str) -> tuple[str, float, int, list[str]]:
    "Render one page into the site folder `out`; returns its file, seconds, number of API entries and notes."
    import nbformat
    t0, notes = time.time(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbdev's advice on cells that import and compute: see the notes
        if page.process: nb, n_api = quarto_to_nbconvert(processed_notebook(page.src, notes))
        elif page.src.suffix == ".ipynb":
            nb, n_api = quarto_to_nbconvert(nbformat.read(page.src, as_version=4))
        else: nb, n_api = report_notebook(page, site), 0
    text = rewrite_html(html_page(nb, f"{page.title} – {site.name}", nav, footer), site, "")
    (out / page.file).write_text(text, encoding="utf-8")
    return page.file, time.time() - t0, n_api, notes


# --- the run's results -------------------------------------------------------------------------------------------

def report_notebook(page: Page, site: Site) -> dict:
    "A results page as a one-notebook page: a Markdown report, or every figure of the run."
    import nbformat.v4 as v4
    if page.file != "figures.html": return v4.new_notebook(cells=[v4.new_markdown_cell(page.src.read_text())])
    cells, folder = [v4.new_markdown_cell(f"# Figures\n\nEvery figure of the run in `{rel(site.reports, site.root)}`.")], None
    for png in figure_files(site.reports):
        sub = png.parent.relative_to(site.reports).as_posix()
        if sub != folder:
            folder = sub
            cells.append(v4.new_markdown_cell(f"## {'the run' if sub == '.' else sub}"))
        name = png.relative_to(site.reports).as_posix()
        cells.append(v4.new_markdown_cell(
            f'<figure class="figure"><img src="results/{html.escape(name)}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"))
    return v4.new_notebook(cells=cells)


def copy_figures(site: Site, out: Path) -> int:
    "Copy the run's figures to results/ in the site."
    files = figure_files(site.reports)
    for png in files:
        dst = out / "results" / png.relative_to(site.reports)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, dst)
    return len(files)


# --- the library's source ----------------------------------------------------------------------------------------

def source_pages(site: Site, out: Path, footer: str) -> int:
    "Every module of the package as a highlighted page with line anchors L-<n> (the API reference's source links)."
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    fmt = HtmlFormatter(linenos="table", lineanchors="L", anchorlinenos=True, cssclass="highlight")
    files = sorted(p for p in site.lib.rglob("*.py") if "__pycache__" not in p.parts)
    for py in files:
        name = py.relative_to(site.root).as_posix()
        dst = out / "src" / f"{name}.html"
        dst.parent.mkdir(parents=True, exist_ok=True)
        prefix = "../" * (len(Path(name).parts))
        body = highlight(py.read_text(encoding="utf-8"), PythonLexer(), fmt)
        dst.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(name)} – {html.escape(site.name)}</title>
<link rel="stylesheet" href="{prefix}site.css"><style>{fmt.get_style_defs('.highlight')}</style></head>
<body class="site source-page"><nav class="site-nav" aria-label="Contents">{nav_html(site, None, prefix)}</nav>
<main class="site-main"><h1>{html.escape(name)}</h1>
<p>Generated from the notebooks by <code>nbdev_export</code>; read the chapter for the prose and the tests.</p>
{body}<footer class="site-footer">{footer}</footer></main></body></html>
""", encoding="utf-8")
    return len(files)


def site_css() -> str:
    "JupyterLab's cell styles (light theme) as nbconvert ships them, and the site's layout."
    from jupyter_core.paths import jupyter_path
    for base in jupyter_path("nbconvert", "templates"):
        static = Path(base) / "lab" / "static"
        if (static / "index.css").exists():
            return "\n".join((static / f).read_text(encoding="utf-8") for f in ("index.css", "theme-light.css")) + \
                   "\n" + (DOCS / "site.css").read_text(encoding="utf-8")
    raise FileNotFoundError("nbconvert's lab template (static/index.css) is not installed: pip install nbconvert")


# --- checks ------------------------------------------------------------------------------------------------------

_REF = re.compile(r"""<(\w+)\b[^>]*?\s(href|src)=["']([^"']*)["']""", re.I)
_ID = re.compile(r"""\s(?:id|name)=["']([^"']+)["']""")
_CSS_URL = re.compile(r"""url\(\s*['"]?(https?:)?//""", re.I)
_LOCAL_ANCHOR = re.compile(r'href="([\w.-]+\.html)#([^"]+)"')


def page_ids(out: Path) -> dict[Path, set[str]]:
    return {p: set(_ID.findall(p.read_text(encoding="utf-8"))) for p in out.rglob("*.html")}


def definition_line(py: Path, name: str) -> int | None:
    "The line that defines `name` (a function, class, method or assignment) in a module."
    if not py.exists(): return None
    last = re.escape(name.split(".")[-1])
    pat = re.compile(rf"^\s*(?:async\s+def|def|class)\s+{last}\b|^\s*{last}\s*[:=]", re.I)
    return next((i for i, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1) if pat.match(line)), None)


def fix_anchors(out: Path, site: Site) -> dict[str, int]:
    """Links to API entries with no heading (methods, properties, private helpers that nbdev links but documents only
    in the source) point at their class's entry, else at their definition in the source pages, else at the page."""
    ids, counts = page_ids(out), {"class": 0, "source": 0, "page": 0}
    modules = {p.file: site.root / site.lib.parent / (p.note.replace(".", "/") + ".py") for p in site.pages
               if p.section == "Chapters" and p.note}

    def fix(m):
        file, frag = m.group(1), m.group(2)
        target = out / file
        if not target.exists() or frag in ids.get(target, set()): return m.group(0)
        head = frag.split(".")[0]
        if "." in frag and head in ids[target]:
            counts["class"] += 1
            return f'href="{file}#{head}"'
        py = modules.get(file)
        line = definition_line(py, frag) if py else None
        if line:
            counts["source"] += 1
            return f'href="src/{rel(py, site.root)}.html#L-{line}"'
        counts["page"] += 1
        return f'href="{file}"'

    for page in out.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = _LOCAL_ANCHOR.sub(fix, text)
        if new != text: page.write_text(new, encoding="utf-8")
    return counts


def check_site(out: Path, left_out: frozenset[str] = frozenset()) -> tuple[list[str], list[str], list[str]]:
    """Resources loaded from the network, broken local links or anchors, and links to other sites, over every page
    (links to the pages `left_out` of a partial build excepted)."""
    ids = page_ids(out)
    remote, broken, external = [], [], []
    for page in ids:
        text, where = page.read_text(encoding="utf-8"), page.relative_to(out).as_posix()
        for tag, attr, url in _REF.findall(text):
            if url.startswith(("data:", "mailto:", "javascript:")) or not url: continue
            if re.match(r"(https?:)?//", url):
                (external if (tag.lower(), attr.lower()) == ("a", "href") else remote).append(f"{where}: <{tag} {attr}={url}>")
                continue
            path, _, frag = url.partition("#")
            target = (page.parent / path).resolve() if path else page
            if target.is_relative_to(out.resolve()) and target.relative_to(out.resolve()).as_posix() in left_out: continue
            if not target.exists(): broken.append(f"{where}: {url} (no such file)")
            elif frag and target.suffix == ".html" and frag not in ids.get(target, set()):
                broken.append(f"{where}: {url} (no anchor #{frag})")
        if any(_CSS_URL.search(css) for css in re.findall(r"<style[^>]*>(.*?)</style>", text, re.S)):
            remote.append(f"{where}: a style loads url(http...)")
    css = out / "site.css"
    if css.exists() and _CSS_URL.search(css.read_text(encoding="utf-8")): remote.append("site.css: url(http...)")
    return remote, broken, external


# --- the build ---------------------------------------------------------------------------------------------------

def rel(p: Path, root: Path) -> str:
    "`p` relative to `root` when below it (links followed only if needed), else as it is."
    for a, b in ((p.absolute(), root.absolute()), (p.resolve(), root.resolve())):
        if a.is_relative_to(b): return a.relative_to(b).as_posix()
    return str(p)


def _worker_init(root: str) -> None:
    os.chdir(root)  # nbdev finds settings.ini from the working folder
    import matplotlib
    matplotlib.use("Agg")


def build(out: Path | None = None, reports: Path | None = None, workers: int = 2, only: list[str] | None = None,
          root: Path = ROOT) -> Path:
    "Build the site of the nbdev project `root` into `out` (replaced only when everything succeeded); returns `out`."
    t0 = time.time()
    root = Path(root).resolve()
    reports = Path(reports).resolve() if reports else root / "reports" / "synth"
    os.chdir(root)
    site = read_site(root, reports)
    out = Path(out).resolve() if out else site.doc_path
    site.pages = chapter_pages(site) + result_pages(site)
    todo = [p for p in site.pages if not only or p.section != "Chapters"
            or any(fnmatch.fnmatch(p.src.stem, pat) or p.src.stem == pat for pat in only)]
    if only and not any(p.section == "Chapters" for p in todo):
        raise SystemExit(f"--only {only}: no chapter of {rel(site.nbs, root)} matches")
    print(f"docs: {len(todo)} of {len(site.pages)} pages ({sum(p.section == 'Chapters' for p in site.pages)} chapters) "
          f"-> {out}, {workers} worker(s)", flush=True)
    footer = (f"Built from the notebooks of {html.escape(site.name)} by <code>docs/build.py</code> "
              f"(nbdev's processors and nbconvert) on {time.strftime('%Y-%m-%d')}.")
    from tfcovr.core import atomic_dir
    with atomic_dir(out) as tmp:
        (tmp / "site.css").write_text(site_css(), encoding="utf-8")
        n_fig = copy_figures(site, tmp)
        n_src = source_pages(site, tmp, footer)
        print(f"docs: site.css, {n_fig} figures, {n_src} source pages", flush=True)
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max(1, workers), mp_context=ctx, initializer=_worker_init,
                                    initargs=(str(root),)) as pool:
            jobs = {pool.submit(build_page, p, site, tmp, nav_html(site, p, ""), footer): p for p in todo}
            for job in cf.as_completed(jobs):
                page = jobs[job]
                try: file, secs, n_api, notes = job.result()
                except Exception as e:
                    for j in jobs: j.cancel()
                    raise SystemExit(f"docs: {rel(page.src, root)} failed: {e}") from e
                api = f", {n_api} API entries" if page.process else ""
                print(f"docs: {file:<28} {secs:5.1f}s  <- {rel(page.src, root)}{api}", flush=True)
                for note in notes: print(f"docs:   note: {rel(page.src, root)}: {note}", flush=True)
        fixed = fix_anchors(tmp, site)
        print("docs: links to API entries without a heading now point at " +
              ", ".join(f"{n} x {k}" for k, n in fixed.items()), flush=True)
        remote, broken, external = check_site(tmp, frozenset(p.file for p in site.pages if p not in todo))
        for line in external: print(f"docs: external link (not loaded): {line}")
        if remote or broken:
            raise SystemExit("docs: the site is not self-contained:\n  " + "\n  ".join(remote + broken))
    print(f"docs: built {len(todo)} pages in {time.time() - t0:.1f}s -> {out}/index.html", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="the site's folder, replaced when the build succeeds (default: settings.ini's "
                                             "doc_path, _docs/)")
    ap.add_argument("--reports", type=Path, help="the run whose results are shown (default: <root>/reports/synth)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the nbdev project (its settings.ini); default: this repository")
    ap.add_argument("--workers", type=int, default=2, help="processes rendering pages")
    ap.add_argument("--only", nargs="+", metavar="CHAPTER",
                    help="render only these chapters (notebook names or globs, e.g. 32_eval.evaluate); "
                         "the front page, results and navigation are always built")
    args = ap.parse_args(argv)
    build(args.out, args.reports, args.workers, args.only, root=args.root)


if __name__ == "__main__":
    main()

"""The documentation site (docs/build.py, `make docs`): built offline into a temporary folder, checked as files, then
opened in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium with the driver's path given)."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _load_build():
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _load_build()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The whole site, built by the same command as `make docs`, into a temporary folder."
    out = tmp_path_factory.mktemp("docs") / "site"
    t0 = time.time()
    res = subprocess.run([sys.executable, "docs/build.py", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"docs built in {time.time() - t0:.0f}s")
    return out, res.stdout


def _chapters():
    return [p for p in sorted((ROOT / "nbs").glob("*.ipynb")) if p.name != "index.ipynb" and p.name[0] not in "._"]


def _stored_figures(nb: Path) -> int:
    "Image outputs stored in a notebook (`make outputs`)."
    cells = json.loads(nb.read_text())["cells"]
    return sum(any(k.startswith("image/") for k in o.get("data", {})) for c in cells for o in c.get("outputs", []))


def _page_figures(html: str) -> int:
    return len(re.findall(r"""<img\b[^>]*\ssrc=["']data:image/(?:png|jpeg)""", html))


def _nav_files(page: Path, section: str) -> list[str]:
    "The links of one section of a page's navigation, in order."
    nav = re.search(r'<nav\b[^>]*class="site-nav".*?</nav>', page.read_text(), re.S).group(0)
    part = re.search(rf"<h2>{section}</h2>\s*<[ou]l>(.*?)</[ou]l>", nav, re.S).group(1)
    return re.findall(r'<a\b[^>]*\shref="([^"]+)"', part)


def test_site_files(site):
    out, log = site
    assert (out / "index.html").exists() and (out / "site.css").exists()
    chapters = _chapters()
    pages = [build.notebook_front(p)[0]["output-file"] for p in chapters]
    for name in pages: assert (out / name).exists(), name
    # the navigation lists every chapter in reading order (the file numbers), on every page
    assert _nav_files(out / "index.html", "Chapters") == pages
    assert _nav_files(out / "eval.evaluate.html", "Chapters") == pages
    assert re.search(r'<a class="current" href="eval.evaluate.html">Evaluation<', (out / "eval.evaluate.html").read_text())
    # the README's table of notebooks, in reading order, is the same list
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"## Notebooks, in reading order(.*?)\n## ", readme, re.S)
    if table: assert re.findall(r"^\| `(\w[\w.]*)` \|", table.group(1), re.M) == [p.stem for p in chapters]
    # nothing loads from the network, every local link and anchor resolves
    remote, broken, _ = build.check_site(out)
    assert remote == [] and broken == []
    css = re.sub(r"/\*.*?\*/", "", (out / "site.css").read_text(), flags=re.S)  # comments cite their sources
    assert "http" not in css and "@import" not in css
    html = (out / "eval.evaluate.html").read_text()
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*\s(src|href)=["']https?:""", html)
    assert "tfcovr.github.io" not in html and "github.com/tfcovr" not in html  # rewritten to local pages
    # the API reference of every chapter, with a source link to the local source page
    assert re.search(r'<h3 id="evaluate_table">evaluate_table', html)
    m = re.search(r'<a class="source-link" href="(src/tfcovr/eval/evaluate\.py\.html)#(L-\d+)">', html)
    assert m and f'id="{m.group(2)}"' in (out / m.group(1)).read_text()
    assert re.search(r"docs: eval\.evaluate\.html .* \d+ API entries", log)
    # every figure a chapter stores is on its page
    for nb, name in zip(chapters, pages): assert _page_figures((out / name).read_text()) >= _stored_figures(nb), name


def test_results_pages(site):
    out, _ = site
    reports = ROOT / "reports" / "synth"
    results = (out / "results.html").read_text()
    row = next(l for l in (reports / "results.md").read_text().splitlines() if l.startswith("| video+text | TF-CoVR-Base"))
    for number in row.strip("| ").split(" | ")[-4:]: assert f">{number}<" in results  # the table's mAP@K cells
    assert "Paired differences" in (out / "breakdown.html").read_text()
    figures = build.figure_files(reports)
    assert figures and (out / "figures.html").exists()
    for png in figures:
        copy = out / "results" / png.relative_to(reports)
        assert copy.read_bytes() == png.read_bytes()
        assert f'src="results/{png.relative_to(reports).as_posix()}"' in (out / "figures.html").read_text()
    stages = sorted((reports / "stages").glob("*.ipynb")) if (reports / "stages").is_dir() else []
    assert _nav_files(out / "index.html", "Results") == ["results.html", "breakdown.html", "figures.html"]
    for nb in stages: assert (out / f"stage.{nb.stem}.html").exists()


def test_math_and_streams():
    "Formulas become images (no MathJax); progress bars written with \\r keep their last state."
    md = build.render_math("loss $s_{ij} = q_i \\cdot t_j$ and `$HOME` and\n$$\\frac{1}{B}\\sum_i \\Big[x\\Big]$$")
    assert md.count('<img class="math') == 2 and "`$HOME`" in md and "$" not in md.replace("`$HOME`", "")
    outs = build.coalesce_streams([{"output_type": "stream", "name": "stderr", "text": "\rbar 0%"},
                                   {"output_type": "stream", "name": "stderr", "text": "\rbar 100%\n"},
                                   {"output_type": "stream", "name": "stdout", "text": "done\n"}])
    assert [o["text"] for o in outs] == ["bar 100%\n", "done\n"]


def test_failed_build_keeps_the_old_site(tmp_path):
    "A notebook whose API reference cannot run fails the build, names the notebook and leaves the old site as it was."
    proj = tmp_path / "proj"
    (proj / "nbs").mkdir(parents=True)
    (proj / "pkg").mkdir()
    shutil.copy(ROOT / "settings.ini", proj / "settings.ini")
    ini = (proj / "settings.ini").read_text().replace("lib_path = tfcovr", "lib_path = pkg")
    (proj / "settings.ini").write_text(ini)

    def nb(path, *cells):
        cells = [{"cell_type": t, "metadata": {}, "source": s, **({"outputs": [], "execution_count": None} if t == "code" else {})}
                 for t, s in cells]
        path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    nb(proj / "nbs" / "index.ipynb", ("markdown", "# proj\n> a project"))
    nb(proj / "nbs" / "00_bad.ipynb", ("markdown", "# Bad\n> fails"), ("code", "#| default_exp bad"),
       ("code", "#| export\ndef f(): pass\nraise ValueError('broken export cell')"))
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("old")
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), "--root", str(proj), "--out", str(out),
                          "--workers", "1"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    assert "00_bad.ipynb" in res.stderr + res.stdout and "broken export cell" in res.stderr + res.stdout
    assert [p.name for p in out.iterdir()] == ["index.html"] and (out / "index.html").read_text() == "old"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium or chromedriver is missing: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--host-resolver-rules=MAP * ~NOTFOUND"]:  # any request to the network fails, and shows in the log
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _open(browser, page: Path) -> dict:
    "Load a page; what the browser saw: title, images and whether they loaded, resources, console errors."
    browser.get(page.as_uri())
    browser.execute_async_script("const done = arguments[0]; Promise.all([...document.images].map("
                                 "i => i.decode().catch(() => null))).then(() => done())")
    seen = browser.execute_script("""return {
        title: document.title,
        h1: document.querySelector('main h1') && document.querySelector('main h1').textContent,
        images: [...document.images].map(i => [i.getAttribute('src').slice(0, 60), i.complete && i.naturalWidth > 0]),
        resources: performance.getEntriesByType('resource').map(r => r.name),
        chapters: document.querySelectorAll('nav.site-nav ol a').length}""")
    seen["errors"] = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    return seen


def test_pages_in_browser(site, browser):
    out, _ = site
    n_chapters = len(_chapters())
    index = _open(browser, out / "index.html")
    assert index["title"].startswith("tfcovr") and index["h1"].startswith("tfcovr")
    assert index["chapters"] == n_chapters and index["errors"] == []

    page = _open(browser, out / "eval.evaluate.html")
    assert page["h1"].startswith("Evaluation") and page["chapters"] == n_chapters and page["errors"] == []
    assert browser.execute_script("return document.getElementById('evaluate_table') !== null")
    sig = browser.execute_script("return document.getElementById('evaluate_table').parentElement.textContent")
    assert "def evaluate_table(" in sig and "EvaluationRun" in sig
    assert all(ok for _, ok in page["images"]), page["images"]

    chapters = _chapters()
    most = max(chapters, key=_stored_figures)  # the chapter with the most stored figures, if any are stored
    if _stored_figures(most):
        page = _open(browser, out / build.notebook_front(most)[0]["output-file"])
        assert sum(ok for src, ok in page["images"] if src.startswith("data:image/png")) >= _stored_figures(most)
        assert all(ok for _, ok in page["images"]) and page["errors"] == []

    figures = _open(browser, out / "figures.html")
    assert len(figures["images"]) == len(build.figure_files(ROOT / "reports" / "synth")) > 0
    assert all(ok for _, ok in figures["images"]) and figures["errors"] == []

    losses = _open(browser, out / "models.losses.html")  # formulas drawn as images
    assert sum(src.startswith("data:image/svg+xml") for src, _ in losses["images"]) >= 5
    assert all(ok for _, ok in losses["images"]) and losses["errors"] == []

    for seen in (index, page, figures, losses):
        assert all(r.startswith(("file:", "data:")) for r in seen["resources"]), seen["resources"]

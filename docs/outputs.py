#!/usr/bin/env python
"""Store the outputs of the cheap chapters in the notebooks, so that the documentation site shows their figures.

Each chapter (nbs/*.ipynb) runs the way `nbdev_test` runs it (in its own folder, cells flagged with a `tst_flags` flag
or `#| eval: false` skipped) in a fresh process that is stopped after `--limit` seconds. A chapter that finishes in time
without an error gets its outputs written in place (progress bars reduced to their last state), then `nbdev_clean`
normalises it (it keeps outputs and strips metadata and execution counts), so `make check-clean` still passes.
A slow or failing chapter is left as it was and listed.

    python docs/outputs.py                          # every chapter of nbs/, 60 s each at most
    python docs/outputs.py --nbs /tmp/copy/nbs --only 32_eval.evaluate 33_eval.report
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def run_one(src: Path, dst: Path) -> None:
    "Execute notebook `src` as nbdev_test does and write it, with its outputs, to `dst` (the child process's work)."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from nbdev.config import get_config
    from nbdev.process import extract_directives
    sys.path.insert(0, str(DOCS))
    from build import coalesce_streams

    flags = set(get_config(path=src.parent).get("tst_flags", "").split())
    os.environ["IN_TEST"] = "1"
    nb = read_nb(src)

    def skip(cell):
        if cell.cell_type != "code": return True
        if "nbdev_export" + "(" in cell.source: return True
        direc = extract_directives(cell, remove=False)
        if direc.get("eval:", [""])[0].lower() == "false": return True
        return bool(flags & direc.keys())

    os.chdir(src.parent)
    shell = CaptureShell(src)
    shell.run_all(nb, exc_stop=True, preproc=skip)
    for cell in nb.cells:
        if cell.cell_type == "code": cell["outputs"] = coalesce_streams(cell.get("outputs", []))
    write_nb(nb, dst)


class _NotStored(Exception): pass


def execute(src: Path, limit: float) -> tuple[str, float, str]:
    "Run one chapter in a child process; store its outputs when it succeeds in time. Returns (status, seconds, detail)."
    from tfcovr.core import atomic_path
    t0 = time.time()
    try:
        with atomic_path(src) as tmp:  # the whole executed notebook, or nothing
            proc = subprocess.Popen([sys.executable, __file__, "--run-one", str(src), str(tmp)], cwd=src.parent,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try: log, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the chapter and every process it started
                proc.communicate()
                raise _NotStored("slow", f"over {limit:.0f}s") from None
            if proc.returncode != 0:
                raise _NotStored("failed", (log.strip().splitlines() or ["(no output)"])[-1][:200])
        secs = time.time() - t0
    except _NotStored as e: return e.args[0], time.time() - t0, e.args[1]
    exe = Path(sys.executable).parent / "nbdev_clean"
    clean = subprocess.run([str(exe) if exe.exists() else "nbdev_clean", "--fname", str(src)], cwd=src.parent,
                           capture_output=True, text=True)
    if clean.returncode != 0: return "failed", secs, f"nbdev_clean: {clean.stderr.strip()[:200]}"
    return "stored", secs, ""


def chapters(nbs: Path, only: list[str] | None) -> list[Path]:
    "The chapters of `nbs` in reading order, those matching `only` (names or globs) when given."
    res = [p for p in sorted(nbs.glob("*.ipynb")) if p.name[0] not in "._"]
    if only: res = [p for p in res if any(p.stem == pat or fnmatch.fnmatch(p.stem, pat) for pat in only)]
    if not res: raise SystemExit(f"no notebook of {nbs} matches {only or '*.ipynb'}")
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="the chapters' folder (its settings.ini above it)")
    ap.add_argument("--limit", type=float, default=60, help="seconds a chapter may run; slower ones are left as they are")
    ap.add_argument("--only", nargs="+", metavar="CHAPTER", help="notebook names or globs")
    ap.add_argument("--run-one", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one: return run_one(*args.run_one)
    t0, done = time.time(), {"stored": [], "slow": [], "failed": []}
    for nb in chapters(args.nbs.resolve(), args.only):
        status, secs, detail = execute(nb, args.limit)
        done[status].append(nb.stem)
        print(f"outputs: {nb.name:<32} {secs:6.1f}s  {status}{': ' + detail if detail else ''}", flush=True)
    print(f"outputs: {len(done['stored'])} stored, {len(done['slow'])} over {args.limit:.0f}s "
          f"{done['slow']}, {len(done['failed'])} failed {done['failed']} in {time.time() - t0:.0f}s", flush=True)
    if done["failed"]: sys.exit(1)


if __name__ == "__main__":
    main()

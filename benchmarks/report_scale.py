"""How the report scales: the real run (tests/data/run) against synthetic matrices of 30 TF versions
x 2 devices x 10 scenarios and of 100 versions x 2 devices x 45 scenarios (over three times the real
run's entries), side by side. Measures the site's size, the time bnmatrix takes to render
it, and in Debian's Chromium the time to load the matrix page and to apply a filter.

usage: python benchmarks/report_scale.py [--repeat 5] [--write docs/report-benchmarks.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bnmatrix.report import write_report
from bnmatrix.store.files import write_json
from bnmatrix.store.reader import load_run
from bnmatrix.verdict import CellStatus

REPO = Path(__file__).resolve().parents[1]
REAL_RUN = REPO / "tests" / "data" / "run"
STATUSES = ["updated", "stale", "wrong", "unsupported", "error"]


def synthetic_run(directory: Path, versions: int = 30, scenarios: int = 10, block: int = 1) -> Path:
    """A run shaped like a real one: every cell copied from a real cell, renamed and re-labelled, each scenario's
    result a real result of the status it is to have (the report judges the numbers again); a scenario's verdict
    changes every `block` versions."""
    real = load_run(REAL_RUN)
    template = next(c for c in real.cells if c.status is CellStatus.RAN).to_dict()
    samples = {}  # a real result of each status, with its numbers
    for found in real.cells:
        for result in found.to_dict()["scenarios"].values():
            samples.setdefault(result["status"], result)
    names = [f"pattern_{i:02d}" for i in range(scenarios)]
    manifest = {**real.manifest.to_dict(), "run_id": "synthetic", "cells": []}
    for v in range(versions):
        tf = f"{1 + v // 25}.{v % 25}.0"
        for device in ("cpu", "gpu"):
            cell = copy.deepcopy(template)
            cell_id = f"tf-{tf}-{device}"
            cell["cell"].update(id=cell_id, tf=tf, device=device, scenarios=names)
            cell["scenarios"] = {name: {**copy.deepcopy(samples[STATUSES[(v // block + i) % len(STATUSES)]]),
                                        "scenario": name, "tf_version": tf}
                                 for i, name in enumerate(names)}
            write_json(directory / "cells" / f"{cell_id}.json", cell)
            manifest["cells"].append(cell_id)
    write_json(directory / "manifest.json", manifest)
    return directory


def site_size(site: Path) -> tuple[int, int]:
    index = (site / "index.html").stat().st_size
    return index, sum(p.stat().st_size for p in site.rglob("*") if p.is_file())


def render_seconds(run: Path, out: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        write_report(run, out)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def browser_seconds(site: Path, repeat: int) -> tuple[float, float]:
    """Median (load, filter) times of the matrix page in Chromium."""
    from playwright.sync_api import sync_playwright

    loads, filters = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        for _ in range(repeat):
            page = browser.new_page()
            started = time.perf_counter()
            page.goto((site / "index.html").as_uri(), wait_until="load")
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            page.check('input[name="status"][value="stale"]')
            page.wait_for_function("document.getElementById('shown').textContent.length > 0")
            filters.append(time.perf_counter() - started)
            page.close()
        browser.close()
    return statistics.median(loads), statistics.median(filters)


def measure(name: str, run: Path, work: Path, repeat: int) -> dict[str, Any]:
    site = work / f"site-{name}"
    render = render_seconds(run, site, repeat)
    index, total = site_size(site)
    load, apply = browser_seconds(site, repeat)
    loaded = load_run(run)
    entries = sum(len(c.cell.scenarios) for c in loaded.cells)
    return {"name": name, "cells": len(loaded.cells), "entries": entries, "render_s": render, "index_kb": index / 1024,
            "site_kb": total / 1024, "load_s": load, "filter_s": apply}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="write the table as Markdown to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        rows = [measure("real run (tests/data/run)", REAL_RUN, work, args.repeat),
                measure("30 versions x 2 devices x 10 scenarios", synthetic_run(work / "synthetic"), work,
                        args.repeat),
                measure("100 versions x 2 devices x 45 scenarios", synthetic_run(
                    work / "synthetic-100", versions=100, scenarios=45, block=10), work, args.repeat)]
    base = rows[0]
    lines = ["| matrix | cells | entries | render (s) | index.html (KiB) | site (KiB) | load in Chromium (s) "
             "| filter (s) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        def cell(key: str, fmt: str, row: dict[str, Any] = row) -> str:
            ratio = "" if row is base else f" ({row[key] / base[key]:.1f}x)"
            return format(row[key], fmt) + ratio

        lines.append(f"| {row['name']} | {row['cells']} | {cell('entries', 'd')} | {cell('render_s', '.3f')} "
                     f"| {cell('index_kb', '.0f')} | {cell('site_kb', '.0f')} | {cell('load_s', '.3f')} "
                     f"| {cell('filter_s', '.3f')} |")
    table = "\n".join(lines)
    print(table)
    print(json.dumps(rows, indent=1))
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(
            "# Report benchmarks\n\nMade by `python benchmarks/report_scale.py --write docs/report-benchmarks.md` "
            f"(medians of {args.repeat} runs, on this project's 2-core machine; ratios against the real run).\n\n"
            + table + "\n")


if __name__ == "__main__":
    main()

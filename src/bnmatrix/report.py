"""A run's results -> a static HTML site (pure rendering of Jinja templates in report/)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from packaging.version import Version

from bnmatrix.config import data_path
from bnmatrix.results import Run, load_run, runs_under

# Every state has its own icon and word; colour only repeats them.
STATES = {
    "updated": ("✔", "updated", "the moving statistics match the closed form for every training step"),
    "stale": ("✘", "stale", "the moving statistics never left their initial values (0, 1)"),
    "wrong": ("≠", "wrong", "the statistics changed, but not as one update per step would (partial, double, ...)"),
    "unsupported": ("∅", "unsupported", "an API the pattern needs is absent in this TensorFlow"),
    "error": ("‼", "error", "the scenario failed; see its traceback"),
    "build-error": ("⚠", "build error", "the cell's environment could not be built; see the setup log"),
    "not-run": ("–", "not run", "this host cannot serve the cell (no such Python, no GPU)"),
}


@dataclass
class Entry:
    """One cell x scenario of the table."""

    cell: dict[str, Any]
    scenario: str
    status: str
    result: dict[str, Any] | None
    summary: str
    anchor: str
    previous: str | None = None  # the status in the previous run, where it differs


@dataclass
class Row:
    tf: str
    variant: str | None
    python: str
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)


def _number(value: Any, digits: int = 6) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _summary(result: dict[str, Any] | None, cell: dict[str, Any]) -> str:
    if result is None:
        return f"{STATES[cell['status']][1]}: {cell['reason']}"
    if result["moving_mean"] is None:
        return f"{result['status']}: {result['reason']}"
    updates = result["effective_updates"]
    return (f"moving mean {_number(result['moving_mean'])} (expected {_number(result['expected_moving_mean'])}), "
            f"moving variance {_number(result['moving_variance'])} (expected "
            f"{_number(result['expected_moving_variance'])}); effective updates "
            f"{_number(updates, 5) if updates is not None else 'n/a'} / {result['steps']} steps")


def _statuses(run: Run) -> dict[tuple[str, str], str]:
    """(cell id, scenario) -> status of every entry of a run."""
    return {(c["cell"]["id"], name): (c["scenarios"][name]["status"] if name in c["scenarios"] else c["status"])
            for c in run.cells for name in c["cell"]["scenarios"]}


def build_view(run: Run, previous: Run | None = None) -> dict[str, Any]:
    """What the template shows: rows newest TF first, columns device x scenario; changes since `previous`."""
    before = _statuses(previous) if previous else {}
    scenarios: list[str] = []
    devices: list[str] = []
    rows: dict[tuple[str, str | None], Row] = {}
    for cell_result in run.cells:
        cell = cell_result["cell"]
        for name in cell["scenarios"]:
            if name not in scenarios:
                scenarios.append(name)
        if cell["device"] not in devices:
            devices.append(cell["device"])
        row = rows.setdefault((cell["tf"], cell["variant"]), Row(cell["tf"], cell["variant"], cell["python"]))
        for name in cell["scenarios"]:
            result = cell_result["scenarios"].get(name)
            status = result["status"] if result else cell_result["status"]
            row.entries[(cell["device"], name)] = Entry(
                cell=cell_result, scenario=name, status=status, result=result,
                summary=_summary(result, cell_result), anchor=f"{cell['id']}--{name}",
                previous=before.get((cell["id"], name)) if before.get((cell["id"], name), status) != status else None)
    devices.sort(key=lambda d: ("cpu", "gpu").index(d) if d in ("cpu", "gpu") else 2)
    ordered = sorted(rows.values(), key=lambda r: (Version(r.tf), r.variant is None, r.variant or ""), reverse=True)
    counts: dict[str, int] = {}
    for row in ordered:
        for entry in row.entries.values():
            counts[entry.status] = counts.get(entry.status, 0) + 1
    sources = {}
    for name in scenarios:
        path = data_path("scenarios") / f"{name}.py"
        sources[name] = path.read_text(encoding="utf-8") if path.exists() else "(not found)"
    return {"run": run.manifest, "rows": ordered, "devices": devices, "scenarios": scenarios, "states": STATES,
            "counts": counts, "cells": sorted(run.cells, key=lambda c: c["cell"]["id"]), "sources": sources,
            "previous_run": previous.manifest["run_id"] if previous else None,
            "changed": sum(1 for row in ordered for entry in row.entries.values() if entry.previous)}


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(data_path("report")), undefined=jinja2.StrictUndefined,
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _number
    return env


def render(run: Run, previous: Run | None = None) -> str:
    return environment().get_template("index.html.j2").render(**build_view(run, previous))


def write_report(results: Path, out: Path, previous: Path | None = None) -> Path:
    """Render the run at `results` into `out`/index.html with its stylesheet; returns the page.

    With `previous` (a run, or a folder that may hold none yet), entries whose status changed say so.
    """
    run = load_run(results)
    earlier = load_run(previous) if previous is not None and runs_under(previous) else None
    html = render(run, earlier)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_path("report") / "style.css", out / "style.css")
    index = out / "index.html"
    temporary = out / ".index.html.tmp"
    temporary.write_text(html, encoding="utf-8")
    temporary.replace(index)
    return index

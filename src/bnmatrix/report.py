"""A run's results -> a static site (pure rendering of the Jinja templates in report/):

index.html (the matrix), cells/<cell>.html (a permalink per cell), scenarios/<name>.html,
and exports for machines: results.json, junit.xml, badge.svg and summary.md.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from packaging.version import Version
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from bnmatrix.config import data_path, load_scenario_notes
from bnmatrix.errors import BnMatrixError
from bnmatrix.results import CellResult, Run, ScenarioResult, load_run, runs_under
from bnmatrix.verdict import Status

EXPORT_SCHEMA = "bnmatrix.results/1"
# Every state has its own icon, word and colour; the icon and word never rely on the colour.
STATES = {s.value: (s.icon, s.word, s.meaning) for s in Status}
CHANGED = ("Δ", "changed", "the verdict differs from the previous published run")


@dataclass
class Entry:
    """One cell x scenario: what the matrix shows and what its permalink holds."""

    cell: CellResult
    scenario: str
    status: str
    result: ScenarioResult | None
    summary: str
    href: str
    previous: str | None = None  # the status in the previous run, where it differs
    expected: str | None = None  # the status matrix.yaml expects, if any

    @property
    def state(self) -> Status:
        return Status(self.status)

    @property
    def unexpected(self) -> bool:
        return self.expected is not None and self.expected != self.status


@dataclass
class Row:
    tf: str
    variant: str | None
    python: str
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    transitions: list[str] = field(default_factory=list)

    @property
    def major(self) -> str:
        return self.tf.split(".")[0] + ".x"

    @property
    def label(self) -> str:
        return self.tf + (f" {self.variant}" if self.variant else "")


def _number(value: Any, digits: int = 6) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _summary(result: ScenarioResult | None, cell: CellResult) -> str:
    if result is None:
        return f"{cell.entry_status('').word}: {cell.reason}"
    if result.moving_mean is None:
        return f"{result.status.value}: {result.reason}"
    updates, variance_updates = result.effective_updates, result.effective_updates_variance
    correction = f", follows the {result.variance_correction} batch variance" if result.variance_correction else ""
    forward = (f"; training-mode forward pass used the {result.forward_statistics} statistics"
               if result.forward_statistics else "")
    return (f"moving mean {_number(result.moving_mean)} (expected {_number(result.expected_moving_mean)}), "
            f"moving variance {_number(result.moving_variance)} (expected "
            f"{_number(result.expected_moving_variance)}{correction}); effective updates "
            f"{_number(updates, 5) if updates is not None else 'n/a'} (mean), "
            f"{_number(variance_updates, 5) if variance_updates is not None else 'n/a'} (variance) / "
            f"{result.steps} steps{forward}")


def _statuses(run: Run) -> dict[tuple[str, str], str]:
    """(cell id, scenario) -> status of every entry of a run."""
    return {(c.id, name): c.entry_status(name).value for c in run.cells for name in c.cell["scenarios"]}


def scenario_page_sources(run: Run) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each scenario's code and notes as the run kept them (older runs: the built-in scenarios)."""
    found = {}
    names = {name for cell in run.cells for name in cell.cell["scenarios"]}
    for name in names:
        kept = run.directory / "scenarios" / name
        if (kept / "scenario.py").is_file():
            notes = json.loads((kept / "notes.json").read_text(encoding="utf-8")) if (kept / "notes.json").is_file() \
                else {}
            found[name] = ((kept / "scenario.py").read_text(encoding="utf-8"), notes)
            continue
        builtin = data_path("scenarios") / f"{name}.py"
        code = builtin.read_text(encoding="utf-8") if builtin.exists() else "# (scenario script not kept)\n"
        found[name] = (code, load_scenario_notes(builtin.with_suffix(".yaml")))
    return found


def build_view(run: Run, previous: Run | None = None) -> dict[str, Any]:
    """What the pages show: rows newest TF first, columns device x scenario; changes since `previous`."""
    sources = scenario_page_sources(run)
    before = _statuses(previous) if previous else {}
    scenarios: list[str] = []
    devices: list[str] = []
    rows: dict[tuple[str, str | None], Row] = {}
    for cell_result in run.cells:
        cell = cell_result.cell
        scenarios += [name for name in cell["scenarios"] if name not in scenarios]
        devices += [cell["device"]] if cell["device"] not in devices else []
        row = rows.setdefault((cell["tf"], cell["variant"]), Row(cell["tf"], cell["variant"], cell["python"]))
        for name in cell["scenarios"]:
            result = cell_result.scenarios.get(name)
            status = cell_result.entry_status(name).value
            earlier = before.get((cell["id"], name))
            row.entries[(cell["device"], name)] = Entry(
                cell=cell_result, scenario=name, status=status, result=result,
                summary=_summary(result, cell_result), href=f"cells/{cell['id']}.html#{name}",
                previous=earlier if earlier not in (None, status) else None,
                expected=cell.get("expect", {}).get(name))
    devices.sort(key=lambda d: ("cpu", "gpu").index(d) if d in ("cpu", "gpu") else 2)
    ordered = sorted(rows.values(), key=lambda r: (Version(r.tf), r.variant is None, r.variant or ""), reverse=True)
    _note_transitions(ordered)
    columns = [(device, name) for device in devices for name in scenarios]
    summaries = {column: _column_summary([r.entries[column] for r in ordered if column in r.entries])
                 for column in columns}
    groups: dict[str, list[Row]] = {}
    for row in ordered:
        groups.setdefault(row.major, []).append(row)
    entries = [entry for row in ordered for entry in row.entries.values()]
    counts = {state: sum(1 for e in entries if e.status == state) for state in STATES}
    return {
        "run": run.manifest, "groups": groups, "rows": ordered, "devices": devices, "scenarios": scenarios,
        "columns": columns, "summaries": summaries, "states": STATES, "changed_state": CHANGED, "counts": counts,
        "cells": sorted(run.cells, key=lambda c: c.id),
        "previous_run": previous.manifest["run_id"] if previous else None,
        "changed": sum(1 for e in entries if e.previous), "unexpected": [e for e in entries if e.unexpected],
        "versions": sorted({r.tf for r in ordered}, key=Version),
        "notes": {name: notes for name, (_, notes) in sources.items()},
    }


def _note_transitions(rows: list[Row]) -> None:
    """On each row, where a verdict differs from the next older version's (same variant and device)."""
    for index, row in enumerate(rows):
        older = next((r for r in rows[index + 1:] if r.variant == row.variant), None)
        if older is None:
            continue
        for (device, name), entry in row.entries.items():
            other = older.entries.get((device, name))
            if other is not None and other.status != entry.status and "not-run" not in (entry.status, other.status):
                row.transitions.append(f"{name} ({device}): {STATES[other.status][1]} in {older.tf}, "
                                       f"{STATES[entry.status][1]} from {row.tf} (changed between {older.tf} "
                                       f"and {row.tf})")


def _column_summary(entries: list[Entry]) -> str:
    """'stale on 15 of 20 versions, updated on 5' for one device x scenario column."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], list(STATES).index(item[0])))
    parts = [f"{STATES[status][1]} on {count}" for status, count in ranked]
    return f"{parts[0]} of {len(entries)} versions" + "".join(f", {p}" for p in parts[1:]) if parts else ""


def curve_points(result: ScenarioResult, width: int = 320, height: int = 160) -> dict[str, Any]:
    """Coordinates for the SVG chart of the expected moving mean against the observed one."""
    steps = result.steps
    momentum = result.momentum or 0.99
    mu = result.batch_mean if result.batch_mean is not None else 1.5
    observed = result.moving_mean or 0.0
    top = max(mu, observed, 1e-9) * 1.05
    pad = 30

    def x(k: float) -> float:
        return pad + (width - 2 * pad) * k / steps

    def y(value: float) -> float:
        return height - pad - (height - 2 * pad) * value / top

    samples = [steps * i / 50 for i in range(51)]
    curve = " ".join(f"{x(k):.1f},{y(mu * (1 - momentum ** k)):.1f}" for k in samples)
    return {"width": width, "height": height, "pad": pad, "curve": curve, "x_end": x(steps),
            "y_expected": y(result.expected_moving_mean or 0.0), "y_observed": y(observed), "y_mu": y(mu),
            "y_zero": y(0.0), "mu": mu, "steps": steps}


def reproduce_command(cell_result: CellResult, scenario: str) -> str:
    """A copy-paste command that runs the scenario as the cell did (from a bnmatrix checkout)."""
    cell = cell_result.cell
    environment = cell_result.environment or {}
    args = ["--steps", str(cell["steps"]), "--device", cell["device"], "--tf-version", cell["tf"]]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(cell.get("env", {}).items()))
    cpu_only = "CUDA_VISIBLE_DEVICES= " if cell["device"] == "cpu" else ""
    if environment.get("kind") == "docker":
        flags = ["--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp:exec", "--user", "65534:65534",
                 "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-e", "HOME=/tmp",
                 "-e", "PYTHONPATH=/scenarios", "-v", "$PWD/scenarios:/scenarios:ro"]
        flags += ["--gpus", "all"] if cell["device"] == "gpu" else ["-e", "CUDA_VISIBLE_DEVICES="]
        flags += [item for k, v in sorted(cell.get("env", {}).items()) for item in ("-e", f"{k}={v}")]
        quoted = " ".join(f if f.startswith("$PWD") else shlex.quote(f) for f in flags)
        return (f"docker run {quoted} {shlex.quote(environment['cell_image'])} python3 /scenarios/{scenario}.py "
                + " ".join(args) + f"\n# or: bnmatrix run --backend docker --select {cell['id']} --scenario {scenario}")
    requirements = " ".join(shlex.quote(r) for r in cell["requirements"])
    return (f"python{cell['python']} -m venv venv && venv/bin/python -m pip install --upgrade pip && "
            f"venv/bin/python -m pip install {requirements}\n"
            f"{cpu_only}PYTHONPATH=scenarios {env + ' ' if env else ''}venv/bin/python scenarios/{scenario}.py "
            f"{' '.join(args)}\n"
            f"# or: bnmatrix run --backend venv --select {cell['id']} --scenario {scenario}")


def export_results(run: Run, view: dict[str, Any]) -> dict[str, Any]:
    """results.json: the stable, versioned contract for other tools (see report/results.schema.json)."""
    entries = {(e.cell.id, e.scenario): e for row in view["rows"] for e in row.entries.values()}
    cells = []
    for cell_result in view["cells"]:
        cell = cell_result.cell
        scenarios = {}
        for name in cell["scenarios"]:
            entry = entries[(cell["id"], name)]
            result = entry.result.to_dict() if entry.result else {}
            scenarios[name] = {
                "status": entry.status, "reason": result.get("reason", cell_result.reason),
                "expected_status": entry.expected, "previous_status": entry.previous,
                **{key: result.get(key) for key in ("moving_mean", "moving_variance", "expected_moving_mean",
                                                    "expected_moving_variance", "effective_updates",
                                                    "effective_updates_variance", "variance_correction",
                                                    "forward_statistics", "update_ops",
                                                    "train_loss", "eval_loss", "tf_version", "keras_version",
                                                    "python", "devices_seen", "duration_s")},
                "steps": cell["steps"],
            }
        environment = cell_result.environment or {}
        cells.append({
            "id": cell["id"], "tf": cell["tf"], "python": cell["python"], "device": cell["device"],
            "variant": cell["variant"], "status": cell_result.status.value, "reason": cell_result.reason,
            "backend": cell_result.backend, "image": environment.get("image"),
            "image_id": environment.get("image_id"), "page": f"cells/{cell['id']}.html", "scenarios": scenarios,
        })
    manifest = run.manifest
    return {"schema": EXPORT_SCHEMA, "run": {key: manifest.get(key) for key in (
        "run_id", "status", "started", "finished", "backend", "matrix_hash", "bnmatrix_version", "merged_from")},
        "previous_run": view["previous_run"], "scenarios": view["scenarios"], "cells": cells}


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(data_path("report")), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html", "svg", "xml"],
                                                                 default_for_string=True),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _number
    env.filters["curve"] = curve_points
    env.globals["reproduce"] = reproduce_command
    return env


def _highlighted(source: str) -> str:
    return highlight(source, PythonLexer(), HtmlFormatter(cssclass="highlight", linenos="table"))


def render_site(run: Run, previous: Run | None = None) -> dict[str, str]:
    """Every file of the site by relative path (pure: same run, same bytes)."""
    view = build_view(run, previous)
    env = environment()
    files = {"index.html": env.get_template("index.html").render(**view, root="")}
    for cell_result in view["cells"]:
        cell_id = cell_result.id
        files[f"cells/{cell_id}.html"] = env.get_template("cell.html").render(**view, root="../", result=cell_result)
    sources = scenario_page_sources(run)
    for name in view["scenarios"]:
        files[f"scenarios/{name}.html"] = env.get_template("scenario.html").render(
            **view, root="../", name=name, code=_highlighted(sources[name][0]))
    export = export_results(run, view)
    files["results.json"] = json.dumps(export, indent=1, sort_keys=True) + "\n"
    files["junit.xml"] = env.get_template("junit.xml").render(**view)
    files["badge.svg"] = env.get_template("badge.svg").render(**view)
    files["summary.md"] = env.get_template("summary.md.j2").render(**view)
    files["pygments.css"] = HtmlFormatter(cssclass="highlight").get_style_defs(".highlight")  # type: ignore[no-untyped-call]
    return files


def _is_site(path: Path) -> bool:
    try:
        return bool(json.loads((path / "results.json").read_text(encoding="utf-8")).get("schema") == EXPORT_SCHEMA)
    except (OSError, ValueError, AttributeError):
        return False


def write_report(results: Path, out: Path, previous: Path | None = None) -> Path:
    """Render the run at `results` into the site `out` (replaced whole); returns its index.html.

    With `previous` (a run, or a folder that may hold none yet), entries whose status changed say so.
    """
    run = load_run(results)
    earlier = load_run(previous) if previous is not None and runs_under(previous) else None
    files = render_site(run, earlier)
    if out.exists() and any(out.iterdir()) and not _is_site(out):
        raise BnMatrixError(f"--out {out}: exists and is not a bnmatrix site (no index.html with results.json); "
                            "expected a new or empty directory, or an earlier report to replace")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for relative, text in files.items():
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_text(text, encoding="utf-8")
    for asset in ("style.css", "matrix.js"):
        shutil.copyfile(data_path("report") / asset, staging / asset)
    for cell_result in run.cells:  # the full logs, next to the cell's page
        logs = run.directory / "logs" / cell_result.id
        if logs.is_dir():
            shutil.copytree(logs, staging / "cells" / "logs" / cell_result.id)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out / "index.html"

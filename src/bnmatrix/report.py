"""A results root (or one run) -> a static site (pure rendering of the Jinja templates in report/):

index.html (the matrix: each cell's newest result), cells/<cell>.html (a permalink per cell, with the
cell's history), scenarios/<name>.html, changes.html (bisect conclusions and their evidence),
runs.html (the runs, and what changed between any two), and exports for machines: results.json,
junit.xml, badge.svg, summary.md, and results-archive.tar.gz (the results root, for the next run).
What the pages show is view.py's View; this module renders it and writes the site.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from bnmatrix.config import REPORT_FOLDER, Matrix, data_path
from bnmatrix.errors import BnMatrixError
from bnmatrix.history import ARCHIVE_NAME, History, package_changes, upcoming, write_archive
from bnmatrix.intake import read_json, regular_file, staged_folder
from bnmatrix.store.merge import runs_under
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import NUMBERS, Run, ScenarioResult
from bnmatrix.verdict import REL_TOLERANCE, CellStatus
from bnmatrix.view import (
    STATES,
    Expectations,
    Glance,
    ScenarioSource,
    Site,
    View,
    ahead_words,
    build_view,
    number,
    search_anchor,
)

EXPORT_SCHEMA = "bnmatrix.results/1"


def glance_text(found: Glance | None) -> str:
    """One scenario's verdicts on one line of the glance, in words: "✔ updated 1.7.1–1.8.0; ✘ stale from 1.9.0"
    (the summary's table, and the README's, which a test compares with it); "–" where it has none. Safe as
    Markdown: our own words, and versions that passed PEP 440."""
    if not found:
        return "–"
    return "; ".join([f"{STATES[span.status][0]} {span.words}{' ✓' if span.pinned else ''}" for span in found.ranges]
                     + [f"**{words}**" if changes else words for words, changes in ahead_words(found.ahead)])


def _judged_layers(result: ScenarioResult) -> dict[str, Any]:
    """Each layer's observations, with the host's verdict on it where it was judged."""
    layers = result.observed.layers if result.observed else {}
    return {name: {**layer, "verdict": result.verdicts[name].to_dict()} if name in result.verdicts else layer
            for name, layer in layers.items()}


def curve_points(result: ScenarioResult, width: int = 320, height: int = 160) -> dict[str, Any]:
    """Coordinates for the SVG chart of the expected moving mean against the observed one (a judged result's)."""
    judged = result.judged
    assert judged is not None and result.observed is not None and result.observed.momentum is not None
    steps, momentum, mu = result.steps, result.observed.momentum, judged.verdict.data.mean
    observed = judged.moving_mean
    top = max(mu, observed, 1e-9) * 1.05
    pad = 30

    def x(k: float) -> float:
        return pad + (width - 2 * pad) * k / steps

    def y(value: float) -> float:
        return height - pad - (height - 2 * pad) * value / top

    samples = [steps * i / 50 for i in range(51)]
    curve = " ".join(f"{x(k):.1f},{y(mu * (1 - momentum ** k)):.1f}" for k in samples)
    return {"width": width, "height": height, "pad": pad, "curve": curve, "x_end": x(steps),
            "y_expected": y(judged.verdict.expected_moving_mean), "y_observed": y(observed), "y_mu": y(mu),
            "y_zero": y(0.0), "mu": mu, "steps": steps}


EXPORTED_NUMBERS = tuple(key for key in NUMBERS if key != "batch_mean")  # results.json's, as its schema says


def export_results(run: Run, view: View) -> dict[str, Any]:
    """results.json: the stable, versioned contract for other tools (see report/results.schema.json)."""
    entries = {(e.cell.id, e.scenario): e for e in view.entries}
    cells = []
    for cell_result in view.cells:
        cell = cell_result.cell
        scenarios = {}
        for name in cell.scenarios:
            entry = entries[(cell.id, name)]
            result = entry.result
            numbers = result.numbers() if result else {}
            scenarios[name] = {
                "status": entry.status, "reason": result.reason if result else cell_result.reason,
                "expected_status": entry.expected,
                "previous_status": entry.previous.status if entry.previous else None,
                "facets": dict(entry.finding.facets),
                **{key: numbers.get(key) for key in EXPORTED_NUMBERS},
                **{key: getattr(result, key) if result else None for key in ("tf_version", "keras_version", "python",
                                                                             "devices_seen", "duration_s")},
                "steps": cell.steps,
                "reproduce": view.site.reproduce(cell_result, name) if entry.result else None,
            }
        environment = cell_result.environment or {}
        cells.append({
            "id": cell.id, "tf": cell.tf, "python": cell.python, "device": cell.device,
            "variant": cell.variant, "status": cell_result.status.value, "reason": cell_result.reason,
            "backend": cell_result.backend, "image": environment.get("image"),
            "image_id": environment.get("image_id"), "page": f"cells/{cell.id}.html", "scenarios": scenarios,
            "run_id": cell_result.run_id or view.site.origins[cell.id].id, "started": cell_result.started,
        })
    manifest = run.manifest.to_dict()
    return {"schema": EXPORT_SCHEMA, "run": {key: manifest.get(key) for key in (
        "run_id", "status", "started", "finished", "backend", "matrix_hash", "bnmatrix_version", "merged_from")},
        "previous_run": view.previous_run, "cumulative": view.run.cumulative, "scenarios": view.scenarios,
        "cells": cells, "change_points": [{key: {**search.to_dict(), "run_id": search.run_id}.get(key)
                                           for key in CHANGE_POINT_KEYS} for search in view.searches],
        "ranges": [{"scenario": name, "device": device, "variant": variant,
                    "ranges": [span.to_dict() for span in glance.ranges],
                    "upcoming": [ahead.to_dict() for ahead in glance.ahead]}
                   for name, lines in view.overview.table.items() for (device, variant), glance in lines.items()]}


CHANGE_POINT_KEYS = ("scenario", "device", "variant", "outcome", "answer", "good", "bad", "changed_in", "last_before",
                     "from_status", "to_status", "changes", "checked", "total", "exhaustive", "monotonic", "run_id")


def _finite(value: Any) -> Any:
    """JSON data with every NaN or infinity (from a run written before bnmatrix refused them) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# XML 1.0 allows no control characters but tab, newline and carriage return (an ANSI escape is one).
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def _xml_text(value: Any) -> str:
    return _XML_FORBIDDEN.sub("", str(value))


def _markdown(value: Any) -> str:
    """Text from the data, inert in GitHub Markdown: no table breaks, no HTML, no links or emphasis."""
    text = str(value).replace("\n", " ").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", text)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(data_path(REPORT_FOLDER)), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html", "svg", "xml"],
                                                                 default_for_string=True),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    env.filters["xml"] = _xml_text
    env.filters["md"] = _markdown
    env.filters["curve"] = curve_points
    env.filters["judged_layers"] = _judged_layers
    env.globals["upcoming"] = env.tests["upcoming"] = upcoming  # "release candidate", "nightly", or "" (a release)
    env.globals["package_changes"] = package_changes  # what two results of a cell installed differently
    env.globals["anchor"] = search_anchor
    env.globals["glance"] = glance_text
    env.globals["tolerance"] = f"{REL_TOLERANCE:g}"
    return env


def pattern_code(source: ScenarioSource) -> tuple[str, list[tuple[int, str]]]:
    """The scenario's whole pattern as one text: its script, then each function (and constant) of its folder's
    modules that the script's functions call, in turn, found by reading the code (`module.name` for a module the
    script imports, a bare name within a module); and the lines that hold one of its notes' `decides` fragments
    (number, text). A script that does not parse is shown alone."""
    parts = [source.code.rstrip("\n")]
    try:
        modules = {name: _module(text) for name, text in source.modules.items()}
        script = _module(source.code)
    except (SyntaxError, ValueError, RecursionError):  # a script or module of a run that is no Python we can read
        script, modules = None, {}
    if script is not None:
        queue = _references(script.tree, None, script, modules)
        shown: set[int] = set()
        while queue:
            module, name = queue.pop(0)
            node = modules[module].defined.get(name)
            if node is None or id(node) in shown:
                continue
            shown.add(id(node))
            parts.append(f"# --- {module}.py: {name} ---\n{modules[module].segment(node)}")
            queue += _references(node, module, modules[module], modules)
    text = "\n\n\n".join(parts) + "\n"
    fragments = [f for f in source.notes.get("decides", []) if isinstance(f, str) and f.strip()]
    marked = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
              if not line.lstrip().startswith("#") and any(f in line for f in fragments)]
    return text, marked


@dataclass(frozen=True)
class _Module:
    """A module's code as pattern_code reads it, once per text (every scenario page of a folder shares its modules)."""

    tree: ast.Module
    lines: list[bytes]  # its lines, as the offsets of its nodes count them (UTF-8)
    defined: dict[str, ast.stmt]  # its top-level functions, classes and constants, by name
    imports: dict[str, str]  # the modules it imports: the name it uses -> the module's name

    def segment(self, node: ast.stmt) -> str:
        """`node`'s source (ast.get_source_segment, without splitting the module again for each node)."""
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        if first == last:
            return self.lines[first][node.col_offset:node.end_col_offset].decode()
        return b"".join([self.lines[first][node.col_offset:], *self.lines[first + 1:last],
                         self.lines[last][:node.end_col_offset]]).decode()


@functools.lru_cache(maxsize=256)
def _module(text: str) -> _Module:
    tree = ast.parse(text)
    defined: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined[node.name] = node
        elif isinstance(node, ast.Assign):
            defined.update({target.id: node for target in node.targets if isinstance(target, ast.Name)})
    imports = {a.asname or a.name: a.name for child in ast.walk(tree) if isinstance(child, ast.Import)
               for a in child.names}
    return _Module(tree, text.encode().splitlines(keepends=True), defined, imports)


def _references(node: ast.AST, module: str | None, code: _Module, modules: dict[str, _Module]) -> list[tuple[str, str]]:
    """What `node` (the script's functions, or a function of `module`, whose code is `code`) uses of the folder's
    modules: (module, name), in the order the code names them."""
    aliases = {alias: name for alias, name in code.imports.items() if name in modules}
    parts = [node] if module else [n for n in getattr(node, "body", [])
                                   if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    local = code.defined if module else {}
    found: list[tuple[str, str]] = []
    for part in parts:
        for child in ast.walk(part):
            if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id in aliases:
                found.append((aliases[child.value.id], child.attr))
            elif module and isinstance(child, ast.Name) and child.id in local:
                found.append((module, child.id))
    return found


def _highlighted(text: str, marked: list[tuple[int, str]]) -> str:
    return highlight(text, PythonLexer(), HtmlFormatter(cssclass="highlight", linenos="table", lineanchors="code",
                                                        hl_lines=[number for number, _ in marked]))


def render_site(site: Site, previous: Run | None = None, expectations: Expectations | None = None) -> dict[str, str]:
    """Every file of the site by relative path (pure: same results, same bytes)."""
    view = build_view(site, previous, expectations)
    context = view.context()
    env = environment()
    env.globals["reproduce"] = site.reproduce
    env.globals["logged"] = lambda run, cell_id, name: os.path.lexists(_log_file(run, cell_id, name))
    files = {"index.html": env.get_template("index.html").render(**context, root="")}
    pages = [(c, site.origins[c.id]) for c in view.cells] + sorted(site.evidence.values(), key=lambda i: i[0].id)
    for cell_result, origin in pages:
        files[f"cells/{cell_result.id}.html"] = env.get_template("cell.html").render(
            **context, root="../", result=cell_result, origin=origin, timeline=site.timelines.get(cell_result.id, []))
    for name in view.scenarios:
        text, marked = pattern_code(view.sources[name])
        files[f"scenarios/{name}.html"] = env.get_template("scenario.html").render(
            **context, root="../", name=name, code=_highlighted(text, marked), marked=marked,
            helpers=text.count("\n# --- "))
    for version in view.versions:
        files[f"versions/{version}.html"] = env.get_template("version.html").render(**context, root="../",
                                                                                   version=version)
    files["changes.html"] = env.get_template("changes.html").render(**context, root="")
    if site.history is not None:
        files["runs.html"] = env.get_template("runs.html").render(**context, root="",
                                                                  history=history_data(site.history))
    export = export_results(site.run, view)
    files["results.json"] = json.dumps(_finite(export), indent=1, sort_keys=True, allow_nan=False) + "\n"
    files["junit.xml"] = env.get_template("junit.xml").render(**context)
    files["badge.svg"] = env.get_template("badge.svg").render(**context)
    files["summary.md"] = env.get_template("summary.md.j2").render(**context)
    files["pygments.css"] = _code_colours()
    return files


def _log_file(run: Run, cell_id: str, name: str) -> Path:
    """Where a run keeps a cell's log ("setup", or a scenario's)."""
    return run.directory / "logs" / cell_id / f"{name}.log"


def _code_colours() -> str:
    """The code's colours: Pygments' xcode style (every colour 4.5:1 or more on the code's grey), and GitHub's dark one
    in dark mode."""
    def style(name: str) -> str:
        return HtmlFormatter(cssclass="highlight", style=name).get_style_defs(".highlight")  # type: ignore[no-untyped-call,no-any-return]

    # GitHub's grey line numbers (#6e7681) have too little contrast on its background: a lighter grey, 7:1;
    # and its highlighted line (#6e7681) too little under the text: a dark olive, text on it 7:1 or more.
    numbers = (".highlight td.linenos .normal, .highlight span.linenos { color: #9ea7b3; }\n"
               ".highlight .hll { background-color: #2b2a10; }")
    return f"{style('xcode')}\n@media (prefers-color-scheme: dark) {{\n{style('github-dark')}\n{numbers}\n}}\n"


def history_data(history: History) -> dict[str, Any]:
    """The runs of a results root (newest first) and every status each matrix run holds (cells that did not run
    hold none): what runs.html lists and compares, in the browser."""
    return {"runs": [{"id": r.id, "kind": r.kind.value, "started": r.manifest.started, "status": r.status.value,
                      "backend": r.manifest.backend, "cells": len(r.cells)}
                     for r in reversed(history.runs)],
            "compare": [r.id for r in reversed(history.matrix_runs)],
            "statuses": {r.id: {c.id: {n: c.entry_status(n).value for n in c.cell.scenarios}
                                for c in r.cells if c.status is not CellStatus.NOT_RUN} for r in history.matrix_runs}}


SITE_MARKER = ".bnmatrix-site.json"  # in every site bnmatrix writes: the files it wrote there


def _site_files(out: Path) -> set[str] | None:
    """The files bnmatrix wrote into `out` (from its marker); None when `out` is no bnmatrix site."""
    try:
        marker = read_json(out / SITE_MARKER)
    except BnMatrixError:
        return None
    files = marker.get("files") if isinstance(marker, dict) else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else None


def _inside(base: Path, relative: str) -> Path:
    """`base / relative`, refusing any path that would leave `base`."""
    target = (base / relative).resolve()
    if not target.is_relative_to(base.resolve()):
        raise BnMatrixError(f"refusing to write {relative!r}: it would leave the site folder")
    return target


def write_report(results: Path, out: Path, previous: Path | None = None, matrix: Matrix | None = None) -> Path:
    """Render the results root (or the one run) at `results` into the site `out`; returns its index.html.

    `out` is replaced only when it is empty or a site bnmatrix wrote (its marker file); files a user added
    to an earlier site (a CNAME, notes/) are kept. With `previous` (a run, or a folder that may hold none
    yet), entries whose status changed say so; with `matrix`, its current expectations are applied.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BnMatrixError(f"--out {out}: is a {'symbolic link' if out.is_symlink() else 'file'}; expected a "
                            "folder for the site (new, empty, or an earlier bnmatrix site)")
    earlier_files: set[str] = set()
    if out.is_dir() and any(out.iterdir()):
        found = _site_files(out)
        if found is None:
            raise BnMatrixError(f"--out {out}: holds files and no {SITE_MARKER}, so bnmatrix did not write it; "
                                "expected a new or empty folder, or an earlier bnmatrix site (nothing was changed)")
        earlier_files = found
    site = Site.load(results)
    if previous is not None and site.history is not None:
        raise BnMatrixError(f"--previous {previous}: a results root ({results}) compares each cell with its own "
                            "previous result; expected --previous only with one run directory as --results")
    earlier = load_run(previous) if previous is not None and runs_under(previous) else None
    files = render_site(site, earlier, Expectations.from_matrix(matrix) if matrix else None)
    with staged_folder(out, "site", "the earlier site, if any, is kept") as staging:
        for relative, text in files.items():
            target = _inside(staging, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        for asset in ("style.css", "matrix.js", "runs.js", "back.js"):
            shutil.copyfile(data_path(REPORT_FOLDER) / asset, staging / asset)
        for cell_result, origin in [(c, site.origins[c.id]) for c in site.run.cells] + list(site.evidence.values()):
            # The full logs, next to the cell's page (regular files only), each from the run holding its result.
            logs = {"setup": origin, **{name: site.holders.get((cell_result.id, name), (origin, ""))[0]
                                        for name in cell_result.scenarios}}
            if (cell_result.environment or {}).get("warmup"):  # a GPU cell's warm-up
                logs["warmup"] = origin
            for name, holder in logs.items():
                log = _log_file(holder, cell_result.id, name)
                if os.path.lexists(log):
                    regular_file(log, "log file")
                    target = _inside(staging, f"cells/logs/{cell_result.id}/{name}.log")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log, target)
        if site.history is not None:  # the results root, for the next run to add to (docs/history.md)
            write_archive(site.history, staging / ARCHIVE_NAME)
        written = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        if out.is_dir():  # what the user added to the earlier site stays: files, links (as links), empty folders
            for place, folders, names in os.walk(out):
                for entry in [*folders, *names]:
                    path = Path(place) / entry
                    kept = staging / path.relative_to(out)
                    if str(path.relative_to(out)) in earlier_files | {SITE_MARKER} or os.path.lexists(kept):
                        continue
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    if path.is_dir() and not path.is_symlink():
                        kept.mkdir()
                    elif path.is_symlink():
                        kept.symlink_to(os.readlink(path))
                    else:
                        regular_file(path, "file of the earlier site")  # a device or a FIFO would copy forever
                        shutil.copy2(path, kept)
        (staging / SITE_MARKER).write_text(json.dumps({"files": written}, indent=0) + "\n", encoding="utf-8")
    return out / "index.html"


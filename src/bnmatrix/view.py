"""What a site shows, built once from a results root (or one run): the Site (each cell's newest result, the run
holding it, its earlier results, the bisect conclusions and their evidence) and its View (rows newest TF first,
columns device x scenario, each entry's status, numbers and change, the answer at a glance, counts and test
suites), typed, for report.py to render and tests to read."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from packaging.version import Version

from bnmatrix.backends import Reproduction, backend_kinds
from bnmatrix.config import SCENARIOS_FOLDER, Matrix, data_path, load_scenario_notes
from bnmatrix.errors import BnMatrixError
from bnmatrix.history import History, change_points, package_changes, upcoming
from bnmatrix.intake import read_json, read_text
from bnmatrix.plan import all_cells
from bnmatrix.store.files import moment
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import CellResult, Manifest, Run, RunKind, ScenarioResult
from bnmatrix.store.searches import Conclusion, Outcome
from bnmatrix.verdict import ANSWERS, FACET_NAMES, FACETS, CellStatus, Finding, Status

# Every state has its own icon, word and colour; the icon and word never rely on the colour.
STATES = {s.value: (s.icon, s.word, s.meaning) for s in Status}
CHANGED = ("Δ", "changed", "the verdict differs from the previous run (or, with history, the cell's previous result)")


@dataclass
class Entry:
    """One cell x scenario: what the matrix shows and what its permalink holds."""

    cell: CellResult
    scenario: str
    status: Status
    result: ScenarioResult | None
    summary: str
    href: str
    previous: Finding | None = None  # the previous run's finding (or the cell's previous result's), if it differs
    dependencies: list[str] = field(default_factory=list)  # with `previous`: the packages installed differently
    expected: Status | None = None  # the status matrix.yaml expects, if any
    origin: str | None = None  # the run that produced the result
    held_since: str | None = None  # with history, where the result is from an older run than the newest: its date
    change: dict[str, str] | None = None  # where the verdict differs from the next older version's: text, href/command
    boundary: bool = False  # the older side of a change: the line between the two versions is drawn above it

    @property
    def unexpected(self) -> bool:
        """A result that differs from its expectation (a cell that did not run has no result to differ)."""
        return self.ran and self.expected is not None and self.expected != self.status

    @property
    def junit(self) -> str:
        """pass, failure, error or skipped: against the expectation where there is one."""
        if self.expected is not None and self.ran:
            return "failure" if self.unexpected else "pass"
        return self.status.junit

    @property
    def finding(self) -> Finding:
        """The status and the facets of the verdict (verdict.Finding): what a change point compares."""
        return self.result.finding if self.result is not None and self.result.status is self.status \
            else Finding(self.status)

    @property
    def note(self) -> str:
        """What the numbers add to the status, in a word or two: "2.00×", "unbiased variance", "forward: batch"."""
        return self.finding.note()

    @property
    def ran(self) -> bool:
        return self.status not in (Status.NOT_RUN, Status.BUILD_ERROR)


@dataclass
class Row:
    tf: str
    variant: str | None
    python: str
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)

    @property
    def major(self) -> str:
        return self.tf.split(".")[0] + ".x"

    @property
    def label(self) -> str:
        return self.tf + (f" {self.variant}" if self.variant else "")

    @property
    def upcoming(self) -> str:
        """"release candidate" or "nightly" for a version not yet released, else ""."""
        return upcoming(self.tf)


@dataclass(frozen=True)
class VersionLine:
    """One column of a version's page: a device and variant of that TensorFlow version, its entries by scenario."""

    label: str  # "CPU", "CPU tfkeras"
    variant: str | None
    python: str
    ran: bool  # whether any cell of it ran (a GPU line on a host without one did not)
    reason: str  # why not, where it did not
    entries: dict[str, Entry]


def _version_lines(rows: list[Row], devices: list[str]) -> dict[str, list[VersionLine]]:
    """Per TensorFlow version, its lines (device, then variant: the plain one first) for its page."""
    found: dict[str, list[VersionLine]] = {}
    for device in devices:
        for row in sorted(rows, key=lambda r: (r.variant is not None, r.variant or "")):
            entries = {name: e for (d, name), e in row.entries.items() if d == device}
            if not entries:
                continue
            cells = {e.cell.id: e.cell for e in entries.values()}
            ran = any(c.status is not CellStatus.NOT_RUN for c in cells.values())
            found.setdefault(row.tf, []).append(VersionLine(
                device.upper() + (f" {row.variant}" if row.variant else ""), row.variant, row.python, ran,
                "; ".join(sorted({str(c.reason) for c in cells.values() if c.reason})), entries))
    return found


def _version_counts(lines: dict[str, list[VersionLine]]) -> dict[str, dict[str, int]]:
    """Per version, how many of the verdicts its page shows (the lines that ran) have each status."""
    return {tf: {state: sum(1 for line in found if line.ran for e in line.entries.values() if e.status == state)
                 for state in STATES} for tf, found in lines.items()}


def number(value: Any, digits: int = 6) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _summary(result: ScenarioResult | None, cell: CellResult, origin: str | None, date: str) -> str:
    """The numbers behind an entry, and the run that measured it (where the data names one)."""
    return _numbers(result, cell) + (f" [result of run {origin}, {date}]" if origin else "")


def _numbers(result: ScenarioResult | None, cell: CellResult) -> str:
    if result is None:
        return f"{cell.own_status.word}: {cell.reason}"
    judged = result.judged
    if judged is None:
        return f"{result.status.value}: {result.reason}"
    verdict = judged.verdict
    updates, variance_updates = verdict.effective_updates, verdict.effective_updates_variance
    correction = f", follows the {verdict.variance_correction} batch variance" if verdict.variance_correction else ""
    forward = (f"; training-mode forward pass used the {verdict.forward_statistics} statistics"
               if verdict.forward_statistics else "")
    return (f"moving mean {number(judged.moving_mean)} (expected {number(verdict.expected_moving_mean)}), "
            f"moving variance {number(judged.moving_variance)} (expected "
            f"{number(verdict.expected_moving_variance)}{correction}); effective updates "
            f"{number(updates, 5) if updates is not None else 'n/a'} (mean), "
            f"{number(variance_updates, 5) if variance_updates is not None else 'n/a'} (variance) / "
            f"{result.steps} steps{forward}")


def _findings(run: Run, now: Run) -> dict[tuple[str, str], tuple[Finding, list[str]]]:
    """(cell id, scenario) -> the finding (status and facets) of every entry of `run`, and how the packages its cell
    installed differ from that cell's in `now` (history.package_changes)."""
    cells = {c.id: c for c in now.cells}
    found = {}
    for c in run.cells:
        moved = package_changes(c, cells[c.id]) if c.id in cells else []  # once per cell, for all its scenarios
        found.update({(c.id, name): (c.entry_finding(name), moved) for name in c.cell.scenarios})
    return found


@dataclass(frozen=True)
class ScenarioSource:
    """A scenario's code and notes as a run kept them, with the modules of its folder (the helpers it may call)."""

    code: str
    notes: dict[str, Any]
    modules: dict[str, str] = field(default_factory=dict)  # module name -> its source, the scenario's folder first


def _folder_modules(folder: Path, read: dict[Path, dict[str, str]]) -> dict[str, str]:
    """The Python modules of a scenario folder by name (regular files only), read once per folder into `read`."""
    if folder not in read:
        read[folder] = {path.stem: read_text(path) for path in sorted(folder.glob("*.py"))
                        if path.is_file() and not path.is_symlink()} if folder.is_dir() else {}
    return read[folder]


def _kept_modules(run: Run, name: str, read: dict[Path, dict[str, str]]) -> dict[str, str]:
    """The Python modules of the folders a run kept for scenario `name` (its own folder, then the helper's)."""
    for cell in run.cells:
        code = cell.code if isinstance(cell.code, dict) else {}
        own = (code.get("scenarios") or {}).get(name) if isinstance(code.get("scenarios"), dict) else None
        if not isinstance(own, str):
            continue
        modules: dict[str, str] = {}
        for digest in (own, code.get("helper")):
            if re.fullmatch(r"[0-9a-f]{16}", str(digest)):
                for module, text in _folder_modules(run.directory / "code" / str(digest), read).items():
                    modules.setdefault(module, text)
        return modules
    return {}


def scenario_page_sources(runs: list[Run], names: list[str]) -> dict[str, ScenarioSource]:
    """Each scenario's code and notes as the runs kept them, the first run first (older runs: the built-in ones),
    with the modules of its kept folder."""
    found: dict[str, ScenarioSource] = {}
    read: dict[Path, dict[str, str]] = {}
    for name in sorted(names):
        for run in runs:
            kept = run.directory / "scenarios" / name
            if os.path.lexists(kept / "scenario.py"):
                notes = read_json(kept / "notes.json", "notes") if os.path.lexists(kept / "notes.json") else {}
                found[name] = ScenarioSource(read_text(kept / "scenario.py"), notes, _kept_modules(run, name, read))
                break
        else:
            builtin = data_path(SCENARIOS_FOLDER) / f"{name}.py"
            code = builtin.read_text(encoding="utf-8") if builtin.exists() else "# (scenario script not kept)\n"
            found[name] = ScenarioSource(code, load_scenario_notes(builtin.with_suffix(".yaml")),
                                         _folder_modules(builtin.parent, read) if builtin.exists() else {})
    return found


@dataclass(frozen=True)
class Site:
    """What a site shows: the matrix's cells and the run each comes from, each cell's earlier results, the
    bisect conclusions, and the cells they rest on that are no matrix cell (releases between two rows)."""

    run: Run  # one run, or the cumulative view of a results root as one
    origins: dict[str, Run]  # cell id -> the run holding its result (the newest that ran)
    # (cell id, scenario) -> the run holding that scenario's result, and the run that produced it
    holders: dict[tuple[str, str], tuple[Run, str]] = field(default_factory=dict)
    timelines: dict[str, list[CellResult]] = field(default_factory=dict)
    searches: list[Conclusion] = field(default_factory=list)
    evidence: dict[str, tuple[CellResult, Run]] = field(default_factory=dict)
    history: History | None = None
    runs_shown: list[str] = field(default_factory=list)  # a results root: the runs whose results are shown

    def reproduce(self, cell_result: CellResult, scenario: str, again: str | None = None) -> str:
        """The command that runs one scenario of a cell as it ran, without bnmatrix: made by the backend that ran it
        (backends.BackendKind.reproduce) from the record of the run holding the result, with that run's copy of
        the code. `again`: the bnmatrix command that reruns it (default: `bnmatrix run` of the cell; a release a
        bisect probed has no matrix cell, and its bisect command is given instead)."""
        holder = self.holders.get((cell_result.id, scenario), (None, ""))[0]
        held = next((c for c in holder.cells if c.id == cell_result.id), cell_result) if holder else cell_result
        holding = holder or self.origins.get(held.id) or self.evidence.get(held.id, (None, self.run))[1]
        root = holding.directory.parent.name  # the results root's folder, as a user's shell sees it beside it
        folder = f"{root}/{holding.directory.name}"
        environment = held.environment or {}
        kinds = backend_kinds()
        kind = kinds.get(str(environment.get("kind")), kinds["venv"])
        own_code = (held.code or {}).get("scenarios", {}).get(scenario)
        own = ["--scenarios", f"{folder}/code/{own_code}"] if held.code and own_code != held.code["helper"] else []
        again = again or shlex.join(["bnmatrix", "run", "--backend", kind.name, "--results", root, "--select", held.id,
                                     "--scenario", scenario, *own])
        return kind.reproduce(Reproduction(cell=held.cell, environment=environment, scenario=scenario,
                                           run=held.run_id or holding.id, folder=folder,
                                           code=held.code, again=again))

    @classmethod
    def of_run(cls, run: Run) -> Site:
        holders = {(c.id, name): (run, s.reused_from or c.run_id or run.id) for c in run.cells
                   for name, s in c.scenarios.items()}
        return cls(run, {c.id: run for c in run.cells}, holders, searches=run.searches)

    @classmethod
    def load(cls, path: Path) -> Site:
        """A run directory: that run alone; a results root: each cell's newest result, with its history."""
        if (path / "manifest.json").is_file():
            return cls.of_run(load_run(path))
        if not path.is_dir():
            raise BnMatrixError(f"{path}: no run here (expected a results root or a run directory); run "
                                "'bnmatrix run' first")
        history = History.load(path)
        current = history.current()
        if not current:
            raise BnMatrixError(f"{path}: no run with cells to show (only bisect runs, or runs without cells); "
                                "expected the run they bisected beside them (copy its folder in, or 'bnmatrix import' "
                                "a site's archive), or one run: --results RUN_DIR")
        runs = history.matrix_runs
        holders = {(cell_id, name): held for cell_id, shown in current.items()
                   for name, held in shown.scenarios.items()}
        holding = {shown.run.id for shown in current.values()} | {run.id for run, _ in holders.values()}
        manifest = replace(runs[-1].manifest, cumulative=True,
                           started=min((r.manifest.started for r in runs if r.id in holding), key=moment))
        cells = sorted((shown.cell for shown in current.values()), key=lambda c: c.id)
        evidence: dict[str, tuple[CellResult, Run]] = {}
        for run in history.runs:
            if run.kind is RunKind.BISECT:
                evidence.update({c.id: (c, run) for c in run.cells if c.id not in current})
        return cls(Run(path.resolve(), manifest, cells), {cid: shown.run for cid, shown in current.items()},
                   holders, history.timelines(), history.searches(), evidence, history,
                   [r.id for r in runs if r.id in holding])

    @property
    def previous_findings(self) -> dict[tuple[str, str], tuple[Finding, list[str]]]:
        """(cell, scenario) -> the finding of that scenario's previous measured result, where it differs from the
        run that produced the one shown (a results root only), and how the packages of the two results' cells differ
        (history.package_changes)."""
        before = {}
        moved: dict[tuple[int, int], list[str]] = {}  # per pair of results, once for all their scenarios
        for cell_id, timeline in self.timelines.items():
            produced: dict[str, list[tuple[str, Finding, CellResult]]] = {}
            for past in timeline:
                for name, result in past.scenarios.items():
                    producer, seen = result.reused_from or past.run_id or "", produced.setdefault(name, [])
                    if not seen or seen[-1][0] != producer:
                        seen.append((producer, result.finding, past))
            for name, seen in produced.items():
                if len(seen) > 1:
                    (_, finding, older), (_, _, newer) = seen[-2:]
                    pair = (id(older), id(newer))
                    if pair not in moved:
                        moved[pair] = package_changes(older, newer)
                    before[(cell_id, name)] = (finding, moved[pair])
        return before


@dataclass(frozen=True)
class Expectations:
    """A matrix file's current `expect:` rules, applied when rendering instead of those the run recorded."""

    path: str
    digest: str
    by_cell: dict[str, dict[str, str]]

    @classmethod
    def from_matrix(cls, matrix: Matrix) -> Expectations:
        return cls(str(matrix.path), matrix.digest, {cell.id: cell.expect for cell in all_cells(matrix)})


Line = tuple[str, str | None]  # a device, and a variant or None: one line of the glance


@dataclass
class Span:
    """A stretch of versions (oldest first) with one verdict (status and facets): one range of the glance. Where it
    starts says only what is known: at the release a bisect pinned (`pinned`), or somewhere after the last version
    of the range before it (`after`) and by its own first version; the oldest range starts at the oldest version."""

    finding: Finding
    first: str  # the first version seen with this verdict, or the release a bisect pinned the change to
    last: str
    count: int = 1
    pinned: str | None = None  # the bisect's conclusion (its anchor on changes.html) where one pinned `first`
    after: str | None = None  # where no bisect pinned it: the change lies after this version (and by `first`)
    searched: str | None = None  # a bisect that narrowed the start to after..first without pinning it
    label: str = ""  # "1.7.1–1.8.0", "2.15.1", "from 2.16.1", "after 1.15.5, by 2.0.4, through 2.15.1"
    note: str = ""  # its facets in words: the unusual values, and the usual ones where they vary (_describe_ranges)

    @property
    def status(self) -> Status:
        return self.finding.status

    @property
    def words(self) -> str:
        """"stale (forward: batch) 1.9.0–2.15.1": the status in words, its note and the versions."""
        return f"{STATES[self.status][1]}{' (' + self.note + ')' if self.note else ''} {self.label}"

    @property
    def start(self) -> str:
        """How the range starts in words: its first version, or "after 1.15.5, by 2.0.4" where that is all we know."""
        return f"after {self.after}, by {self.first}" if self.after else self.first

    def to_dict(self) -> dict[str, Any]:
        """results.json's record of the range (report/results.schema.json: ranges)."""
        start: dict[str, Any] | None = None
        if self.pinned:
            start = {"pinned": True, "release": self.first, "search": self.pinned}
        elif self.after:
            start = {"pinned": False, "after": self.after, "by": self.first, "search": self.searched}
        return {"status": self.status.value, "facets": dict(self.finding.facets), "first": self.first,
                "last": self.last, "versions": self.count, "start": start, "text": self.words}


@dataclass(frozen=True)
class Mark:
    """One version's mark on a line of the glance."""

    tf: str
    status: Status
    note: str
    href: str
    upcoming: str = ""  # "release candidate", "nightly": after the released versions, marked apart


@dataclass(frozen=True)
class Ahead:
    """A version not yet released (a release candidate, a nightly) on a line of the glance: its verdict, and whether
    it differs from the newest release's there, which is what the next release is about to change."""

    tf: str
    kind: str  # "release candidate", "nightly"
    finding: Finding
    href: str
    newest: Finding | None  # the newest release's verdict on the line (None: no release of it has one)
    released: str | None  # that release

    @property
    def changes(self) -> bool:
        return self.newest is not None and self.finding.status in ANSWERS and self.finding != self.newest

    @property
    def same(self) -> bool:
        """Its verdict is the newest release's: the glance names it only in a line with the others that agree."""
        return self.newest is not None and self.finding == self.newest

    @property
    def words(self) -> str:
        """"changes in the next release: stale on 2.22.0rc0 (release candidate), updated on 2.21.0", or "next: updated
        on 2.23.0.dev20261026 (nightly), as 2.21.0"."""
        status = STATES[self.finding.status][1] + (f" ({self.finding.note()})" if self.finding.note() else "")
        if self.changes and self.newest is not None:
            was, _ = self.newest.versus(self.finding)
            return f"changes in the next release: {status} on {self.tf} ({self.kind}), {was} on {self.released}"
        return f"next: {status} on {self.tf} ({self.kind})" + (f", as {self.released}" if self.newest else "")

    def to_dict(self) -> dict[str, Any]:
        """results.json's record of it (report/results.schema.json: upcoming)."""
        return {"version": self.tf, "kind": self.kind, "status": self.finding.status.value,
                "facets": dict(self.finding.facets), "newest_release": self.released,
                "changes": self.changes, "text": self.words}


def ahead_words(found: list[Ahead]) -> list[tuple[str, bool]]:
    """The glance's words on the versions not yet released of a line, each with whether it is a change: each change,
    then one line for those that agree with the newest release ("next: as 2.21.0 on 2.22.0rc0, 2.23.0.dev20261026"),
    then any other."""
    same = [ahead for ahead in found if ahead.same]
    agree = [(f"next: as {same[0].released} on {', '.join(a.tf for a in same)}", False)] if same else []
    return ([(a.words, True) for a in found if a.changes] + agree
            + [(a.words, False) for a in found if not a.changes and not a.same])


@dataclass(frozen=True)
class Glance:
    """One scenario on one line (device, variant): its verdicts as ranges of versions, and a mark per version."""

    ranges: list[Span]  # the released versions
    marks: list[Mark]
    ahead: list[Ahead] = field(default_factory=list)  # the versions not yet released, oldest first


@dataclass(frozen=True)
class Overview:
    """The answer at a glance: per scenario and line, its Glance; the lines shown, and those where nothing ran."""

    lines: list[Line]
    table: dict[str, dict[Line, Glance]]
    not_run: dict[Line, int]  # a line where no cell ran: how many versions it has


@dataclass(frozen=True)
class Suite:
    """One device's JUnit test suite: each entry a test case, and how many fail, err or are skipped."""

    device: str
    cases: list[Entry]

    def count(self, junit: str) -> int:
        return sum(1 for entry in self.cases if entry.junit == junit)

    @property
    def tests(self) -> int:
        return len(self.cases)

    @property
    def failure(self) -> int:
        return self.count("failure")

    @property
    def error(self) -> int:
        return self.count("error")

    @property
    def skipped(self) -> int:
        return self.count("skipped")


@dataclass(frozen=True, kw_only=True)
class View:
    """What every page of a site shows, built once from a Site (build_view); the templates read its fields."""

    run: Manifest
    site: Site
    rows: list[Row]  # newest TF first
    groups: dict[str, list[Row]]  # the rows by major version ("2.x")
    devices: list[str]
    scenarios: list[str]
    matrix_devices: list[str]  # the devices with columns in the matrix (not folded)
    columns: list[tuple[str, str]]  # (device, scenario), in the matrix's order
    folded: dict[str, tuple[int, list[str]]]  # a device where no cell ran: how many cells, and why not
    overview: Overview
    summaries: dict[tuple[str, str], str]  # (device, scenario): the glance of it in words
    counts: dict[str, int]  # status -> how many entries have it
    cells: list[CellResult]  # sorted by id
    run_cells: set[str]
    previous_run: str | None
    runs_shown: list[str]
    searches: list[Conclusion]  # in the matrix's scenario order
    evidence: dict[str, tuple[CellResult, Run]]
    pages: set[str]  # the cells with a page
    probed_by: dict[tuple[str, str], list[Conclusion]]
    produced: dict[tuple[str, str], tuple[str, str]]  # (cell, scenario) -> the run that produced it, and its date
    changed: int  # entries whose verdict differs from the previous one
    unexpected: list[Entry]
    junit_suites: list[Suite]
    ran: int  # entries that ran
    meets_expectations: bool
    expectations: Expectations | None
    versions: list[str]
    version_lines: dict[str, list[VersionLine]]  # each version's page: its lines (device and variant)
    version_counts: dict[str, dict[str, int]]  # each version: how many of its entries have each status
    sources: dict[str, ScenarioSource]  # scenario -> its code and notes
    next_changes: list[tuple[str, Line, Ahead]]  # (scenario, line, version) where a version not yet released differs

    @property
    def entries(self) -> list[Entry]:
        return [entry for row in self.rows for entry in row.entries.values()]

    def entry(self, cell_id: str, scenario: str) -> Entry:
        return next(e for e in self.entries if (e.cell.id, e.scenario) == (cell_id, scenario))

    def context(self) -> dict[str, Any]:
        """The templates' variables: every field, and the vocabulary of statuses."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "states": STATES, "changed_state": CHANGED,
                "cumulative": self.run.cumulative, "facets": FACETS,
                "notes": {name: source.notes for name, source in self.sources.items()}}


def build_view(site: Site, previous: Run | None = None, expectations: Expectations | None = None) -> View:
    """What the pages show: rows newest TF first, columns device x scenario; changes since `previous` (or,
    for a results root, since each cell's previous result); expectations from the run's cells, or from
    `expectations` (a matrix file) where given; change points from the bisect conclusions."""
    run = site.run
    holding = [*site.origins.values(), *(holder for holder, _ in site.holders.values())]
    origins = sorted({id(r): r for r in holding}.values(), key=lambda r: moment(r.manifest.started), reverse=True)
    names = {name for cell in [*run.cells, *(c for c, _ in site.evidence.values())] for name in cell.cell.scenarios}
    sources = scenario_page_sources(origins + [r for _, r in site.evidence.values()], sorted(names))
    before = _findings(previous, run) if previous else site.previous_findings
    # With history: the results held by an older run than the newest, and that run's start.
    held_since = {key: holder.manifest.started[:10] for key, (holder, _) in site.holders.items()
                  if run.manifest.cumulative and holder.id != run.id}
    started = {r.id: r.manifest.started for r in (site.history.runs if site.history else [run])}
    scenarios: list[str] = []
    devices: list[str] = []
    rows: dict[tuple[str, str | None], Row] = {}
    for cell_result in run.cells:
        cell = cell_result.cell
        scenarios += [name for name in cell.scenarios if name not in scenarios]
        devices += [cell.device] if cell.device not in devices else []
        row = rows.setdefault((cell.tf, cell.variant), Row(cell.tf, cell.variant, cell.python))
        expected = expectations.by_cell.get(cell.id, {}) if expectations else cell.expect
        for name in cell.scenarios:
            result = cell_result.scenarios.get(name)
            status = cell_result.entry_status(name)
            earlier, dependencies = before.get((cell.id, name), (None, []))
            if earlier is not None and earlier == cell_result.entry_finding(name):
                earlier, dependencies = None, []  # shown only where it differs
            origin = site.holders[(cell.id, name)][1] if (cell.id, name) in site.holders else \
                cell_result.run_id
            row.entries[(cell.device, name)] = Entry(
                cell=cell_result, scenario=name, status=status, result=result,
                summary=_summary(result, cell_result, origin, started.get(origin or "", cell_result.started)[:10]),
                href=f"cells/{cell.id}.html#{name}", previous=earlier, dependencies=dependencies,
                expected=Status(expected[name]) if name in expected else None,
                origin=origin or site.origins[cell.id].id, held_since=held_since.get((cell.id, name)))
    devices.sort(key=lambda d: ("cpu", "gpu").index(d) if d in ("cpu", "gpu") else 2)
    ordered = sorted(rows.values(), key=lambda r: (Version(r.tf), r.variant is None, r.variant or ""), reverse=True)
    _note_transitions(ordered, run, site.searches)
    overview = _overview(ordered, scenarios, devices, site.searches)
    # A device column where no cell ran (GPU on a host without one) is folded into one line.
    folded = {}
    for device in devices:
        cells = {e.cell.id: e.cell for r in ordered for (d, _), e in r.entries.items() if d == device}
        if all(c.status is CellStatus.NOT_RUN for c in cells.values()):
            folded[device] = (len(cells), sorted({str(c.reason) for c in cells.values()}))
    matrix_devices = [d for d in devices if d not in folded]
    columns = [(device, name) for device in matrix_devices for name in scenarios]
    summaries = {(device, name): _ranges_text(overview.table.get(name, {}), device)
                 for device in devices for name in scenarios}
    groups: dict[str, list[Row]] = {}
    for row in ordered:
        groups.setdefault(row.major, []).append(row)
    entries = [entry for row in ordered for entry in row.entries.values()]
    ran = [e for e in entries if e.ran]
    version_lines = _version_lines(ordered, devices)
    return View(
        run=run.manifest, site=site, rows=ordered, groups=groups, devices=devices, scenarios=scenarios,
        matrix_devices=matrix_devices, columns=columns, folded=folded, overview=overview, summaries=summaries,
        counts={state: sum(1 for e in entries if e.status == state) for state in STATES},
        cells=sorted(run.cells, key=lambda c: c.id), run_cells={c.id for c in run.cells},
        previous_run=previous.id if previous else None, runs_shown=site.runs_shown,
        searches=sorted(site.searches, key=lambda c: (scenarios.index(c.scenario) if c.scenario in scenarios else
                                                      len(scenarios), c.device, str(c.variant),
                                                      Version(c.ordered[0]))),
        evidence=site.evidence, pages={c.id for c in run.cells} | set(site.evidence),
        probed_by=_probed_by(site.searches),
        produced={key: (produced, holder.manifest.started[:10]) for key, (holder, produced) in site.holders.items()},
        changed=sum(1 for e in entries if e.previous), unexpected=[e for e in entries if e.unexpected],
        junit_suites=[Suite(device, sorted((e for e in entries if e.cell.cell.device == device),
                                           key=lambda e: (e.cell.id, e.scenario))) for device in devices],
        ran=len(ran), meets_expectations=all(e.junit in ("pass", "skipped") for e in ran),
        expectations=expectations, versions=sorted({r.tf for r in ordered}, key=Version), sources=sources,
        version_lines=version_lines,
        version_counts=_version_counts(version_lines),
        next_changes=[(name, line, ahead) for name, lines in overview.table.items() for line, glance in lines.items()
                      for ahead in glance.ahead if ahead.changes])


def _probed_by(searches: list[Conclusion]) -> dict[tuple[str, str], list[Conclusion]]:
    """(cell id, scenario) -> the bisect searches whose evidence it is."""
    found: dict[tuple[str, str], list[Conclusion]] = {}
    for search in searches:
        for probe in search.probes:
            found.setdefault((probe.cell_id, search.scenario), []).append(search)
    return found


def search_href(search: Conclusion) -> str:
    """Where changes.html shows a search: its evidence."""
    return f"changes.html#{search_anchor(search)}"


def search_anchor(search: Conclusion) -> str:
    """The id of a search's section on changes.html."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", "-".join(str(part) for part in search.span if part))


def _note_transitions(rows: list[Row], run: Run, searches: list[Conclusion]) -> None:
    """At each change point of the run (history.change_points, as `bnmatrix bisect --from-run` finds them): the
    line above the older entry, and on the newer one the release a bisect pinned the change to, or the bisect
    command that would."""
    by_span = {s.span: s for s in searches}
    by_row = {(row.tf, row.variant): row for row in rows}
    for name, device, variant, older_cell, newer_cell in change_points(run):
        older, newer = older_cell.cell.tf, newer_cell.cell.tf
        before = by_row[(older, variant)].entries[(device, name)]
        entry = by_row[(newer, variant)].entries[(device, name)]
        before.boundary = True
        was, now = before.finding.versus(entry.finding)
        search = by_span.get((name, device, variant, older, newer))
        first = search.first_change if search and search.outcome in (Outcome.NARROWED, Outcome.RANGE) else None
        if search and first:
            where = (f"in {first.after}" if search.outcome is Outcome.NARROWED else
                     f"between {first.before} and {first.after}")
            more = f"; {len(search.changes)} changes in all" if len(search.changes) > 1 else ""
            entry.change = {"text": f"{name} ({device}): {was} → {first.was.versus(first.becomes)[1] if more else now} "
                                    f"{where} (rows {older} → {newer}{more})",
                            "href": search_href(search)}
        else:
            words = ["bnmatrix", "bisect", "--scenario", name, "--good", older, "--bad", newer,
                     "--device", device] + (["--variant", variant] if variant else [])
            entry.change = {"text": f"{name} ({device}): {was} → {now} between {older} and {newer}",
                            "command": shlex.join(words)}


def _overview(rows: list[Row], scenarios: list[str], devices: list[str], searches: list[Conclusion]) -> Overview:
    """The answer at a glance: per scenario and per device (and variant), the verdicts as version ranges,
    oldest first (a range starts at the release a bisect pinned, where one did; elsewhere after the version before
    it), and one mark per version.
    Device and variant columns where no cell ran are left out and counted instead."""
    searches_by_span = {s.span: s for s in searches
                        if s.outcome in (Outcome.NARROWED, Outcome.RANGE) and s.first_change}
    variants = sorted({r.variant for r in rows}, key=lambda v: (v is not None, v or ""))
    lines = [(device, variant) for device in devices for variant in variants]
    table: dict[str, dict[Line, Glance]] = {}
    not_run: dict[Line, int] = {}
    for device, variant in lines:
        for name in scenarios:
            every = [(r, r.entries[(device, name)]) for r in reversed(rows)
                     if r.variant == variant and (device, name) in r.entries]
            if not every:
                continue
            if all(e.status is Status.NOT_RUN for _, e in every):
                not_run[(device, variant)] = max(not_run.get((device, variant), 0), len(every))
                continue
            column = [(r, e) for r, e in every if not r.upcoming]
            ranges: list[Span] = []
            for row, entry in column:
                if ranges and ranges[-1].finding == entry.finding:
                    ranges[-1].last, ranges[-1].count = row.tf, ranges[-1].count + 1
                    continue
                search = searches_by_span.get((name, device, variant, ranges[-1].last, row.tf)) if ranges else None
                # the search's last change is where this verdict starts (the one its releases show, if several)
                change = search.changes[-1] if search and search.changes[-1].becomes == entry.finding else None
                if change and search and search.outcome is Outcome.NARROWED:
                    ranges.append(Span(entry.finding, change.after, row.tf, pinned=search_href(search)))
                elif ranges:  # nobody pinned it: after the range before, by this version (or as a bisect narrowed it)
                    narrowed = change if change and search and search.outcome is Outcome.RANGE else None
                    ranges.append(Span(entry.finding, narrowed.after if narrowed else row.tf, row.tf,
                                       after=narrowed.before if narrowed else ranges[-1].last,
                                       searched=search_href(search) if narrowed and search else None))
                else:
                    ranges.append(Span(entry.finding, row.tf, row.tf))
            judged = [(r, e) for r, e in column if e.status in ANSWERS]
            newest = judged[-1] if judged else None
            ahead = [Ahead(r.tf, r.upcoming, e.finding, e.href, newest[1].finding if newest else None,
                           newest[0].tf if newest else None) for r, e in every if r.upcoming]
            marks = [Mark(r.tf, e.status, e.note, e.href) for r, e in column]
            marks += [Mark(r.tf, e.status, e.note, e.href, r.upcoming) for r, e in every if r.upcoming]
            table.setdefault(name, {})[(device, variant)] = Glance(ranges, marks, ahead)
    for glances in table.values():
        _describe_ranges([glance.ranges for glance in glances.values()])
    shown = [line for line in lines if any(line in cells for cells in table.values())]
    return Overview(shown, table, {k: v for k, v in not_run.items() if k not in shown})


def _describe_ranges(lines: list[list[Span]]) -> None:
    """Each range's note and label. The note holds every facet a range carries whose value is not the usual one, and
    the usual values of the facets that vary anywhere in the scenario's glance (so that the ranges of
    keras_fit_4d_variance all say which variance they follow) or that tell it from a neighbour of the same status."""
    values = [dict(span.finding.facets) for ranges in lines for span in ranges]
    varying = {name for name in FACET_NAMES if len({v[name] for v in values if name in v}) > 1}
    for ranges in lines:
        for index, span in enumerate(ranges):
            neighbours = [ranges[i] for i in (index - 1, index + 1) if 0 <= i < len(ranges)]
            show = varying | {name for other in neighbours if other.status is span.status
                              for name in span.finding.differing(other.finding)}
            span.note = span.finding.note(show=show)
            newest = index == len(ranges) - 1 and index > 0
            if span.after:
                span.label = span.start if newest or span.first == span.last else f"{span.start}, through {span.last}"
            else:
                span.label = (f"from {span.first}" if newest else span.first if span.first == span.last
                              else f"{span.first}–{span.last}")


def _ranges_text(lines: dict[Line, Glance], device: str) -> str:
    """One device's answer in words, e.g. "updated 1.7.1–1.8.0 · stale 1.9.0–2.15.1 · unsupported from 2.16.1
    (tfkeras: unsupported 2.16.2–2.21.0)"; "not run" when no cell of it ran."""
    parts = []
    for (line_device, variant), found in lines.items():
        if line_device != device:
            continue
        text = " · ".join([span.words for span in found.ranges] + [words for words, _ in ahead_words(found.ahead)])
        parts.append(f"({variant}: {text})" if variant else text)
    return " ".join(parts) or "not run on this host"

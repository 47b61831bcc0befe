"""bnmatrix bisect: the exact release where a scenario's verdict changes.

The releases come from the cells' package index (PEP 691 JSON, PEP 503 HTML, or a local folder). Each
probe is a cell of the matrix's nearest entry at that release, run and stored like any other cell, so a
bisect resumes, merges and reuses like a run. A verdict is a status the host judged from the numbers
(updated, stale, wrong, unsupported); a probe without one (an error, a build error) is skipped, like
`git bisect skip`. The binary search assumes each verdict holds over one stretch of releases and pins
every change it meets that way; `--exhaustive` runs every release instead, which shows a verdict that
comes back.
"""

from __future__ import annotations

import itertools
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from bnmatrix.backends import Backend
from bnmatrix.config import Matrix, TFVersion
from bnmatrix.errors import BnMatrixError
from bnmatrix.index import Release, list_releases, minor_of
from bnmatrix.plan import Cell, all_cells
from bnmatrix.runner import ProgressCallback, folder_sources, run_plan, scenario_hashes, scenario_sources
from bnmatrix.store.files import now
from bnmatrix.store.records import CellResult
from bnmatrix.store.runstore import RunStore
from bnmatrix.store.searches import Change, Conclusion, End, Outcome, Probe
from bnmatrix.verdict import ANSWERS, Finding, Status

# --- probes and searches -----------------------------------------------------------------------------

@dataclass
class Search:
    """Where one scenario's verdict changes between two releases (`candidates`, ordered good to bad)."""

    scenario: str
    device: str
    variant: str | None
    candidates: list[str]
    unavailable: dict[str, str]  # releases in range that cannot be probed here: why
    exhaustive: bool
    probes: dict[str, Probe] = field(default_factory=dict)
    package: str | None = None  # --package: this package's releases are the candidates, TF held at `tf`
    tf: str | None = None

    def status(self, index: int) -> Status | None:
        probe = self.probes.get(self.candidates[index])
        return probe.status if probe else None

    def finding(self, index: int) -> Finding | None:
        """The status and facets there: what tells two releases apart (a facet change is a change too)."""
        probe = self.probes.get(self.candidates[index])
        return probe.finding if probe else None

    def _walk(self) -> tuple[list[tuple[int, int]], str | None]:
        """The changes pinned so far as (last index before, first index after), and the release to run next."""
        last = len(self.candidates) - 1
        unknown = [i for i in (0, last) if self.status(i) is None]
        if unknown:
            return [], self.candidates[unknown[0]]
        if self.status(0) not in ANSWERS or self.status(last) not in ANSWERS:
            return [], None
        if self.exhaustive:
            todo = [v for v in self.candidates if v not in self.probes]
            judged = [i for i in range(len(self.candidates)) if self.status(i) in ANSWERS]
            return [(a, b) for a, b in itertools.pairwise(judged) if self.finding(a) != self.finding(b)], \
                (todo[0] if todo else None)
        pins: list[tuple[int, int]] = []
        start = 0
        while self.finding(start) != self.finding(last):
            low, high, skipped = start, last, set()
            while True:
                inner = [i for i in range(low + 1, high) if i not in skipped]
                if not inner:
                    break
                middle = (low + high) / 2
                pick = min(inner, key=lambda i: (abs(i - middle), i))
                status = self.status(pick)
                if status is None:
                    return pins, self.candidates[pick]
                if status not in ANSWERS:
                    skipped.add(pick)
                elif self.finding(pick) == self.finding(low):
                    low = pick
                else:
                    high = pick
            pins.append((low, high))
            start = high
        return pins, None

    def wanted(self) -> list[str]:
        """The releases to run next (all that are left, with --exhaustive); none once the answer is known."""
        ends = [self.candidates[i] for i in (0, len(self.candidates) - 1) if self.status(i) is None]
        if ends:
            return ends  # both in one round
        following = self._walk()[1]
        if following is None:
            return []
        if self.exhaustive and None not in (self.status(0), self.status(len(self.candidates) - 1)):
            return [v for v in self.candidates if v not in self.probes]
        return [following]

    def command(self) -> str:
        words = ["bnmatrix", "bisect", "--scenario", self.scenario, "--good", self.candidates[0],
                 "--bad", self.candidates[-1], "--device", self.device]
        words += ["--variant", self.variant] if self.variant else []
        words += ["--package", self.package, "--tf", self.tf or ""] if self.package else []
        return shlex.join(words + (["--exhaustive"] if self.exhaustive else []))

    def conclusion(self) -> Conclusion:
        """The search as data (bisect.json): every probe, every change found, and the answer in words."""
        pins, nxt = self._walk()
        last = len(self.candidates) - 1
        good, bad = self.candidates[0], self.candidates[last]
        checked = [v for v in self.candidates if v in self.probes]
        judged = [self.probes[v].finding for v in checked if self.probes[v].judged]
        monotonic = len([s for i, s in enumerate(judged) if i == 0 or s != judged[i - 1]]) == len(set(judged))
        changes = [Change(self.candidates[a], self.candidates[b], self.probes[self.candidates[a]].finding,
                          self.probes[self.candidates[b]].finding, b == a + 1, self.candidates[a + 1:b])
                   for a, b in pins]
        label = f"{self.scenario} ({self.device}{', ' + self.variant if self.variant else ''})" + (
            f" with {self.package} on TF {self.tf}" if self.package else "")
        if nxt is not None:
            low, high = (pins[-1][1], last) if pins else (0, last)
            outcome = Outcome.INCOMPLETE
            text = (f"{label}: not finished; {len(checked)} of {len(self.candidates)} releases checked, the change "
                    f"lies between {self.candidates[low]} and {self.candidates[high]}; run again to go on")
        elif self.status(0) not in ANSWERS or self.status(last) not in ANSWERS:
            broken = good if self.status(0) not in ANSWERS else bad
            probe = self.probes[broken]
            outcome = Outcome.ENDPOINT_ERROR
            text = f"{label}: no verdict at {broken} ({probe.status.value}: {probe.reason}); nothing to compare with"
        elif not changes:
            same = (self.finding(0) or Finding(Status.ERROR)).label()
            outcome = Outcome.NO_CHANGE if self.exhaustive else Outcome.NOTHING_TO_BISECT
            text = (f"{label}: {same} at every one of the {len(checked)} releases checked" if self.exhaustive else
                    f"{label}: nothing to bisect: {same} at both {good} and {bad}; --exhaustive checks every "
                    "release between them")
        else:
            parts = []
            for change in changes:
                was, becomes = change.was.versus(change.becomes)
                what = (f"changed from {was} to {becomes}" if change.was.status != change.becomes.status
                        else " and ".join(change.was.differences(change.becomes)))
                if change.exact:
                    parts.append(f"{what} in {change.after} (last {was}: {change.before})")
                else:
                    parts.append(f"{what} between {change.before} and {change.after} "
                                 f"(no verdict at {', '.join(change.unjudged)})")
            outcome = Outcome.NARROWED if all(c.exact for c in changes) else Outcome.RANGE
            text = f"{label} " + "; then ".join(parts) + f"; {len(checked)} releases checked of {len(self.candidates)}"
            if not monotonic:
                text += " (not monotonic: a verdict comes back; every release checked: " + ", ".join(
                    f"{v} {self.probes[v].finding.label()}" for v in checked) + ")"
            elif not self.exhaustive and len(checked) < len(self.candidates):
                text += " (binary search: assumes each verdict holds over one stretch of releases; --exhaustive " \
                        "runs every release)"
        return Conclusion(
            scenario=self.scenario, device=self.device, variant=self.variant, good=End(good, self.status(0)),
            bad=End(bad, self.status(last)), outcome=outcome, answer=text, candidates=self.candidates,
            unavailable=[{"version": v, "why": self.unavailable[v]} for v in sorted(self.unavailable, key=Version)],
            probes=[self.probes[v] for v in checked], checked=len(checked), total=len(self.candidates),
            changes=changes, exhaustive=self.exhaustive, assumed_monotonic=not self.exhaustive, monotonic=monotonic,
            command=self.command(), updated=now(), package=self.package, tf=self.tf)


# --- from the matrix to searches -----------------------------------------------------------------------

def template_entry(matrix: Matrix, version: str, device: str, variant: str | None) -> TFVersion:
    """The matrix entry whose settings a probe of `version` takes: the same minor release if the matrix has
    one (the nearest), else the nearest older entry, else the oldest."""
    entries = [e for e in matrix.versions if device in e.devices and (variant is None or variant in e.variants)]
    if not entries:
        with_variant = f" with variant {variant!r}" if variant else ""
        raise BnMatrixError(f"no entry of {matrix.path} has device {device!r}{with_variant}; expected one to copy "
                            "settings from")
    wanted = Version(version)
    same = [e for e in entries if Version(e.tf).release[:2] == wanted.release[:2]]
    if same:
        return min(same, key=lambda e: (abs(Version(e.tf).release[-1] - wanted.release[-1]), Version(e.tf)))
    older = [e for e in entries if Version(e.tf) < wanted]
    return max(older, key=lambda e: Version(e.tf)) if older else min(entries, key=lambda e: Version(e.tf))


def probe_cell(matrix: Matrix, version: str, python: str, device: str, variant: str | None,
               scenarios: Sequence[str]) -> Cell:
    """The cell that probes `version`: the matrix's own cell where it has that release, else its nearest
    entry's settings at that release."""
    own = next((e for e in matrix.versions if e.tf == version and e.python == python), None)
    entry = own or template_entry(matrix, version, device, variant).at(version, python)
    cells = all_cells(replace(matrix, versions=(entry,)), scenarios)
    return next(c for c in cells if c.device == device and c.variant == variant)


def choose_python(release: Release, preferred: str, serves: Callable[[str], bool]) -> tuple[str | None, str]:
    """The Python a probe of `release` uses (the template's if it has a wheel), or None and why not."""
    if release.has_wheel_for(preferred) and serves(preferred):
        return preferred, ""
    options = [p for p in release.pythons if serves(p)]
    if not options:
        have = ", ".join(release.pythons) or "none"
        return None, f"wheels for Python {have}, none of which this host serves"
    return min(options, key=lambda p: (abs(minor_of(p) - minor_of(preferred)), -minor_of(p))), ""


@dataclass
class Bisector:
    """The searches of one `bnmatrix bisect`, the releases they need, and the cells that probe them."""

    matrix: Matrix
    serves: Callable[[str], bool]
    pre: bool = False
    exhaustive: bool = False
    searches: list[Search] = field(default_factory=list)
    releases: dict[tuple[str, str], Release] = field(default_factory=dict)  # (package, version) -> release
    pinned: str | None = None  # --package: the package whose releases are searched, TF held at `held`
    held: str | None = None

    def package(self, version: str, device: str, variant: str | None) -> str:
        """The package whose releases are searched: --package's, else the TF package of the matrix's entry."""
        if self.pinned:
            return self.pinned
        entry = template_entry(self.matrix, version, device, variant)
        return Requirement(entry.at(version, entry.python).packages[device]).name

    def held_cell(self, device: str, variant: str | None, scenarios: Sequence[str]) -> Cell:
        """--package: the matrix's cell of the TF release held fixed (on its own Python)."""
        assert self.held is not None
        entry = next((e for e in self.matrix.versions if e.tf == self.held), None)
        python = entry.python if entry else template_entry(self.matrix, self.held, device, variant).python
        return probe_cell(self.matrix, self.held, python, device, variant, scenarios)

    def cell(self, version: str, python: str, device: str, variant: str | None, scenarios: Sequence[str]) -> Cell:
        """The cell that probes `version`: of TF, as the matrix's nearest entry sets it up; with --package, the held
        TF's cell with that release of the package pinned, and everything else as of the later of the two releases
        (the package's upload plus the matrix's grace), so that what the release needs exists."""
        if not self.pinned:
            cell = probe_cell(self.matrix, version, python, device, variant, scenarios)
            release = self.releases.get((self.package(version, device, variant), version))
            dated = self.matrix.released and not (variant and self.matrix.variants[variant].latest)
            if cell.exclude_newer is None and dated and release is not None and release.uploaded:
                # a release between the matrix's rows: its dependencies as of its own upload, as the rows' are
                cell = replace(cell, exclude_newer=self.matrix.after_grace(release.uploaded))
            return cell
        base = self.held_cell(device, variant, scenarios)
        release = self.releases.get((self.pinned, version))
        cutoff = base.exclude_newer
        if cutoff and release and release.uploaded:
            cutoff = max(cutoff, self.matrix.after_grace(release.uploaded))
        return replace(base, id=f"{base.id}+{canonicalize_name(self.pinned)}-{version}", exclude_newer=cutoff,
                       requirements=(*base.requirements, f"{self.pinned}=={version}"))

    def range(self, good: str, bad: str, device: str, variant: str | None,
              endpoints_known: bool = False) -> tuple[list[str], dict[str, str]]:
        """Releases from the older of `good` and `bad` to the newer (in release order) that a probe can install here,
        and those it cannot."""
        package = self.package(good, device, variant)
        releases, left_out = list_releases(self.matrix.index_url, package, self.pre)
        on_index = {r.version: r for r in releases}
        spelled = {Version(v): v for v in [*on_index, *left_out]}  # 2.15 is 2.15.0: the index's spelling
        good, bad = spelled.get(Version(good), good), spelled.get(Version(bad), bad)
        for option, version in (("--good", good), ("--bad", bad)):
            if version not in on_index and not endpoints_known:
                if Version(version).is_prerelease and not self.pre:
                    raise BnMatrixError(f"{option} {version}: a pre-release, which bisect leaves out unless asked; "
                                        "expected a final release, or --pre to take release candidates and betas")
                known = [r.version for r in releases]
                nearby = [v for v in known if v.split(".")[:2] == version.split(".")[:2]] or known[-5:]
                why = f" ({left_out[version]})" if version in left_out else ""
                raise BnMatrixError(f"{option} {version}: {package} {version} is not on {self.matrix.index_url} as a "
                                    f"release with a Linux wheel{why}; expected one of its releases, e.g. "
                                    f"{', '.join(nearby)}")
        low, high = sorted((Version(good), Version(bad)))
        inside: list[str] = []
        unavailable = {v: why for v, why in left_out.items() if low < Version(v) < high}
        held = self.held_cell(device, variant, ()).python if self.pinned else ""  # the package must serve its Python
        for release in releases:
            if not low <= Version(release.version) <= high:
                continue
            self.releases[(package, release.version)] = release
            if self.pinned:
                python, why = (held, "") if release.has_wheel_for(held) else (
                    None, f"no wheel for Python {held} (TF {self.held}'s)")
            else:
                preferred = template_entry(self.matrix, release.version, device, variant).python
                python, why = choose_python(release, preferred, self.serves)
            if python is None:
                unavailable[release.version] = why
            else:
                inside.append(release.version)
        if not endpoints_known:
            hint = "install one of those Pythons (e.g. with pyenv) or use --backend docker"
            if not inside:
                raise BnMatrixError(f"no release of {package} from {low} to {high} on {self.matrix.index_url} has a "
                                    f"wheel for a Python this host serves ({unavailable.get(good, '')}); {hint}")
            for option, version in (("--good", good), ("--bad", bad)):
                if version in unavailable:
                    raise BnMatrixError(f"{option} {version}: {unavailable[version]}; {hint}")
        for version in (good, bad):
            unavailable.pop(version, None)
        for version in (good, bad):
            if version not in inside:
                inside.append(version)
        inside.sort(key=Version)  # in release order, whichever way round the ends were given
        return inside, unavailable

    def add(self, scenario: str, device: str, variant: str | None, good: str, bad: str,
            endpoints: dict[str, Probe] | None = None) -> Search:
        candidates, unavailable = self.range(good, bad, device, variant, endpoints_known=endpoints is not None)
        search = Search(scenario, device, variant, candidates, unavailable, self.exhaustive, dict(endpoints or {}),
                        self.pinned, self.held)
        self.searches.append(search)
        return search

    def python_for(self, version: str, device: str, variant: str | None) -> str:
        if self.pinned:
            return self.held_cell(device, variant, ()).python
        own = next((e for e in self.matrix.versions if e.tf == version and device in e.devices), None)
        if own is not None and self.serves(own.python):
            return own.python
        preferred = template_entry(self.matrix, version, device, variant).python
        release = self.releases.get((self.package(version, device, variant), version))
        if release is None:
            return preferred
        return choose_python(release, preferred, self.serves)[0] or preferred

    def wanted(self) -> dict[tuple[str, str, str | None], set[str]]:
        """(release, device, variant) -> the scenarios whose searches need it next (shared between searches)."""
        needs: dict[tuple[str, str, str | None], set[str]] = {}
        for search in self.searches:
            for version in search.wanted():
                needs.setdefault((version, search.device, search.variant), set()).add(search.scenario)
        return needs

    def feed(self, result: CellResult, scenario: str) -> Probe:
        probe = Probe.of(result, scenario)
        if self.pinned:  # the probe's release is the package's, pinned last in the cell's requirements
            probe = replace(probe, version=next(iter(Requirement(result.cell.requirements[-1]).specifier)).version)
        for search in self.searches:
            if (search.scenario, search.device, search.variant) == (scenario, result.cell.device,
                                                                    result.cell.variant) \
                    and probe.version in search.candidates:
                search.probes[probe.version] = probe
        return probe

    def run(self, backend: Backend, store: RunStore, jobs: int, progress: ProgressCallback,
            say: Callable[[str], None], budget_s: float | None = None) -> list[Conclusion]:
        """Probe round after round until every search has its answer (or the time budget is used up); each
        round runs one cell per release, with every scenario that needs it; results found in the results
        root are reused scenario by scenario. Returns the conclusions, also written to the run's bisect.json."""
        folders = folder_sources(self.matrix.scenario_dirs)
        sources = scenario_sources(folders)
        started = time.monotonic()
        store.write_searches([s.conclusion() for s in self.searches])
        while needs := self.wanted():
            if budget_s is not None and time.monotonic() - started > budget_s:
                say(f"time budget of {budget_s / 60:g} min used up; {len(needs)} release(s) still wanted: run "
                    "again to go on (nothing is run twice)")
                break
            cells = []
            for (version, device, variant), names in sorted(needs.items(), key=lambda i: Version(i[0][0])):
                python = self.python_for(version, device, variant)
                remaining = []
                for name in sorted(names):
                    cell = self.cell(version, python, device, variant, (name,))
                    hashes = scenario_hashes(cell, self.matrix.catalog, folders)
                    found = store.reusable_scenarios(cell, hashes, sources, backend.name).get(name)
                    if found is None:
                        remaining.append(name)
                    else:
                        say(f"  {name}: {self.feed(found[1], name).describe()} [from run {found[1].run_id}]")
                if remaining:
                    cells.append(self.cell(version, python, device, variant, remaining))
            for result in run_plan(cells, self.matrix.catalog, backend, store, self.matrix.scenario_dirs,
                                   self.matrix.timeout_s, False, progress, jobs):
                for name in result.cell.scenarios:
                    say(f"  {name}: {self.feed(result, name).describe()}")
            store.write_searches([s.conclusion() for s in self.searches])
        return [s.conclusion() for s in self.searches]

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

import functools
import itertools
import json
import platform
import re
import shlex
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from bnmatrix.backends import Backend
from bnmatrix.config import Matrix, TFVersion
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import Cell, all_cells
from bnmatrix.runner import ProgressCallback, folder_sources, run_plan, scenario_hashes, scenario_sources
from bnmatrix.store.files import now
from bnmatrix.store.records import CellResult
from bnmatrix.store.runstore import RunStore
from bnmatrix.store.searches import Change, Conclusion, End, Outcome, Probe
from bnmatrix.verdict import ANSWERS, Finding, Status

INDEX_TIMEOUT_S = 60


# --- the package index -------------------------------------------------------------------------------

class _Links(HTMLParser):
    """The file links of a PEP 503 project page: (file name, yanked)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            name = urllib.parse.unquote(urllib.parse.urlsplit(values["href"] or "").path.rsplit("/", 1)[-1])
            self.files.append((name, "data-yanked" in values))


@functools.cache
def index_files(index_url: str, package: str) -> tuple[tuple[str, bool], ...]:
    """Every file the index lists for `package`: (file name, yanked)."""
    project = canonicalize_name(package)
    if index_url.startswith("file://"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(index_url).path)) / project
        if (folder / "index.html").is_file():
            parser = _Links()
            parser.feed((folder / "index.html").read_text(encoding="utf-8", errors="replace"))
            return tuple(parser.files)
        if folder.is_dir():
            return tuple((p.name, False) for p in sorted(folder.iterdir()) if p.is_file())
        raise BnMatrixError(f"{index_url}: no project {project} in this local index (looked in {folder}); expected "
                            "the index the cells install from (settings.index_url)")
    request = urllib.request.Request(f"{index_url.rstrip('/')}/{project}/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "bnmatrix-bisect"})
    try:
        with urllib.request.urlopen(request, timeout=INDEX_TIMEOUT_S) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise BnMatrixError(f"{index_url}: listing {project} answered HTTP {exc.code} {exc.reason}; expected the "
                            "index the cells install from (settings.index_url)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BnMatrixError(f"{index_url}: cannot list the releases of {project}: {reason}; expected a reachable "
                            "package index (settings.index_url)") from None
    if "json" in kind:
        data = json.loads(body)
        return tuple((f["filename"], bool(f.get("yanked"))) for f in data.get("files", []))
    parser = _Links()
    parser.feed(body.decode("utf-8", errors="replace"))
    return tuple(parser.files)


@dataclass(frozen=True)
class Release:
    """A release on the index and the Pythons (X.Y) it has a wheel for on this machine's platform."""

    version: str
    pythons: tuple[str, ...]  # empty with `any_python`
    any_python: bool = False  # a pure-Python (py3) wheel: any Python serves it

    def has_wheel_for(self, python: str) -> bool:
        return self.any_python or python in self.pythons


def _wheel_pythons(filename: str, machine: str) -> tuple[str | None, set[str]] | None:
    """(version, Pythons) a wheel serves on Linux `machine` ('*' in the set: any Python 3); None if it does not."""
    try:
        _, version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return None
    pythons: set[str] = set()
    for tag in tags:  # the cells run glibc Linux: manylinux or linux wheels for this machine, or pure ones
        if tag.platform != "any" and not (tag.platform.startswith(("manylinux", "linux"))
                                          and tag.platform.endswith(machine)):
            continue
        match = re.fullmatch(r"cp3(\d+)", tag.interpreter)
        if match:
            pythons.add(f"3.{match[1]}")
        elif tag.interpreter in ("py3", "py30") or tag.interpreter.startswith("py3"):
            pythons.add("*")
    return (str(version), pythons) if pythons else None


def list_releases(index_url: str, package: str, pre: bool = False) -> tuple[list[Release], dict[str, str]]:
    """The releases of `package` with a Linux wheel for this machine, oldest first (pre-releases with `pre`),
    and the releases left out with the reason (yanked, no wheel for this platform)."""
    machine = platform.machine() or "x86_64"
    wheels: dict[str, set[str]] = {}
    seen: dict[str, str] = {}
    for filename, yanked in index_files(index_url, package):
        match = re.match(r"[^-]+-([^-]+)-", filename)
        try:
            version = str(Version(match[1])) if match else None
        except InvalidVersion:
            continue
        if version is None or (Version(version).is_prerelease and not pre) or Version(version).is_devrelease:
            continue
        if yanked:
            seen.setdefault(version, "yanked from the index")
            continue
        served = _wheel_pythons(filename, machine) if filename.endswith(".whl") else None
        if served is None:
            seen.setdefault(version, f"no wheel for Linux {machine}")
            continue
        wheels.setdefault(served[0] or version, set()).update(served[1])
    releases = [Release(v, tuple(sorted((p for p in pythons if p != "*"), key=_minor)), "*" in pythons)
                for v, pythons in wheels.items()]
    left_out = {v: why for v, why in seen.items() if v not in wheels}
    return sorted(releases, key=lambda r: Version(r.version)), left_out


def _minor(python: str) -> int:
    return int(python.split(".")[1])


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
        label = f"{self.scenario} ({self.device}{', ' + self.variant if self.variant else ''})"
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
            command=self.command(), updated=now())


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
    return min(options, key=lambda p: (abs(_minor(p) - _minor(preferred)), -_minor(p))), ""


@dataclass
class Bisector:
    """The searches of one `bnmatrix bisect`, the releases they need, and the cells that probe them."""

    matrix: Matrix
    serves: Callable[[str], bool]
    pre: bool = False
    exhaustive: bool = False
    searches: list[Search] = field(default_factory=list)
    releases: dict[tuple[str, str], Release] = field(default_factory=dict)  # (package, version) -> release

    def package(self, version: str, device: str, variant: str | None) -> str:
        entry = template_entry(self.matrix, version, device, variant)
        return Requirement(entry.at(version, entry.python).packages[device]).name

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
        for release in releases:
            if not low <= Version(release.version) <= high:
                continue
            self.releases[(package, release.version)] = release
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
        search = Search(scenario, device, variant, candidates, unavailable, self.exhaustive, dict(endpoints or {}))
        self.searches.append(search)
        return search

    def python_for(self, version: str, device: str, variant: str | None) -> str:
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
                    cell = probe_cell(self.matrix, version, python, device, variant, (name,))
                    hashes = scenario_hashes(cell, self.matrix.catalog, folders)
                    found = store.reusable_scenarios(cell, hashes, sources, backend.name).get(name)
                    if found is None:
                        remaining.append(name)
                    else:
                        say(f"  {name}: {self.feed(found[1], name).describe()} [from run {found[1].run_id}]")
                if remaining:
                    cells.append(probe_cell(self.matrix, version, python, device, variant, remaining))
            for result in run_plan(cells, self.matrix.catalog, backend, store, self.matrix.scenario_dirs,
                                   self.matrix.timeout_s, False, progress, jobs):
                for name in result.cell.scenarios:
                    say(f"  {name}: {self.feed(result, name).describe()}")
            store.write_searches([s.conclusion() for s in self.searches])
        return [s.conclusion() for s in self.searches]

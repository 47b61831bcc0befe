"""The history of a results root: every run kept, each cell's newest result (the cumulative matrix),
how each verdict evolved run by run, what changed between two runs and where a run's verdicts change
between versions (its change points), bisect conclusions, retention,
and the archive a published site carries so that the next run can add to it.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from bnmatrix.errors import BnMatrixError
from bnmatrix.intake import extract_archive, staging_name, sweep_staging
from bnmatrix.store.files import moment, now, write_json
from bnmatrix.store.merge import check_run
from bnmatrix.store.reader import load_run, runs_in
from bnmatrix.store.records import CellResult, Run, RunKind, RunStatus, ScenarioResult
from bnmatrix.store.searches import Conclusion, latest_searches
from bnmatrix.verdict import VERDICTS, CellStatus, Finding

ARCHIVE_SCHEMA = "bnmatrix.archive/1"
ARCHIVE_NAME = "results-archive.tar.gz"
ARCHIVE_INDEX = "archive.json"


@dataclass(frozen=True)
class Change:
    cell: str
    scenario: str
    before: Finding
    after: Finding


@dataclass(frozen=True)
class Diff:
    """What differs between two runs: verdicts of the entries both hold, the cells only one holds, and the installed
    packages of each cell with a changed verdict that differ (its TF is the cell's own: a dependency's change)."""

    changes: list[Change]
    only_before: list[str]
    only_after: list[str]
    compared: int
    packages: dict[str, list[str]] = field(default_factory=dict)  # cell -> "keras 3.15.1 -> 3.16.0", ...


def _installed(cell: CellResult) -> dict[str, str] | None:
    """The packages a cell had (name -> version, or the URL it came from), as its backend recorded them; None where
    it did not (older results, a cell that did not build)."""
    recorded = (cell.environment or {}).get("packages")
    if not isinstance(recorded, list) or not recorded:
        return None
    found: dict[str, str] = {}
    for line in recorded:
        name, _, version = str(line).partition("==") if "==" in str(line) else str(line).partition(" @ ")
        found[canonicalize_name(name.strip())] = version.strip()
    return found


def package_changes(before: CellResult, after: CellResult) -> list[str]:
    """How the installed packages of two results of a cell differ: "keras 3.15.1 -> 3.16.0", "+ jax 0.4.30",
    "- h5py 2.10.0"; empty where they are the same or either did not record them."""
    old, new = _installed(before), _installed(after)
    if old is None or new is None:
        return []
    return [f"{name} {old[name]} -> {new[name]}" if name in old and name in new else
            f"+ {name} {new[name]}" if name in new else f"- {name} {old[name]}"
            for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]


def diff(before: Run, after: Run) -> Diff:
    """Entries (cell x scenario) both runs hold whose finding (status or any facet) differs; cells only one run holds
    are listed. A cell this host could not serve (not run) holds no result: it is neither compared nor listed."""
    old = {c.id: c for c in before.cells if c.status is not CellStatus.NOT_RUN}
    new = {c.id: c for c in after.cells if c.status is not CellStatus.NOT_RUN}
    changes, compared = [], 0
    for cell_id in sorted(old.keys() & new.keys()):
        for name in new[cell_id].cell.scenarios:
            if name not in old[cell_id].cell.scenarios:
                continue
            compared += 1
            a, b = old[cell_id].entry_finding(name), new[cell_id].entry_finding(name)
            if a != b:
                changes.append(Change(cell_id, name, a, b))
    packages = {cell_id: found for cell_id in dict.fromkeys(c.cell for c in changes)
                if (found := package_changes(old[cell_id], new[cell_id]))}
    return Diff(changes, sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys()), compared, packages)


@dataclass(frozen=True)
class Shown:
    """A cell as the cumulative matrix shows it (History.current)."""

    cell: CellResult  # the cell's newest result that ran, with every scenario's newest measured result
    run: Run  # the run holding the cell's newest result that ran (its newest result, if none ran)
    scenarios: dict[str, tuple[Run, str]]  # scenario -> the run holding its result, and the run that produced it


@dataclass(frozen=True)
class History:
    """Every run of a results root, oldest first."""

    root: Path
    runs: list[Run]

    @classmethod
    def load(cls, root: Path) -> History:
        """Every run of a results root, each file checked; a run that fails its checks is one clear error (its
        file named), never a run quietly left out of what is shown."""
        refused: list[str] = []
        found = runs_in(root, refused=refused)
        if refused:
            more = f" (and {len(refused) - 1} more run{'s' if len(refused) > 2 else ''})" if len(refused) > 1 else ""
            raise BnMatrixError(refused[0] + more)
        runs = [load_run(directory) for directory, _ in found]
        if not runs:
            why = "no run here" if root.is_dir() else "does not exist"
            raise BnMatrixError(f"{root}: {why} (expected run folders with a manifest.json); run 'bnmatrix run' "
                                "first")
        return cls(root, runs)

    @property
    def matrix_runs(self) -> list[Run]:
        return [r for r in self.runs if r.kind is RunKind.RUN and r.cells]

    def find(self, name: str) -> Run:
        """A run by id (or 'latest', or a unique prefix of an id)."""
        if name == "latest":  # as results/latest: the newest run that measured something
            measuring = [r for r in self.matrix_runs if any(c.status is CellStatus.RAN for c in r.cells)]
            if not measuring:
                raise BnMatrixError(f"{self.root}: no 'latest' run (it holds only bisects, or runs where no cell ran); "
                                    "expected a run id, e.g. one of " + ", ".join(r.id for r in self.runs[-3:]))
            return measuring[-1]
        found = [r for r in self.runs if r.id == name or r.directory.name == name] or \
                [r for r in self.runs if r.id.startswith(name)]
        if len(found) != 1:
            known = ", ".join(r.id for r in self.runs[-5:])
            why = "is ambiguous" if found else "is no run"
            raise BnMatrixError(f"{name!r} {why} in {self.root}; expected a run id such as {known}")
        return found[0]

    def current(self) -> dict[str, Shown]:
        """Each cell as the cumulative matrix shows it: every scenario's newest measured result (from a result of
        the cell that ran it), whichever run holds it, so that a narrower run, one that could not run the cell
        here, or one that failed to build never hides a verdict; a cell that never ran: its newest result."""
        newest: dict[str, tuple[CellResult, Run]] = {}
        ran: dict[str, tuple[CellResult, Run]] = {}
        measured: dict[str, dict[str, tuple[ScenarioResult, Run, str]]] = {}
        for run in self.matrix_runs:
            for cell in run.cells:
                newest[cell.id] = (cell, run)
                if cell.status is CellStatus.RAN:
                    ran[cell.id] = (cell, run)
                    for name, result in cell.scenarios.items():
                        produced = result.reused_from or cell.run_id or run.id
                        measured.setdefault(cell.id, {})[name] = (result, run, produced)
        shown = {}
        for cell_id, (cell, run) in newest.items():
            if cell_id not in ran:
                shown[cell_id] = Shown(cell, run, {})
                continue
            base, base_run = ran[cell_id]
            kept = measured[cell_id]
            names = [*base.cell.scenarios, *(name for name in kept if name not in base.cell.scenarios)]
            composite = replace(base, cell=replace(base.cell, scenarios=tuple(names)),
                                scenarios={name: kept[name][0] for name in names})
            shown[cell_id] = Shown(composite, base_run, {name: (kept[name][1], kept[name][2]) for name in names})
        return shown

    def timelines(self) -> dict[str, list[CellResult]]:
        """Each cell's distinct results over time, one per run that produced one (reused copies count once)."""
        seen: dict[str, dict[str, CellResult]] = {}
        for run in self.matrix_runs:
            for cell in run.cells:
                seen.setdefault(cell.id, {}).setdefault(cell.run_id or run.id, cell)
        return {cell_id: sorted(results.values(), key=lambda c: moment(c.started)) for cell_id, results in seen.items()}

    def searches(self) -> list[Conclusion]:
        """The newest conclusion of every bisect search in the root, each with the run that holds it."""
        return latest_searches((run.directory, run.manifest) for run in self.runs)


def upcoming(tf: str) -> str:
    """What a version not yet released is ("nightly" for a development release, "release candidate" for a
    pre-release), or "" for a release."""
    version = Version(tf)
    return "nightly" if version.is_devrelease else "release candidate" if version.is_prerelease else ""


def change_points(run: Run, devices: Sequence[str] = (), scenarios: Sequence[str] = ()) -> list[
        tuple[str, str, str | None, CellResult, CellResult]]:
    """Each pair of adjacent released versions of a run whose findings (the status or any facet, verdict.Finding)
    differ for a scenario (entries without a verdict in between are passed over; a release candidate or a nightly is
    no end of a change: the report compares it with the newest release): (scenario, device, variant, older cell,
    newer cell)."""
    columns: dict[tuple[str, str | None], list[CellResult]] = {}
    for cell in run.cells:
        if not devices or cell.cell.device in devices:
            columns.setdefault((cell.cell.device, cell.cell.variant), []).append(cell)
    found = []
    for (device, variant), cells in columns.items():
        cells.sort(key=lambda c: Version(c.cell.tf))
        names = [n for n in dict.fromkeys(n for c in cells for n in c.cell.scenarios)
                 if not scenarios or n in scenarios]
        for name in names:
            judged = [c for c in cells if c.entry_status(name).value in VERDICTS and not upcoming(c.cell.tf)]
            for older, newer in itertools.pairwise(judged):
                if older.entry_finding(name) != newer.entry_finding(name):
                    found.append((name, device, variant, older, newer))
    return found


def cited_runs(searches: list[Conclusion]) -> set[str]:
    return {p.run_id for s in searches for p in s.probes if p.run_id} | {s.run_id for s in searches if s.run_id}


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` runs of a results root; a run that holds a cell's newest result, that a
    bisect conclusion cites as evidence or holds, that `latest` points at, or that still runs, always stays.
    Returns the ids deleted."""
    runs = runs_in(root)
    if len(runs) <= keep:
        return []
    protected = {directory.name for directory, _ in runs[-keep:]}
    newest_holder: dict[str, str] = {}
    for directory, manifest in runs:
        if manifest.status is RunStatus.RUNNING:
            protected.add(directory.name)
        if manifest.kind is RunKind.RUN:
            for path in (directory / "cells").glob("*.json"):
                newest_holder[path.stem] = directory.name
    protected |= set(newest_holder.values()) | cited_runs(latest_searches(runs))
    latest = root / "latest"
    if latest.is_symlink():
        protected.add(latest.resolve().name)
    deleted = []
    for directory, manifest in runs:
        if directory.name not in protected and manifest.run_id not in protected:
            shutil.rmtree(directory)
            deleted.append(directory.name)
    return deleted


def write_archive(history: History, target: Path) -> Path:
    """The results root as a versioned archive (see docs/history.md): archive.json, then each run's folder."""
    index = {"schema": ARCHIVE_SCHEMA, "created": now(),
             "runs": [{"run_id": r.id, "folder": r.directory.name, "kind": r.kind.value,
                       "started": r.manifest.started, "status": r.status.value}
                      for r in history.runs]}
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as archive:
        data = (json.dumps(index, indent=1) + "\n").encode()
        info = tarfile.TarInfo(ARCHIVE_INDEX)
        info.size, info.mode = len(data), 0o644
        archive.addfile(info, io.BytesIO(data))
        for run in history.runs:
            archive.add(run.directory, arcname=run.directory.name)
    return target


def import_archive(archive_path: Path, root: Path) -> list[str]:
    """Add the runs of an archive that a results root does not hold yet; the others are kept as they are.

    Everything is checked before anything enters the root (intake.py, results.check_run): another format, a
    member that is no regular file or folder or leaves its run folder, an archive beyond the bounds, or a run
    whose files fail their schemas (a start in the future among them) refuses the whole archive, and nothing is
    written. An imported run is never one that runs here: a `running` manifest is marked `interrupted`, and
    what its host says it checked is dropped (this host checks those cell files itself)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        sweep_staging(root)  # what a killed import left
        staging = root / staging_name("import")
        staging.mkdir()
    except OSError as exc:
        raise BnMatrixError(f"--results {root}: cannot write there: {exc.strerror}") from None
    try:
        _, folders = extract_archive(archive_path, staging, ARCHIVE_INDEX, ARCHIVE_SCHEMA)
        new = [f for f in folders if (staging / f / "manifest.json").is_file() and not os.path.lexists(root / f)]
        for folder in new:
            try:
                manifest = check_run(staging / folder).manifest
            except BnMatrixError as exc:
                raise BnMatrixError(f"{archive_path}: {str(exc).replace(str(staging) + '/', '')} (nothing was "
                                    "imported)") from None
            manifest.checked = None  # an archive cannot vouch for its cell files: this host checks them
            if manifest.status is RunStatus.RUNNING:
                manifest.status, manifest.note = RunStatus.INTERRUPTED, "imported while it was running on its own host"
            write_json(staging / folder / "manifest.json", manifest.to_dict())
        added = []
        for folder in new:
            try:
                (staging / folder).rename(root / folder)
                added.append(folder)
            except OSError as exc:  # another import took it first: it holds that run already
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        return added
    except OSError as exc:
        raise BnMatrixError(f"{archive_path}: cannot import into {root}: {exc.strerror or exc} (nothing was "
                            "imported)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

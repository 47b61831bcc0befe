"""A run being written: its manifest, cell files, logs, kept scenario code, `latest`, the runs killed before it
(closed here), and the reuse of unchanged results from earlier runs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bnmatrix.config import Scenario, file_digests
from bnmatrix.errors import BnMatrixError, Cancelled
from bnmatrix.intake import RUN_ID, check, copy_tree, start_ticks, sweep_staging
from bnmatrix.plan import Cell, inputs_hash
from bnmatrix.store.files import now, read_json_object, schema_digest, vouch, write_json
from bnmatrix.store.reader import DIED, check_results_root, checked_cell, recorded_check, runs_in
from bnmatrix.store.records import CellResult, Manifest, RunKind, RunStatus, ScenarioResult
from bnmatrix.store.searches import BISECT_FILE, BISECT_SCHEMA, Conclusion
from bnmatrix.verdict import CellStatus


def new_run_id() -> str:
    """A run id that sorts by the second it started and does not collide within a host (runs that start within one
    second are ordered by their manifests' `started`, which carries milliseconds)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class RunStore:
    """A run directory being written: results/<run-id>/{manifest.json, cells/, logs/, scenarios/}.

    `latest` points at the newest run that finished with at least one cell; reuse takes each cell's
    newest result from any run in the root, so an interrupted or concurrent run never hides one.
    """

    def __init__(self, root: Path, run_id: str, manifest: dict[str, Any], kind: RunKind = RunKind.RUN):
        """`manifest`: what the command records of itself (Manifest's fields: matrix, matrix_hash, backend,
        bnmatrix_version, selection, cells, bisect)."""
        check_results_root(root)
        self.root = root
        self.run_id = run_id
        self.directory = root / run_id
        try:
            root.mkdir(parents=True, exist_ok=True)
            sweep_staging(root)  # what a killed import left
            self._adopt_real_latest()
            earlier = runs_in(root)
            self.dead_runs = _close_dead(earlier)  # runs found killed: what they started may still run
            (self.directory / "cells").mkdir(parents=True)
        except FileExistsError:
            raise BnMatrixError(f"--results {root}: run {run_id} exists already") from None
        except OSError as exc:
            raise BnMatrixError(f"--results {root}: cannot create the run directory: {exc.strerror}") from None
        finished = [d for d, m in earlier if m.status in (RunStatus.COMPLETE, RunStatus.INTERRUPTED)
                    and m.kind is RunKind.RUN and m.written > 0]
        self.previous = finished[-1].resolve() if finished else None
        self._earlier = earlier
        self._read: dict[Path, dict[str, Any] | None] = {}  # earlier cell files, each read and checked once
        self.written = 0
        self.finished = False  # once closed, a cell that ends late (a stop's straggler) is never written
        self.measured = 0  # cells written that ran their scenarios (not: not run here, failed to build)
        self._checked_cells: dict[str, dict[str, str]] = {}  # cell id -> the checked file it wrote: SHA-256, status
        self._kept: dict[Path, str] = {}  # scenario folder -> its copy in code/ (keep_code)
        self._lock = threading.Lock()
        self.manifest = Manifest(
            run_id=self.run_id, kind=kind, status=RunStatus.RUNNING, started=now(),
            host={"hostname": socket.gethostname(), "platform": platform.platform(),
                  "python": platform.python_version()},
            process={"hostname": socket.gethostname(), "pid": os.getpid(), "started_ticks": start_ticks(os.getpid())},
            previous_run=self.previous.name if self.previous else None, **manifest)
        write_json(self.directory / "manifest.json", self.manifest.to_dict())

    def _adopt_real_latest(self) -> None:
        """A `latest` that is a real folder (an artifact download, `cp -rL`) becomes a run of its own."""
        latest = self.root / "latest"
        if latest.is_symlink() or not latest.is_dir():
            return
        run_id = read_json_object(latest / "manifest.json").get("run_id")  # a damaged one: a copy of its own
        target = self.root / run_id if isinstance(run_id, str) and RUN_ID.fullmatch(run_id) else None
        if target is None or target.exists():
            target = self.root / f"latest-copy-{secrets.token_hex(3)}"
        latest.rename(target)

    def _point_latest(self) -> None:
        link = self.root / "latest"
        temporary = self.root / f".latest.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(self.run_id)
        os.replace(temporary, link)

    def keep_code(self, cell: Cell, catalog: dict[str, Scenario], directories: tuple[Path, ...]) -> dict[str, Any]:
        """Copy the scenario folders the cell runs from into the run, once each, as code/<digest of the folder's
        files>: what a reproduce command runs without bnmatrix; the cell's `code` record of them."""
        with self._lock:
            for directory in {directories[0], *(catalog[name].root for name in cell.scenarios)} - set(self._kept):
                files = file_digests(directory)
                digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
                folder = self.directory / "code" / digest[:16]
                if not folder.is_dir():
                    staging = folder.with_name(f".{folder.name}.tmp")
                    shutil.rmtree(staging, ignore_errors=True)
                    for name in files:
                        (staging / name).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(directory / name, staging / name)
                    staging.mkdir(parents=True, exist_ok=True)
                    staging.rename(folder)
                self._kept[directory] = folder.name
        return {"helper": self._kept[directories[0]],
                "scenarios": {name: self._kept[catalog[name].root] for name in cell.scenarios}}

    def save_scenarios(self, scenarios: list[Scenario]) -> None:
        """The code and notes of the run's scenarios, so that its report shows exactly what ran."""
        for scenario in scenarios:
            target = self.directory / "scenarios" / scenario.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scenario.script, target / "scenario.py")
            write_json(target / "notes.json", scenario.notes)

    def log_path(self, cell_id: str, name: str) -> Path:
        path = self.directory / "logs" / cell_id / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.directory))

    def _earlier_results(self, cell_id: str, ran_only: bool = False) -> Iterator[tuple[Path, CellResult]]:
        """(run directory, result) of this cell in every earlier run of the root, newest first; `ran_only`: only
        results of cells that ran (a run's manifest says which, so that a GPU cell never run on this host does
        not cost a file read per kept run)."""
        for directory, manifest in reversed(self._earlier):
            recorded = recorded_check(manifest, cell_id)
            if ran_only and recorded is not None and recorded.get("status") != CellStatus.RAN.value:
                continue
            path = directory / "cells" / f"{cell_id}.json"
            if path not in self._read:
                self._read[path] = checked_cell(path, recorded)
            data = self._read[path]
            if data is not None:
                yield directory, CellResult.from_dict(data)  # a fresh object each time: callers change it

    def previous_duration(self, cell_id: str) -> float | None:
        """How long this cell took in the newest earlier run of the root that has it (a reused result keeps the
        time of the run that made it; a cell this host cannot serve takes none): what an ETA rests on."""
        return next((r.duration_s for _, r in self._earlier_results(cell_id)), None)

    def previous_scenario_durations(self, cell_id: str) -> dict[str, float]:
        """How long each scenario of this cell took in the newest earlier run of the root where the cell ran."""
        return next(({name: s.duration_s for name, s in r.scenarios.items() if s.duration_s is not None}
                     for _, r in self._earlier_results(cell_id, ran_only=True) if r.scenarios), {})

    def reusable(self, cell_id: str, inputs_hash: str, backend: str) -> CellResult | None:
        """The newest earlier result of this cell, in any run of the root, that ran with the same inputs and
        backend (its logs copied); None when there is none."""
        for directory, result in self._earlier_results(cell_id, ran_only=True):
            if result.status is not CellStatus.RAN or result.inputs_hash != inputs_hash or result.backend != backend:
                continue
            logs = directory / "logs" / cell_id
            if logs.is_dir():  # hard links where the file system allows: logs are never written to again
                try:
                    copy_tree(logs, self.directory / "logs" / cell_id, _link)
                except BnMatrixError:  # a link or a device among its logs: not a result to take as it is
                    continue
            result.reused_from = result.reused_from or directory.name
            return result
        return None

    def reusable_scenarios(self, cell: Cell, hashes: dict[str, str], sources: dict[str, str],
                           backend: str) -> dict[str, tuple[ScenarioResult, CellResult, Path]]:
        """For each scenario of `hashes` (its name and what decides its outcome, plan.scenario_inputs_hash), its
        newest earlier result in any run of the root with those very inputs on this backend, and the cell result
        holding it (its run_id set), and the run folder that holds that. A result stored before bnmatrix recorded
        each scenario's inputs counts when nothing the cell depends on has changed since (the same definition and
        scenario code)."""
        wanted = {k: v for k, v in cell.describe().items() if k not in ("scenarios", "expect")}
        found: dict[str, tuple[ScenarioResult, CellResult, Path]] = {}
        for directory, result in self._earlier_results(cell.id, ran_only=True):
            if result.status is not CellStatus.RAN or result.backend != backend:
                continue
            stored = result.cell.describe()
            unchanged = ({k: v for k, v in stored.items() if k not in ("scenarios", "expect")} == wanted
                         and result.inputs_hash == inputs_hash(stored, sources))
            for name, digest in hashes.items():
                scenario = result.scenarios.get(name)
                if name in found or scenario is None:
                    continue
                if (scenario.inputs_hash == digest) if scenario.inputs_hash else unchanged:
                    result.run_id = result.run_id or directory.name
                    found[name] = (scenario, result, directory)
            if len(found) == len(hashes):
                break
        return found

    def link_log(self, cell_id: str, name: str, directory: Path) -> None:
        """A log of another run of the root (its folder), in this run too (a hard link: logs are never written
        to again)."""
        source = directory / "logs" / cell_id / f"{name}.log"
        if source.is_file() and not source.is_symlink():
            _link(str(source), str(self.log_path(cell_id, name)))

    def write_searches(self, searches: list[Conclusion]) -> None:
        """The run's bisect conclusions (written again after every step: an interrupted bisect keeps them)."""
        write_json(self.directory / BISECT_FILE, {"schema": BISECT_SCHEMA, "run_id": self.run_id,
                                                  "searches": [s.to_dict() for s in searches]})

    def write_cell(self, result: CellResult) -> None:
        if self.finished:
            raise Cancelled
        result.run_id = result.run_id or self.run_id  # the run that produced it (a reused one keeps its own)
        data = result.to_dict()
        # A reused result was checked when it was read, and its own run keeps it safe on disk.
        if not result.reused_from:
            check(data, "cell", f"cell {result.id}")
        digest = write_json(self.directory / "cells" / f"{result.id}.json", data, durable=not result.reused_from)
        self._checked_cells[result.id] = {"sha256": digest, "status": data["status"]}
        self.written += 1
        self.measured += result.status is CellStatus.RAN

    def finish(self, status: RunStatus) -> None:
        """Close the run; `latest` moves to it only when it measured something: a cell that ran."""
        self.finished = True
        checked: dict[str, Any] = {"schema": schema_digest(), "host": socket.gethostname(),
                                   "cells": dict(sorted(self._checked_cells.items()))}
        self.manifest.status, self.manifest.finished, self.manifest.cells_written = status, now(), self.written
        self.manifest.checked = {**checked, "mac": vouch(checked)}
        write_json(self.directory / "manifest.json", self.manifest.to_dict())
        if self.measured and self.manifest.kind is RunKind.RUN:  # a bisect's few cells are no matrix to show
            self._point_latest()


def _close_dead(runs: list[tuple[Path, Manifest]]) -> list[str]:
    """Mark on disk the runs that runs_in found killed while they ran, and remove the files they were writing
    when killed; their folders' names."""
    closed = []
    for directory, manifest in runs:
        path = directory / "manifest.json"
        if manifest.note == DIED and read_json_object(path).get("status") == RunStatus.RUNNING.value:
            write_json(path, manifest.to_dict())
            for half_written in [*directory.glob(".*.tmp"), *directory.glob("cells/.*.tmp")]:
                half_written.unlink(missing_ok=True)
            closed.append(directory.name)
    return closed


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)

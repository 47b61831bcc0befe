"""The results store: one JSON file per cell in a run directory, written atomically, a run
manifest, `results/latest`, reuse of unchanged cells from the previous run, and loading with
clear errors."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
from packaging.version import Version

from bnmatrix.config import PACKAGE_DIR, Scenario
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import Cell, inputs_hash
from bnmatrix.verdict import CellStatus, Status

CELL_SCHEMA = "bnmatrix.cell/1"
RUN_SCHEMA = "bnmatrix.run/1"
BISECT_SCHEMA = "bnmatrix.bisect/1"
BISECT_FILE = "bisect.json"  # a run's bisect conclusions (bnmatrix bisect), beside its manifest


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()  # read once: os.umask can only be read by setting it


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # two runs within a second keep their order


def write_json(path: Path, data: Any, durable: bool = True) -> str:
    """Write atomically: a reader sees the old file or the new one, never half of one; `durable`: on disk
    before the rename, so that even a power cut leaves one of the two. Returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600: results are for colleagues and web servers too
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return hashlib.sha256(content).hexdigest()


@functools.cache
def _schema_digest() -> str:
    """What a run's list of checked cell files is valid for: a changed schema trusts none of them."""
    return hashlib.sha256((PACKAGE_DIR / "result.schema.json").read_bytes()).hexdigest()


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((PACKAGE_DIR / "result.schema.json").read_text(encoding="utf-8"))
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        """The schema with each (non-recursive) "$ref": "#/$defs/X" replaced by X: twice as fast to check."""
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        rest = {key: inline(value) for key, value in node.items() if key != "$ref"}
        if "$ref" in node:
            return {**inline(definitions[node["$ref"].removeprefix("#/$defs/")]), **rest}
        return rest

    return jsonschema.Draft202012Validator(inline(schema))


def check_cell_result(data: Any, origin: str) -> dict[str, Any]:
    """`data` if it is a valid cell result; else BnMatrixError naming `origin` and the field."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BnMatrixError(f"{origin}: {where}: {error.message}; expected a {CELL_SCHEMA} result")
    return data  # type: ignore[no-any-return]


@dataclass(kw_only=True)
class ScenarioResult:
    """One scenario of one cell as the host judged it: the verdict and the numbers behind it."""

    scenario: str
    status: Status
    reason: str | None
    device: str
    steps: int
    momentum: float | None = None
    tf_version: str | None = None
    keras_version: str | None = None
    python: str | None = None
    devices_seen: list[str] | None = None
    build_info: dict[str, str] = field(default_factory=dict)
    # The judged layer's numbers (the first layer with data); every layer's are in `layers`.
    judged_layer: str | None = None
    moving_mean: float | None = None
    moving_variance: float | None = None
    expected_moving_mean: float | None = None
    expected_moving_variance: float | None = None
    effective_updates: float | None = None
    effective_updates_variance: float | None = None
    variance_correction: str | None = None
    forward_statistics: str | None = None
    batch_mean: float | None = None
    batch_variance: float | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    update_ops: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    duration_s: float | None = None
    log: str | None = None
    log_tail: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        """From a stored result (schema-checked); fields of older results that no longer exist are dropped."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "details" in data and "extra" not in data:  # bnmatrix.scenario/1 results called it details
            values["extra"] = data["details"] or {}
        return cls(**{**values, "status": Status(data["status"])})

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "status": self.status.value}


@dataclass(kw_only=True)
class CellResult:
    """One cell of one run: how it went, its environment, and each scenario's result."""

    cell: dict[str, Any]  # the cell's definition (plan.Cell.describe())
    status: CellStatus
    reason: str | None
    backend: str
    inputs_hash: str
    started: str
    duration_s: float = 0.0
    reused_from: str | None = None
    run_id: str | None = None
    environment: dict[str, Any] | None = None
    setup_log: str | None = None
    setup_log_tail: str | None = None
    scenarios: dict[str, ScenarioResult] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.cell["id"])

    @property
    def own_status(self) -> Status:
        """What the matrix shows for a scenario the cell holds no result of: the cell's own outcome."""
        return {CellStatus.NOT_RUN: Status.NOT_RUN, CellStatus.BUILD_ERROR: Status.BUILD_ERROR}.get(
            self.status, Status.ERROR)

    def entry_status(self, scenario: str) -> Status:
        """What the matrix shows for `scenario`: its own status, or the cell's when it did not run."""
        return self.scenarios[scenario].status if scenario in self.scenarios else self.own_status

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "status": CellStatus(data["status"]),
                      "scenarios": {k: ScenarioResult.from_dict(v) for k, v in data["scenarios"].items()}})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CELL_SCHEMA, **{f.name: getattr(self, f.name) for f in fields(self)},
                "status": self.status.value, "scenarios": {k: v.to_dict() for k, v in self.scenarios.items()}}


@dataclass(frozen=True)
class Run:
    directory: Path
    manifest: dict[str, Any]
    cells: list[CellResult]

    @property
    def id(self) -> str:
        return str(self.manifest["run_id"])

    @property
    def kind(self) -> str:
        """"run" (bnmatrix run, merge) or "bisect" (its cells are evidence, not matrix rows)."""
        return str(self.manifest.get("kind", "run"))

    @property
    def searches(self) -> list[dict[str, Any]]:
        """The bisect conclusions stored with this run (none for a plain run)."""
        return read_searches(self.directory)


def search_key(search: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a bisect search: a rerun of the same search replaces its conclusion."""
    return (search.get("scenario"), search.get("device"), search.get("variant"), search.get("good", {}).get("version"),
            search.get("bad", {}).get("version"))


def change_span(search: dict[str, Any]) -> tuple[Any, ...]:
    """(scenario, device, variant, older version, newer version): the change a search looked at, whichever
    way round --good and --bad were given; what a change point of a run is matched with."""
    ends = sorted((search["good"]["version"], search["bad"]["version"]), key=Version)
    return (search["scenario"], search["device"], search.get("variant"), *ends)


def latest_searches(runs: Iterable[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The newest conclusion of every bisect search in these runs ((directory, manifest) pairs), each with the
    id of the run that holds it."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for directory, manifest in runs:
        for search in read_searches(directory):
            key = search_key(search)
            if key not in found or str(search.get("updated")) >= str(found[key].get("updated")):
                found[key] = {**search, "run_id": str(manifest.get("run_id") or directory.name)}
    return list(found.values())


def read_searches(directory: Path) -> list[dict[str, Any]]:
    data = read_json_object(directory / BISECT_FILE)
    searches = data.get("searches") if data.get("schema") == BISECT_SCHEMA else None
    return [s for s in searches if isinstance(s, dict)] if isinstance(searches, list) else []


def resolve_run_dir(path: Path) -> Path:
    """A run directory, given it or a results root holding `latest`."""
    if (path / "manifest.json").is_file():
        return path.resolve()
    if (path / "latest" / "manifest.json").is_file():
        return (path / "latest").resolve()
    if not path.exists():
        raise BnMatrixError(f"{path}: does not exist; expected a run directory or a results root")
    raise BnMatrixError(f"{path}: no run here (expected manifest.json, or latest/manifest.json in a results "
                        "root); run 'bnmatrix run' first")


def load_run(path: Path) -> Run:
    directory = resolve_run_dir(path)
    manifest_path = directory / "manifest.json"
    manifest = _read_json(manifest_path)
    found = manifest.get("schema") if isinstance(manifest, dict) else manifest
    if found != RUN_SCHEMA:
        raise BnMatrixError(f"{manifest_path}: schema: found {found!r}, expected {RUN_SCHEMA!r}")
    cells = [read_cell(p) for p in sorted((directory / "cells").glob("*.json"))]
    return Run(directory, manifest, cells)


def read_cell(path: Path) -> CellResult:
    """A stored cell result; BnMatrixError naming the file and the field when it is damaged."""
    return CellResult.from_dict(check_cell_result(_read_json(path), str(path)))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BnMatrixError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except OSError as exc:
        raise BnMatrixError(f"{path}: cannot read: {exc.strerror}") from None


RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")


def new_run_id() -> str:
    """A run id that sorts by the second it started and does not collide within a host (runs that start within one
    second are ordered by their manifests' `started`, which carries milliseconds)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


SYSTEM_ROOTS = {Path(p) for p in ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
                                    "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var")}


def check_results_root(root: Path) -> None:
    """Refuse a results root that is a system folder or the home folder itself (a run writes and moves
    things there)."""
    resolved = root.expanduser().resolve()
    if resolved in SYSTEM_ROOTS or resolved == Path.home().resolve():
        raise BnMatrixError(f"--results {root}: {resolved} is a system or home folder; expected a folder of its own "
                            "for results, e.g. --results results")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(manifest: dict[str, Any]) -> bool:
    """Whether the process that wrote a `running` manifest still runs (on this host; elsewhere: assume so)."""
    process = manifest.get("process")
    if not isinstance(process, dict) or not isinstance(process.get("pid"), int):
        return False  # written before runs recorded their process: nobody is finishing it
    if process.get("hostname") != socket.gethostname():
        return True  # another host's run: not ours to judge
    if not process_alive(process["pid"]):
        return False
    started = process.get("started_ticks")
    return started is None or started == _start_ticks(process["pid"])


def _start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot): tells a live pid from a reused one."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def runs_in(root: Path, newly_dead: list[str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, manifest) of every run in a results root, oldest first (by start); runs whose process
    died while they ran are marked `interrupted` here (and their ids added to `newly_dead`)."""
    found = []
    for manifest_path in sorted(root.glob("*/manifest.json")):
        directory = manifest_path.parent
        if directory.name == "latest" or directory.name.startswith("."):
            continue
        manifest = read_json_object(manifest_path)
        if manifest.get("schema") != RUN_SCHEMA:
            continue
        if manifest.get("status") == "running" and not _alive(manifest):
            manifest.update(status="interrupted", finished=manifest.get("finished") or now(),
                            note="its process ended without finishing the run")
            write_json(manifest_path, manifest)
            if newly_dead is not None:
                newly_dead.append(directory.name)
        found.append((directory, manifest))
    return sorted(found, key=lambda item: (str(item[1].get("started") or ""), item[0].name))


class RunStore:
    """A run directory being written: results/<run-id>/{manifest.json, cells/, logs/, scenarios/}.

    `latest` points at the newest run that finished with at least one cell; reuse takes each cell's
    newest result from any run in the root, so an interrupted or concurrent run never hides one.
    """

    def __init__(self, root: Path, run_id: str, manifest: dict[str, Any], kind: str = "run"):
        check_results_root(root)
        self.root = root
        self.run_id = run_id
        self.directory = root / run_id
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._adopt_real_latest()
            self.dead_runs: list[str] = []  # runs found killed: what they started may still run
            earlier = runs_in(root, self.dead_runs)
            (self.directory / "cells").mkdir(parents=True)
        except FileExistsError:
            raise BnMatrixError(f"--results {root}: run {run_id} exists already") from None
        except OSError as exc:
            raise BnMatrixError(f"--results {root}: cannot create the run directory: {exc.strerror}") from None
        finished = [d for d, m in earlier if m.get("status") in ("complete", "interrupted")
                    and m.get("kind", "run") == "run" and m.get("cells_written", len(m.get("cells") or [])) > 0]
        self.previous = finished[-1].resolve() if finished else None
        self._earlier = earlier
        self._read: dict[Path, dict[str, Any] | None] = {}  # earlier cell files, each read and checked once
        self.written = 0
        self._checked_cells: dict[str, dict[str, str]] = {}  # cell id -> the checked file it wrote: SHA-256, status
        self.manifest = {
            "schema": RUN_SCHEMA,
            "run_id": self.run_id,
            "kind": kind,
            "status": "running",
            "started": now(),
            "finished": None,
            "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                     "python": platform.python_version()},
            "process": {"hostname": socket.gethostname(), "pid": os.getpid(),
                        "started_ticks": _start_ticks(os.getpid())},
            "previous_run": self.previous.name if self.previous else None,
            **manifest,
        }
        write_json(self.directory / "manifest.json", self.manifest)

    def _adopt_real_latest(self) -> None:
        """A `latest` that is a real folder (an artifact download, `cp -rL`) becomes a run of its own."""
        latest = self.root / "latest"
        if latest.is_symlink() or not latest.is_dir():
            return
        run_id = read_json_object(latest / "manifest.json").get("run_id")
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
            recorded = _recorded(manifest, cell_id)
            if ran_only and recorded is not None and recorded.get("status") != CellStatus.RAN.value:
                continue
            path = directory / "cells" / f"{cell_id}.json"
            if path not in self._read:
                self._read[path] = _checked(path, recorded)
            data = self._read[path]
            if data is not None:
                yield directory, CellResult.from_dict(data)  # a fresh object each time: callers change it

    def previous_duration(self, cell_id: str) -> float | None:
        """How long this cell took in the newest earlier run of the root that has it (a reused result keeps the
        time of the run that made it; a cell this host cannot serve takes none): what an ETA rests on."""
        return next((r.duration_s for _, r in self._earlier_results(cell_id)), None)

    def reusable(self, cell_id: str, inputs_hash: str, backend: str) -> CellResult | None:
        """The newest earlier result of this cell, in any run of the root, that ran with the same inputs and
        backend (its logs copied); None when there is none."""
        for directory, result in self._earlier_results(cell_id, ran_only=True):
            if result.status is not CellStatus.RAN or result.inputs_hash != inputs_hash or result.backend != backend:
                continue
            logs = directory / "logs" / cell_id
            if logs.is_dir():  # hard links where the file system allows: logs are never written to again
                shutil.copytree(logs, self.directory / "logs" / cell_id, dirs_exist_ok=True, copy_function=_link)
            result.reused_from = result.reused_from or directory.name
            return result
        return None

    def reusable_scenario(self, cell: Cell, scenario: str, sources: dict[str, str],
                          backend: str) -> CellResult | None:
        """The newest earlier result of `cell` (in any run of the root, whatever scenarios it ran) that holds
        `scenario` and ran the same definition with the same scenario code on the same backend: bisect's reuse,
        one scenario at a time."""
        wanted = {k: v for k, v in cell.describe().items() if k not in ("scenarios", "expect")}
        for directory, result in self._earlier_results(cell.id, ran_only=True):
            definition = {k: v for k, v in result.cell.items() if k not in ("scenarios", "expect")}
            if (result.status is CellStatus.RAN and scenario in result.scenarios and result.backend == backend
                    and definition == wanted and result.inputs_hash == inputs_hash(result.cell, sources)):
                result.run_id = result.run_id or directory.name
                return result
        return None

    def write_searches(self, searches: list[dict[str, Any]]) -> None:
        """The run's bisect conclusions (written again after every step: an interrupted bisect keeps them)."""
        write_json(self.directory / BISECT_FILE, {"schema": BISECT_SCHEMA, "run_id": self.run_id,
                                                  "searches": searches})

    def write_cell(self, result: CellResult) -> None:
        result.run_id = result.run_id or self.run_id  # the run that produced it (a reused one keeps its own)
        data = result.to_dict()
        # A reused result was checked when it was read, and its own run keeps it safe on disk.
        if not result.reused_from:
            check_cell_result(data, f"cell {result.id}")
        digest = write_json(self.directory / "cells" / f"{result.id}.json", data, durable=not result.reused_from)
        self._checked_cells[result.id] = {"sha256": digest, "status": data["status"]}
        self.written += 1

    def finish(self, status: str) -> None:
        """Close the run; `latest` moves to it only when it holds at least one cell."""
        self.manifest.update(status=status, finished=now(), cells_written=self.written,
                             checked={"schema": _schema_digest(), "cells": dict(sorted(self._checked_cells.items()))})
        write_json(self.directory / "manifest.json", self.manifest)
        if self.written and self.manifest["kind"] == "run":  # a bisect's few cells are no matrix to show
            self._point_latest()


def _recorded(manifest: dict[str, Any], cell_id: str) -> dict[str, Any] | None:
    """What a run's manifest records of a cell file it wrote and checked (its SHA-256 and status), if it was
    checked under this very schema."""
    checked = manifest.get("checked")
    if not isinstance(checked, dict) or checked.get("schema") != _schema_digest():
        return None
    cells = checked.get("cells")
    entry = cells.get(cell_id) if isinstance(cells, dict) else None
    return entry if isinstance(entry, dict) else None


def _checked(path: Path, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """An earlier cell file, schema-checked unless its run recorded these very bytes as checked (a rerun of an
    unchanged matrix then reads its 74 files in milliseconds); None if absent or damaged (it is redone)."""
    try:
        content = path.read_bytes()
        data = json.loads(content)
        if recorded is None or recorded.get("sha256") != hashlib.sha256(content).hexdigest():
            check_cell_result(data, str(path))
        CellResult.from_dict(data)  # even a file vouched for must make a result
        return data  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, BnMatrixError):
        return None


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


def runs_under(path: Path) -> list[Path]:
    """Run directories at or below `path` (a run, a results root, or a folder of CI artifacts)."""
    if (path / "manifest.json").is_file():
        return [path.resolve()]
    if not path.is_dir():
        raise BnMatrixError(f"{path}: not a directory; expected a run directory or a folder holding runs")
    return sorted({p.parent.resolve() for p in path.rglob("manifest.json")})


def merge_runs(inputs: list[Path], out: Path) -> Path:
    """Merge runs into one run directory at `out`; idempotent and independent of the inputs' order.

    A cell found in several runs keeps its newest result; two different results for the same cell
    and the same run are an error naming both files.
    """
    runs = sorted({run for path in inputs for run in runs_under(path)} - {out.resolve()})
    if not runs:
        raise BnMatrixError(f"no run found in {', '.join(map(str, inputs))} (expected manifest.json files)")
    manifests: list[dict[str, Any]] = []
    chosen: dict[str, tuple[dict[str, Any], Path, Path]] = {}
    for directory in runs:
        manifest = _read_json(directory / "manifest.json")
        manifests.append(manifest)
        for path in sorted((directory / "cells").glob("*.json")):
            result = check_cell_result(_read_json(path), str(path))
            origin = result.get("run_id") or manifest["run_id"]
            result = {**result, "run_id": origin}
            key = result["cell"]["id"]
            if key in chosen:
                other, other_path, other_dir = chosen[key]
                other_origin = other.get("run_id")
                if origin == other_origin and result != other:
                    raise BnMatrixError(f"{other_path} and {path}: two different results for cell {key} "
                                        f"of run {origin}; expected one")
                if (result["started"], origin) <= (other["started"], other_origin):
                    continue
            chosen[key] = (result, path, directory)
    sources = sorted({source for m in manifests for source in (m.get("merged_from") or [m["run_id"]])})
    statuses = {m["status"] for m in manifests}

    def union(values: list[str], separator: str) -> str:
        """Joined distinct values; an earlier merge's joined value counts as its parts (idempotence)."""
        return separator.join(sorted({part for value in values for part in value.split(separator)}))

    merged = {
        "schema": RUN_SCHEMA,
        "run_id": "merged-" + hashlib.sha256(" ".join(sources).encode()).hexdigest()[:12],
        "status": "complete" if statuses == {"complete"} else "partial",
        "started": min(m["started"] for m in manifests),
        "finished": max((m.get("finished") or "" for m in manifests), default=None) or None,
        "backend": union([m["backend"] for m in manifests], "+"),
        "host": {"hostname": union([m["host"]["hostname"] for m in manifests], ", ")},
        "matrix": union([m["matrix"] for m in manifests], " "),
        "matrix_hash": union([m["matrix_hash"] for m in manifests], " "),
        "bnmatrix_version": union([m["bnmatrix_version"] for m in manifests], " "),
        "previous_run": None,
        "merged_from": sources,
        "cells": sorted(chosen),
    }
    if out.exists() and any(out.iterdir()) and "merged_from" not in read_json_object(out / "manifest.json"):
        raise BnMatrixError(f"--out {out}: exists and is not an earlier merge; expected a new or empty directory")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    for key, (result, _, directory) in sorted(chosen.items()):
        write_json(staging / "cells" / f"{key}.json", result)
        if (directory / "logs" / key).is_dir():
            shutil.copytree(directory / "logs" / key, staging / "logs" / key)
    for directory in runs:  # the scenarios' code and notes; a later run's copy wins
        if (directory / "scenarios").is_dir():
            shutil.copytree(directory / "scenarios", staging / "scenarios", dirs_exist_ok=True)
    searches: dict[tuple[Any, ...], dict[str, Any]] = {}
    for search in sorted((s for d in runs for s in read_searches(d)), key=lambda s: str(s.get("updated"))):
        searches[search_key(search)] = search  # the newest conclusion of each search
    if searches:
        write_json(staging / BISECT_FILE, {"schema": BISECT_SCHEMA, "run_id": merged["run_id"],
                                           "searches": [searches[k] for k in sorted(searches, key=str)]})
    if all(m.get("kind") == "bisect" for m in manifests):
        merged["kind"] = "bisect"
    write_json(staging / "manifest.json", merged)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    return out


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when the file is missing, damaged or holds no object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}

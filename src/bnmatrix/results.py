"""The results store: one JSON file per cell in a run directory, written atomically, a run
manifest, `results/latest`, reuse of unchanged cells from the previous run, and loading with
clear errors."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import hmac
import json
import math
import os
import platform
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packaging.version import Version

from bnmatrix.config import PACKAGE_DIR, Scenario, scenario_files
from bnmatrix.errors import BnMatrixError
from bnmatrix.host import process_alive
from bnmatrix.intake import (
    MAX_JSON_BYTES,
    MAX_MEMBER_BYTES,
    MAX_TEXT_BYTES,
    RUN_ID,
    UMASK,
    check,
    copy_tree,
    parse_json,
    parse_time,
    read_bytes,
    read_json,
    regular_file,
    run_folders,
    schema_problem,
    staged_folder,
    start_ticks,
    sweep_staging,
)
from bnmatrix.plan import Cell, inputs_hash
from bnmatrix.verdict import CellStatus, Status, judge

CELL_SCHEMA = "bnmatrix.cell/1"
RUN_SCHEMA = "bnmatrix.run/1"
BISECT_SCHEMA = "bnmatrix.bisect/1"
BISECT_FILE = "bisect.json"  # a run's bisect conclusions (bnmatrix bisect), beside its manifest


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # two runs within a second keep their order


class StoreError(BnMatrixError):
    """A file of the results could not be written (a full disk, a folder without permission): the run stops."""


def write_json(path: Path, data: Any, durable: bool = True) -> str:
    """Write atomically: a reader sees the old file or the new one, never half of one; `durable`: on disk
    before the rename, so that even a power cut leaves one of the two. Returns the file's SHA-256."""
    content = (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600: results are for colleagues and web servers too
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise
    return hashlib.sha256(content).hexdigest()


@functools.cache
def _host_key() -> bytes | None:
    """This host's secret (~/.config/bnmatrix/host-key, this user's only), with which a run vouches for the cell
    files it wrote and checked (`checked` in its manifest); None where it cannot be kept: then every earlier cell
    file is checked and judged again, as one from another host is."""
    path = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bnmatrix" / "host-key"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        key = read_bytes(path, 64, "host key")
        return key if len(key) == 32 and path.stat().st_uid == os.getuid() else None
    except (OSError, BnMatrixError):
        return None


def _vouch(record: dict[str, Any]) -> str | None:
    """The MAC of a `checked` record under this host's key: no other host, and nobody without the key, can make
    one that this host takes."""
    key = _host_key()
    if key is None:
        return None
    return hmac.new(key, json.dumps(record, sort_keys=True).encode(), hashlib.sha256).hexdigest()


@functools.cache
def _schema_digest() -> str:
    """What a run's list of checked cell files is valid for: a changed schema trusts none of them."""
    return hashlib.sha256((PACKAGE_DIR / "result.schema.json").read_bytes()).hexdigest()


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
    inputs_hash: str | None = None  # what decided this outcome (plan.scenario_inputs_hash): reuse one at a time
    reused_from: str | None = None  # the run that produced this result, where a later cell reused it

    def judge(self) -> None:
        """The host's verdict on this result's observations (`layers`, `steps`, `momentum`): its status, reason,
        each judged layer's verdict and the first judged layer's numbers. Numbers no verdict can be computed
        from (an overflow, a negative variance) make it an `error` that says so."""
        layers = {name: {k: v for k, v in layer.items() if k != "verdict"} for name, layer in self.layers.items()}
        try:
            status, reason, verdicts = judge({"steps": self.steps, "momentum": self.momentum, "layers": layers})
            numbers = [v for verdict in verdicts.values() for v in (*verdict.to_dict().values(), verdict.data.mean,
                                                                    verdict.data.variance_biased)]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ArithmeticError("a statistic overflows")
        except (ArithmeticError, ValueError, TypeError) as exc:
            self.status, self.reason = Status.ERROR, f"the observed numbers cannot be judged: {exc}"
            self.layers = layers
            for name in JUDGED_FIELDS:
                setattr(self, name, None)
            return
        self.status, self.reason = status, reason
        self.layers = {name: {**layer, "verdict": verdicts[name].to_dict()} if name in verdicts else layer
                       for name, layer in layers.items()}
        for name in JUDGED_FIELDS:
            setattr(self, name, None)
        if verdicts:
            layer_name, verdict = next(iter(verdicts.items()))
            self.judged_layer = layer_name
            self.moving_mean, self.moving_variance = layers[layer_name]["moving_mean"], layers[layer_name][
                "moving_variance"]
            self.expected_moving_mean = verdict.expected_moving_mean
            self.expected_moving_variance = verdict.expected_moving_variance
            self.effective_updates = verdict.effective_updates
            self.effective_updates_variance = verdict.effective_updates_variance
            self.variance_correction = verdict.variance_correction
            self.forward_statistics = verdict.forward_statistics
            self.batch_mean, self.batch_variance = verdict.data.mean, verdict.data.variance_biased

    @property
    def updates_text(self) -> str | None:
        """The effective updates of the mean against the steps, as the CLI and the summary show them: "100/100"
        for an `updated` verdict (the closed form for every step fits within tolerance, however few digits the
        estimate has when momentum**steps is tiny), "200.1/100" otherwise; None without numbers."""
        if self.effective_updates is None or self.moving_mean is None:
            return None
        if self.status is Status.UPDATED:
            return f"{self.steps}/{self.steps}"
        return f"{self.effective_updates:.4g}/{self.steps}"

    def rejudge(self) -> bool:
        """Judge a stored result again from its observations, here: a verdict is never taken on trust from a file.
        Returns whether the stored verdict stands (same status and facets); where it does not, the result now
        holds this host's verdict and its reason says what the file claimed."""
        if self.status not in (Status.UPDATED, Status.STALE, Status.WRONG):
            return True  # no numbers to judge: an unsupported API or an error says why there are none
        stored = (self.status, self.variance_correction, self.forward_statistics)
        problem = next((f"layers.{name}: {p}" for name, layer in self.layers.items()
                        if (p := schema_problem({k: v for k, v in layer.items() if k != "verdict"}
                                                if isinstance(layer, dict) else layer, "layer"))), None)
        if problem is None and not (isinstance(self.momentum, float | int) and 0 < self.momentum < 1):
            problem = f"momentum: {self.momentum!r}; expected a number between 0 and 1"
        if problem is None:
            self.judge()
        else:
            self.status, self.reason = Status.ERROR, f"the stored observations cannot be judged ({problem})"
            for name in JUDGED_FIELDS:
                setattr(self, name, None)
        if (self.status, self.variance_correction, self.forward_statistics) == stored:
            return True
        self.reason = f"{self.reason} [judged again from the stored numbers: the file said {stored[0].value}]"
        return False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        """From a stored result (schema-checked); bnmatrix.scenario/1 results called `extra` `details`."""
        values = _known(cls, data, "scenario result", legacy=("details",))
        if "details" in data and "extra" not in data:
            values["extra"] = data["details"] or {}
        return cls(**{**values, "status": Status(data["status"])})

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "status": self.status.value}


JUDGED_FIELDS = ("judged_layer", "moving_mean", "moving_variance", "expected_moving_mean", "expected_moving_variance",
                 "effective_updates", "effective_updates_variance", "variance_correction", "forward_statistics",
                 "batch_mean", "batch_variance")


def _known(record: type, data: dict[str, Any], what: str, legacy: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a record in `data`; a key that is neither one of them nor `schema` (nor a `legacy` name) is
    refused, never dropped (the schemas refuse them first: this guards a record that outgrew its schema)."""
    names = {f.name for f in fields(record)}
    unknown = sorted(set(data) - names - {"schema", *legacy})
    if unknown:
        raise BnMatrixError(f"{what}: unknown field {unknown[0]!r}; expected only {', '.join(sorted(names))}")
    return {k: v for k, v in data.items() if k in names}


@dataclass(kw_only=True)
class CellResult:
    """One cell of one run: how it went, its environment, and each scenario's result."""

    cell: Cell
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
    # the scenario code this run kept (RunStore.keep_code): {"helper": <folder>, "scenarios": {name: <folder>}}, each
    # a folder code/<folder> of the run's; None for a run that kept none (bnmatrix 0.1 and cells that did not run)
    code: dict[str, Any] | None = None
    scenarios: dict[str, ScenarioResult] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.cell.id)

    @property
    def own_status(self) -> Status:
        """What the matrix shows for a scenario the cell holds no result of: the cell's own outcome."""
        return {CellStatus.NOT_RUN: Status.NOT_RUN, CellStatus.BUILD_ERROR: Status.BUILD_ERROR}.get(
            self.status, Status.ERROR)

    def entry_status(self, scenario: str) -> Status:
        """What the matrix shows for `scenario`: its own status, or the cell's when it did not run."""
        return self.scenarios[scenario].status if scenario in self.scenarios else self.own_status

    def rejudge(self) -> bool:
        """Judge every scenario again from its stored numbers; whether every stored verdict stands. A scenario that
        trained another number of steps than the cell asked for has no verdict (as the runner says of a result
        line)."""
        stands = True
        for scenario in self.scenarios.values():
            if scenario.steps != self.cell.steps and scenario.status in (Status.UPDATED, Status.STALE,
                                                                            Status.WRONG):
                was = scenario.status.value
                scenario.status = Status.ERROR
                scenario.reason = (f"result refused: the scenario trained {scenario.steps} steps; the cell asked for "
                                   f"{self.cell.steps} [the file said {was}]")
                for name in JUDGED_FIELDS:
                    setattr(scenario, name, None)
                stands = False
            else:
                stands = scenario.rejudge() and stands
        return stands

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        values = _known(cls, data, "cell result")
        return cls(**{**values, "cell": Cell.from_record(data["cell"]), "status": CellStatus(data["status"]),
                      "scenarios": {k: ScenarioResult.from_dict(v) for k, v in data["scenarios"].items()}})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CELL_SCHEMA, **{f.name: getattr(self, f.name) for f in fields(self)},
                "cell": self.cell.describe(), "status": self.status.value,
                "scenarios": {k: v.to_dict() for k, v in self.scenarios.items()}}


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
            if key not in found or moment(search.get("updated")) >= moment(found[key].get("updated")):
                found[key] = {**search, "run_id": str(manifest.get("run_id") or directory.name)}
    return list(found.values())


def read_searches(directory: Path) -> list[dict[str, Any]]:
    """A run's bisect conclusions (none without a bisect.json); a damaged or forged file is a BnMatrixError."""
    path = directory / BISECT_FILE
    if not os.path.lexists(path):
        return []
    return list(read_json(path, "bisect")["searches"])


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
    """A run, every file checked (intake.py: regular files and folders only, nothing behind a link, each JSON file
    against its schema) and every verdict judged again from its numbers, but those of cell files this host wrote
    and checked itself (the manifest's `checked` record)."""
    directory = resolve_run_dir(path)
    for folder, subfolders, files in os.walk(directory):  # links are listed, never followed
        for name in [*subfolders, *files]:
            entry = Path(folder) / name
            if (entry.is_symlink() or not entry.is_dir()) and regular_file(entry, "file of a run").st_size > \
                    MAX_MEMBER_BYTES:
                raise BnMatrixError(f"{entry}: {entry.stat().st_size} bytes; expected at most {MAX_MEMBER_BYTES} "
                                    "for a file of a run (a log is at most 8 MiB and a tail)")
    manifest = read_json(directory / "manifest.json", "manifest")
    read_searches(directory)
    cells = [read_cell(p, _recorded(manifest, p.stem)) for p in sorted((directory / "cells").glob("*.json"))]
    return Run(directory, manifest, cells)


def read_cell(path: Path, recorded: dict[str, Any] | None = None) -> CellResult:
    """A stored cell result, its verdicts judged again (see ScenarioResult.rejudge) unless `recorded` (what its
    run recorded of the file it wrote) vouches for these very bytes; BnMatrixError naming the file and the field
    when it is damaged."""
    return _read_cell(path, recorded)[0]


def _read_cell(path: Path, recorded: dict[str, Any] | None) -> tuple[CellResult, bool]:
    """read_cell, and whether every verdict the file holds stands as stored."""
    content = read_bytes(path, MAX_JSON_BYTES, "cell result")
    if recorded is not None and recorded.get("sha256") == hashlib.sha256(content).hexdigest():
        return CellResult.from_dict(json.loads(content)), True
    data = check(parse_json(content, str(path)), "cell", str(path))
    if data["cell"]["id"] != path.stem:
        raise BnMatrixError(f"{path}: cell.id: found {data['cell']['id']!r}; expected {path.stem!r}, the file's name")
    cell = data["cell"]
    named = f"tf-{cell['tf']}-{cell['device']}" + (f"-{cell['variant']}" if cell["variant"] else "")
    if cell["id"] != named:
        raise BnMatrixError(f"{path}: cell.id: found {cell['id']!r}; expected {named!r}, from its tf, device and "
                            "variant")
    listed, held = data["cell"]["scenarios"], sorted(data["scenarios"])
    if held != (sorted(listed) if data["status"] == CellStatus.RAN.value else []):
        raise BnMatrixError(f"{path}: scenarios: found results of {', '.join(held) or 'none'}; expected "
                            + (f"one for each of cell.scenarios ({', '.join(listed)})" if data["status"] == "ran"
                               else f"none for a cell that did not run ({data['status']})"))
    result = CellResult.from_dict(data)
    return result, result.rejudge()


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


def _alive(manifest: dict[str, Any]) -> bool:
    """Whether the process that wrote a `running` manifest still runs (on this host; elsewhere: assume so)."""
    process = manifest.get("process")
    if not isinstance(process, dict) or not isinstance(process.get("pid"), int):
        return False  # written before runs recorded their process: nobody is finishing it
    if process.get("hostname") != socket.gethostname():
        return True  # another host's run: not ours to judge
    started = process.get("started_ticks")
    return process_alive(process["pid"], started if isinstance(started, int) else None)


def runs_in(root: Path, newly_dead: list[str] | None = None,
            refused: list[str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, manifest) of every run in a results root, oldest first (by start): real folders named like
    a run id whose manifest (and bisect.json) pass their schema; the others are left out, and why is added to
    `refused`. Runs whose process died while they ran are marked `interrupted` here (and their folders' names
    added to `newly_dead`)."""
    found = []
    for directory in run_folders(root):
        manifest_path = directory / "manifest.json"
        if not os.path.lexists(manifest_path):
            continue  # not a run, or one being created
        try:
            manifest = read_json(manifest_path, "manifest")
            read_searches(directory)
        except BnMatrixError as exc:
            if refused is not None:
                refused.append(str(exc))
            continue
        if manifest["status"] == "running" and not _alive(manifest):
            manifest.update(status="interrupted", finished=manifest.get("finished") or now(),
                            note="its process ended without finishing the run")
            if newly_dead is not None:  # a run that starts closes what died; a reader only sees it so
                write_json(manifest_path, manifest)
                for half_written in [*directory.glob(".*.tmp"), *directory.glob("cells/.*.tmp")]:  # killed mid-write
                    half_written.unlink(missing_ok=True)
                newly_dead.append(directory.name)
        found.append((directory, manifest))
    return sorted(found, key=lambda item: (moment(item[1]["started"]), item[0].name))


def moment(text: Any) -> datetime:
    """A stored time (ISO 8601, any zone) as a point in time, so that times in different zones order right; the
    earliest possible for one that is none."""
    parsed = parse_time(text) if isinstance(text, str) else None
    return parsed or datetime.min.replace(tzinfo=timezone.utc)


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
            sweep_staging(root)  # what a killed import left
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
        self.measured = 0  # cells written that ran their scenarios (not: not run here, failed to build)
        self._checked_cells: dict[str, dict[str, str]] = {}  # cell id -> the checked file it wrote: SHA-256, status
        self._kept: dict[Path, str] = {}  # scenario folder -> its copy in code/ (keep_code)
        self._lock = threading.Lock()
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
                        "started_ticks": start_ticks(os.getpid())},
            "previous_run": self.previous.name if self.previous else None,
            **manifest,
        }
        write_json(self.directory / "manifest.json", self.manifest)

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
                files = sorted(scenario_files(directory))
                digest = hashlib.sha256()
                for path in files:
                    digest.update(f"{path.relative_to(directory)}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\0"
                                  .encode())
                folder = self.directory / "code" / digest.hexdigest()[:16]
                if not folder.is_dir():
                    staging = folder.with_name(f".{folder.name}.tmp")
                    shutil.rmtree(staging, ignore_errors=True)
                    for path in files:
                        target = staging / path.relative_to(directory)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, target)
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

    def write_searches(self, searches: list[dict[str, Any]]) -> None:
        """The run's bisect conclusions (written again after every step: an interrupted bisect keeps them)."""
        write_json(self.directory / BISECT_FILE, {"schema": BISECT_SCHEMA, "run_id": self.run_id,
                                                  "searches": searches})

    def write_cell(self, result: CellResult) -> None:
        result.run_id = result.run_id or self.run_id  # the run that produced it (a reused one keeps its own)
        data = result.to_dict()
        # A reused result was checked when it was read, and its own run keeps it safe on disk.
        if not result.reused_from:
            check(data, "cell", f"cell {result.id}")
        digest = write_json(self.directory / "cells" / f"{result.id}.json", data, durable=not result.reused_from)
        self._checked_cells[result.id] = {"sha256": digest, "status": data["status"]}
        self.written += 1
        self.measured += result.status is CellStatus.RAN

    def finish(self, status: str) -> None:
        """Close the run; `latest` moves to it only when it measured something: a cell that ran."""
        checked: dict[str, Any] = {"schema": _schema_digest(), "host": socket.gethostname(),
                                   "cells": dict(sorted(self._checked_cells.items()))}
        self.manifest.update(status=status, finished=now(), cells_written=self.written,
                             checked={**checked, "mac": _vouch(checked)})
        write_json(self.directory / "manifest.json", self.manifest)
        if self.measured and self.manifest["kind"] == "run":  # a bisect's few cells are no matrix to show
            self._point_latest()


def _recorded(manifest: dict[str, Any], cell_id: str) -> dict[str, Any] | None:
    """What a run's manifest records of a cell file this host wrote and checked (its SHA-256 and status), if it
    was checked under this very schema; None for a file this host did not write (an imported or merged one)."""
    checked = manifest.get("checked")
    if not isinstance(checked, dict) or checked.get("schema") != _schema_digest():
        return None
    mac = _vouch({k: v for k, v in checked.items() if k != "mac"})
    if mac is None or not isinstance(checked.get("mac"), str) or not hmac.compare_digest(mac, checked["mac"]):
        return None  # written elsewhere, by an older bnmatrix, or forged
    cells = checked.get("cells")
    entry = cells.get(cell_id) if isinstance(cells, dict) else None
    return entry if isinstance(entry, dict) else None


def _checked(path: Path, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """An earlier cell file that may be reused: checked and judged again unless its run recorded these very bytes
    as checked here (a rerun of an unchanged matrix then reads its 74 files in milliseconds); None if absent,
    damaged, or holding a verdict its own numbers do not give (it is redone)."""
    try:
        result, stands = _read_cell(path, recorded)  # even a file vouched for must make a result
        return result.to_dict() if stands else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, BnMatrixError):
        return None


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


def runs_under(path: Path) -> list[Path]:
    """Run directories at or below `path` (a run, a results root, or a folder of CI artifacts); folders whose
    name starts with a dot (staging folders, a killed import's) and links are not searched."""
    if (path / "manifest.json").is_file():
        return [path.resolve()]
    if not path.is_dir():
        raise BnMatrixError(f"{path}: not a directory; expected a run directory or a folder holding runs")
    found = []
    for folder, subfolders, files in os.walk(path):  # links to folders are listed, never followed
        if "manifest.json" in files:
            found.append(Path(folder).resolve())
            subfolders.clear()  # a run holds no run
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return sorted(set(found))


def check_run(directory: Path) -> Run:
    """A run that is about to enter a results root (import, merge), every file checked: what load_run checks (regular
    files and folders only, the manifest, cell results and bisect conclusions against their schemas), and its
    scenario notes and kept scripts. BnMatrixError naming the first file that fails."""
    run = load_run(directory)
    for notes in sorted(directory.glob("scenarios/*/notes.json")):
        read_json(notes, "notes")
    for script in sorted(directory.glob("scenarios/*/scenario.py")):
        read_bytes(script, MAX_TEXT_BYTES, "scenario script")
    return run


COPY_FIELDS = ("reused_from", "code")  # what differs between a result and a later run's copy of it


def merge_runs(inputs: list[Path], out: Path) -> Path:
    """Merge runs into one run directory at `out`; idempotent and independent of the inputs' order. An earlier
    merge at `out` is one more input, so that merging into it loses nothing (nor what else it holds).

    A cell found in several runs keeps its newest result; two different results for the same cell
    and the same run are an error naming both files. `out` is replaced by rename (aside, in, delete):
    killed at any point, the earlier merge is still there, or is put back by the next command. Merges beside
    one --out take turns (a lock on its folder), so that two at once both end up in it.
    """
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(parent, os.O_RDONLY)
    except OSError as exc:
        raise BnMatrixError(f"--out {out}: cannot write there: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _merge(inputs, out)
    finally:
        os.close(lock)


def _merge(inputs: list[Path], out: Path) -> Path:
    sweep_staging(out.absolute().parent)  # what a killed merge left (an earlier merge it moved aside goes back)
    earlier = []
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BnMatrixError(f"--out {out}: is a {'link' if out.is_symlink() else 'file'}; expected a folder")
    if out.is_dir() and any(out.iterdir()):
        if "merged_from" not in read_json_object(out / "manifest.json"):
            raise BnMatrixError(f"--out {out}: exists and is not an earlier merge; expected a new or empty directory, "
                                "or an earlier merge to add to (nothing was written)")
        earlier = [out.resolve()]
    runs = sorted({run for path in inputs for run in runs_under(path)} | set(earlier))
    if not runs or runs == earlier:
        raise BnMatrixError(f"no run found in {', '.join(map(str, inputs))} (expected manifest.json files)")
    manifests: list[dict[str, Any]] = []
    chosen: dict[str, tuple[dict[str, Any], Path, Path]] = {}
    for directory in runs:
        run = check_run(directory)
        manifests.append(run.manifest)
        for cell in run.cells:
            path = directory / "cells" / f"{cell.id}.json"
            cell.run_id = origin = cell.run_id or run.id
            result = cell.to_dict()
            if cell.id in chosen:
                other, other_path, _ = chosen[cell.id]
                other_origin = other["run_id"]
                if origin == other_origin and _without(result, COPY_FIELDS) != _without(other, COPY_FIELDS):
                    raise BnMatrixError(f"{other_path} and {path}: two different results for cell {cell.id} "
                                        f"of run {origin}; expected one")
                if (moment(result["started"]), origin) <= (moment(other["started"]), other_origin):
                    continue
            chosen[cell.id] = (result, path, directory)
    sources = sorted({source for m in manifests for source in (m.get("merged_from") or [m["run_id"]])})
    statuses = {m["status"] for m in manifests}

    def union(key: str, separator: str) -> str:
        """Joined distinct values of a manifest field; an earlier merge's joined value counts as its parts."""
        values = [m.get(key) if key != "hostname" else (m.get("host") or {}).get("hostname") for m in manifests]
        return separator.join(sorted({part for value in values if isinstance(value, str)
                                      for part in value.split(separator) if part}))

    merged = {
        "schema": RUN_SCHEMA,
        "run_id": "merged-" + hashlib.sha256(" ".join(sources).encode()).hexdigest()[:12],
        "status": "complete" if statuses == {"complete"} else "partial",
        "started": min((m["started"] for m in manifests), key=moment),
        "finished": max((m["finished"] for m in manifests if m.get("finished")), key=moment, default=None),
        "backend": union("backend", "+"),
        "host": {"hostname": union("hostname", ", ")},
        "matrix": union("matrix", " "),
        "matrix_hash": union("matrix_hash", " "),
        "bnmatrix_version": union("bnmatrix_version", " "),
        "previous_run": None,
        "merged_from": sources,
        "cells": sorted(chosen),
    }
    with staged_folder(out, "merge", "nothing was replaced") as staging:
        for key, (result, _, directory) in sorted(chosen.items()):
            write_json(staging / "cells" / f"{key}.json", result)
            if (directory / "logs" / key).is_dir():
                copy_tree(directory / "logs" / key, staging / "logs" / key)
        for directory in runs:  # the scenarios' code and notes (a later run's copy wins), and the code kept to
            for folder in ("scenarios", "code"):  # reproduce them (by content: a name is always the same files)
                if (directory / folder).is_dir():
                    copy_tree(directory / folder, staging / folder)
        searches: dict[tuple[Any, ...], dict[str, Any]] = {}
        for search in sorted((s for d in runs for s in read_searches(d)), key=lambda s: str(s.get("updated"))):
            searches[search_key(search)] = search  # the newest conclusion of each search
        if searches:
            write_json(staging / BISECT_FILE, {"schema": BISECT_SCHEMA, "run_id": merged["run_id"],
                                               "searches": [searches[k] for k in sorted(searches, key=str)]})
        if all(m.get("kind") == "bisect" for m in manifests):
            merged["kind"] = "bisect"
        write_json(staging / "manifest.json", merged)
        if earlier:  # what else the earlier merge holds (a README someone put there) stays
            for place, _, names in os.walk(out):
                for name in names:
                    kept = Path(place) / name
                    if not os.path.lexists(staging / kept.relative_to(out)):
                        regular_file(kept, "file of an earlier merge")
                        (staging / kept.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(kept, staging / kept.relative_to(out))
    return out


def _without(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path` (bounded, finite); {} when the file is missing, damaged or holds no object."""
    try:
        data = read_json(path)
    except BnMatrixError:
        return {}
    return data if isinstance(data, dict) else {}

"""What a run stores, typed: a scenario's result (its numbers and the verdict judged from them), a cell's result,
and a run as read back."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bnmatrix.errors import BnMatrixError
from bnmatrix.intake import schema_problem
from bnmatrix.plan import Cell
from bnmatrix.store.searches import read_searches
from bnmatrix.verdict import CellStatus, Status, judge

CELL_SCHEMA = "bnmatrix.cell/1"


RUN_SCHEMA = "bnmatrix.run/1"


class RunStatus(enum.Enum):
    """A run's manifest `status`: running until it ends; complete, interrupted (stopped, or found killed), or
    partial (a merge of runs of which some did not complete)."""

    RUNNING = "running"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    PARTIAL = "partial"

    def __str__(self) -> str:
        return self.value


class RunKind(enum.Enum):
    """A run's manifest `kind`: a run of the matrix (or a merge of them), or a bisect (its cells are evidence)."""

    RUN = "run"
    BISECT = "bisect"

    def __str__(self) -> str:
        return self.value


@dataclass(kw_only=True)
class Manifest:
    """A run's manifest.json (bnmatrix.run/1): what ran, where, when, and how it ended."""

    run_id: str
    status: RunStatus
    started: str
    backend: str
    host: dict[str, Any]
    bnmatrix_version: str
    matrix_hash: str
    kind: RunKind = RunKind.RUN
    finished: str | None = None
    note: str | None = None  # why a run is interrupted without having stopped itself
    process: dict[str, Any] | None = None  # hostname, pid, started_ticks: who writes the run while it runs
    previous_run: str | None = None
    matrix: str | None = None
    selection: dict[str, Any] | None = None  # run's --select/--skip/--shard/--scenario/--force
    cells: list[str] | None = None
    cells_written: int | None = None
    checked: dict[str, Any] | None = None  # the cell files this host wrote and checked, vouched for (runstore)
    bisect: dict[str, Any] | None = None  # a bisect's question
    merged_from: list[str] | None = None  # a merge: the runs it holds
    cumulative: bool = False  # the report's view of a results root as one run (never stored)

    ALWAYS = ("finished", "previous_run")  # written even when empty, as runs always wrote them

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """From a manifest that passed its schema."""
        values = _known(cls, data, "run manifest")
        return cls(**{**values, "status": RunStatus(data["status"]), "kind": RunKind(data.get("kind", "run"))})

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        data = {k: v for k, v in values.items() if v is not None and v is not False or k in self.ALWAYS}
        return {"schema": RUN_SCHEMA, **data, "status": self.status.value, "kind": self.kind.value}

    @property
    def written(self) -> int:
        """How many cell files the run wrote (a run from before it counted them: the cells it listed)."""
        return self.cells_written if self.cells_written is not None else len(self.cells or [])


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
    manifest: Manifest
    cells: list[CellResult]

    @property
    def id(self) -> str:
        return self.manifest.run_id

    @property
    def kind(self) -> RunKind:
        return self.manifest.kind

    @property
    def status(self) -> RunStatus:
        return self.manifest.status

    @property
    def searches(self) -> list[dict[str, Any]]:
        """The bisect conclusions stored with this run (none for a plain run)."""
        return read_searches(self.directory)

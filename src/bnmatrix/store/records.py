"""What a run stores, typed: a scenario's result (its numbers and the verdict judged from them), a cell's result,
and a run as read back."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bnmatrix.intake import schema_problem
from bnmatrix.plan import Cell
from bnmatrix.store.files import known_fields
from bnmatrix.store.searches import Conclusion, read_searches
from bnmatrix.verdict import CellStatus, Finding, LayerVerdict, Status, judge

CELL_SCHEMA = "bnmatrix.cell/2"


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
        values = known_fields(cls, data, "run manifest")
        return cls(**{**values, "status": RunStatus(data["status"]), "kind": RunKind(data.get("kind", "run"))})

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        data = {k: v for k, v in values.items() if v is not None and v is not False or k in self.ALWAYS}
        return {"schema": RUN_SCHEMA, **data, "status": self.status.value, "kind": self.kind.value}

    @property
    def written(self) -> int:
        """How many cell files the run wrote (a run from before it counted them: the cells it listed)."""
        return self.cells_written if self.cells_written is not None else len(self.cells or [])


JUDGED = (Status.UPDATED, Status.STALE, Status.WRONG)  # the statuses a verdict from numbers gives


@dataclass(kw_only=True)
class Observed:
    """A scenario's numbers as it reported them: what the host judges, never changed by it."""

    momentum: float | None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # each layer's statistics and the data it saw
    update_ops: int | None = None
    steps_ran: int | None = None  # training steps that really ran, where the scenario counted them
    train_loss: float | None = None
    eval_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observed:
        return cls(**known_fields(cls, data, "scenario observations"))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class JudgedLayer:
    """The layer a scenario's verdict is shown by (its first judged one): what it read and the host's verdict."""

    name: str
    moving_mean: float
    moving_variance: float
    verdict: LayerVerdict


@dataclass(kw_only=True)
class ScenarioResult:
    """One scenario of one cell: what it reported (its numbers, the API it lacks, or its error) and the host's
    verdict, each held once: the verdict on every judged layer sits beside the observations, never copied."""

    scenario: str
    status: Status
    reason: str | None
    device: str
    steps: int
    tf_version: str | None = None
    keras_version: str | None = None
    python: str | None = None
    devices_seen: list[str] | None = None
    build_info: dict[str, str] = field(default_factory=dict)
    observed: Observed | None = None  # what its result line said; None without one (a crash, a timeout)
    verdicts: dict[str, LayerVerdict] = field(default_factory=dict)  # the host's, per judged layer, in layer order
    unsupported: dict[str, str] | None = None  # {"api", "message"}: what the pattern needs and this TF lacks
    error: dict[str, Any] | None = None  # {"type", "message", "traceback"}: why there are no numbers to judge
    duration_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # where its time went, as the scenario measured it
    launch: str | None = None  # how it was started: "zygote" (forked) or "fresh: <why>"; None before bnmatrix said
    log: str | None = None
    log_tail: str | None = None
    inputs_hash: str | None = None  # what decided this outcome (plan.scenario_inputs_hash): reuse one at a time
    reused_from: str | None = None  # the run that produced this result, where a later cell reused it

    @property
    def judged(self) -> JudgedLayer | None:
        """The first judged layer, whose numbers stand for the scenario's; None without a verdict from numbers."""
        if not self.verdicts or self.observed is None:
            return None
        name, verdict = next(iter(self.verdicts.items()))
        layer = self.observed.layers[name]
        return JudgedLayer(name, float(layer["moving_mean"]), float(layer["moving_variance"]), verdict)

    def judge(self) -> None:
        """The host's verdict on the observations (`layers`, `steps`, `momentum`): its status, reason and each
        judged layer's verdict. Numbers no verdict can be computed from (an overflow, a negative variance) make it
        an `error` that says so."""
        self.verdicts = {}
        observed = self.observed or Observed(momentum=None)
        try:
            status, reason, verdicts = judge({"steps": self.steps, "momentum": observed.momentum,
                                              "layers": observed.layers, "steps_ran": observed.steps_ran})
            numbers = [v for verdict in verdicts.values() for v in (*verdict.to_dict().values(), verdict.data.mean,
                                                                    verdict.data.variance_biased)]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ArithmeticError("a statistic overflows")
        except (ArithmeticError, ValueError, TypeError) as exc:
            self.status, self.reason = Status.ERROR, f"the observed numbers cannot be judged: {exc}"
            return
        self.status, self.reason, self.verdicts = status, reason, verdicts

    def refuse(self, reason: str) -> None:
        """No verdict, for `reason` (numbers that cannot count): an `error`, its observations kept."""
        self.status, self.reason, self.verdicts = Status.ERROR, reason, {}

    @property
    def updates_text(self) -> str | None:
        """The effective updates of the mean against the steps, as the CLI and the summary show them: "100/100"
        for an `updated` verdict (the closed form for every step fits within tolerance, however few digits the
        estimate has when momentum**steps is tiny), "200.1/100" otherwise; None without numbers."""
        judged = self.judged
        if judged is None or judged.verdict.effective_updates is None or not judged.verdict.counts_the_batch:
            return None  # no count of updates, or one of data the statistics do not follow
        if self.status is Status.UPDATED:
            return f"{self.steps}/{self.steps}"
        return f"{judged.verdict.effective_updates:.4g}/{self.steps}"

    def numbers(self) -> dict[str, Any]:
        """The scenario's NUMBERS flat, as results.json and a bisect's probes give them: the judged layer's
        statistics, verdict and batch mean (each None without a verdict), the update ops and losses."""
        judged = self.judged
        found = {**(self.observed.to_dict() if self.observed else {}), **({
            "moving_mean": judged.moving_mean, "moving_variance": judged.moving_variance,
            **judged.verdict.to_dict(), "batch_mean": judged.verdict.data.mean} if judged else {})}
        return {key: found.get(key) for key in NUMBERS}

    @property
    def finding(self) -> Finding:
        """The status and every facet of the verdict: what a change point compares."""
        judged, observed = self.judged, self.observed
        return Finding.of(self.status, judged.verdict if judged else None, self.steps,
                          observed.steps_ran if observed else None,
                          observed.layers[judged.name] if judged and observed else None)

    def rejudge(self) -> bool:
        """Judge a stored result again from its observations, here: a verdict is never taken on trust from a file.
        Returns whether the stored verdict stands (same status and facets); where it does not, the result now
        holds this host's verdict and its reason says what the file claimed."""
        if self.status not in JUDGED:
            return True  # no numbers to judge: an unsupported API or an error says why there are none
        stored = self.finding
        observed = self.observed
        problem = None if observed else "no observations"
        if observed is not None:
            problem = next((f"layers.{name}: {p}" for name, layer in observed.layers.items()
                            if (p := schema_problem(layer, "layer"))), None)
            if problem is None and not (isinstance(observed.momentum, float | int) and 0 <= observed.momentum < 1):
                problem = f"momentum: {observed.momentum!r}; expected a number from 0 up to 1"
        if problem is None:
            self.judge()
        else:
            self.refuse(f"the stored observations cannot be judged ({problem})")
        judged = self.finding
        if "follows" not in dict(stored.facets):  # a verdict stored before it said which data the statistics follow
            judged = Finding(judged.status, tuple(item for item in judged.facets if item[0] != "follows"),
                             judged.unobserved)
        if judged == stored:
            return True
        self.reason = f"{self.reason} [judged again from the stored numbers: the file said {stored.text}]"
        return False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        """From a stored result of a bnmatrix.cell/2 file (schema-checked)."""
        values = known_fields(cls, data, "scenario result")
        observed = Observed.from_dict(data["observed"]) if data.get("observed") is not None else None
        verdicts = _stored_verdicts(data.get("verdicts") or {}, observed.layers if observed else {})
        return cls(**{**values, "status": Status(data["status"]), "observed": observed, "verdicts": verdicts})

    @classmethod
    def from_first_format(cls, data: dict[str, Any]) -> ScenarioResult:
        """From a stored result of a bnmatrix.cell/1 file: flat, the first judged layer's numbers and verdict
        copied beside the observations, each layer's verdict inside it, an unsupported API as its `error`
        (bnmatrix.scenario/1 called `extra` `details`)."""
        known_fields(FIRST_FORMAT, data, "scenario result")
        status, error, unsupported = Status(data["status"]), data.get("error"), None
        if status is Status.UNSUPPORTED and isinstance(error, dict) and error.get("type") == "Unsupported":
            unsupported, error = {k: str(v) for k, v in error.items() if k != "type"}, None
        stored = data.get("layers") or {}
        layers = {name: {k: v for k, v in layer.items() if k != "verdict"} if isinstance(layer, dict) else layer
                  for name, layer in stored.items()}  # a layer that is no object: judging it again says so
        observed = None
        if layers or status in JUDGED or data.get("momentum") is not None:
            observed = Observed(momentum=data.get("momentum"), layers=layers, update_ops=data.get("update_ops"),
                                train_loss=data.get("train_loss"), eval_loss=data.get("eval_loss"),
                                extra=data.get("extra", data.get("details")) or {})
        same: dict[str, Any] = {k: data.get(k) for k in ("tf_version", "keras_version", "python", "devices_seen",
                                                         "duration_s", "log", "log_tail", "inputs_hash", "reused_from")}
        return cls(scenario=data["scenario"], status=status, reason=data["reason"], device=data["device"],
                   steps=data["steps"], **same,
                   build_info=data.get("build_info") or {}, observed=observed, unsupported=unsupported, error=error,
                   verdicts=_stored_verdicts({name: layer["verdict"] for name, layer in stored.items()
                                              if isinstance(layer, dict) and isinstance(layer.get("verdict"), dict)},
                                             layers))

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "status": self.status.value,
                "observed": self.observed.to_dict() if self.observed else None,
                "verdicts": {name: verdict.to_dict() for name, verdict in self.verdicts.items()}}


def _stored_verdicts(verdicts: dict[str, Any], layers: dict[str, Any]) -> dict[str, LayerVerdict]:
    """The verdicts a file holds on its layers; none where a layer they name is missing or its numbers make no
    batch (a damaged file: judging it again says what is wrong)."""
    def number(value: Any) -> bool:
        return isinstance(value, float | int) and not isinstance(value, bool)

    try:
        if not all(number(layers[name]["moving_mean"]) and number(layers[name]["moving_variance"])
                   for name in verdicts):
            return {}
        return {name: LayerVerdict.from_dict(verdict, layers[name]) for name, verdict in verdicts.items()}
    except (ArithmeticError, ValueError, KeyError, TypeError, AttributeError):
        return {}


# A scenario's numbers, flat (ScenarioResult.numbers).
NUMBERS = ("moving_mean", "moving_variance", "expected_moving_mean", "expected_moving_variance", "effective_updates",
           "effective_updates_variance", "variance_correction", "forward_statistics", "batch_mean", "update_ops",
           "train_loss", "eval_loss")


# A bnmatrix.cell/1 scenario result's fields (ScenarioResult.from_first_format).
FIRST_FORMAT = frozenset((
    "scenario", "status", "reason", "device", "steps", "momentum", "tf_version", "keras_version", "python",
    "devices_seen", "build_info", "judged_layer", "moving_mean", "moving_variance", "expected_moving_mean",
    "expected_moving_variance", "effective_updates", "effective_updates_variance", "variance_correction",
    "forward_statistics", "batch_mean", "batch_variance", "layers", "update_ops", "train_loss", "eval_loss", "extra",
    "details", "error", "duration_s", "log", "log_tail", "inputs_hash", "reused_from"))


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

    def entry_finding(self, scenario: str) -> Finding:
        """`scenario`'s finding (its status and facets), or the cell's own status when it did not run."""
        return self.scenarios[scenario].finding if scenario in self.scenarios else Finding(self.own_status)

    def rejudge(self) -> bool:
        """Judge every scenario again from its stored numbers; whether every stored verdict stands. A scenario that
        trained another number of steps than the cell asked for has no verdict (as the runner says of a result
        line)."""
        stands = True
        for scenario in self.scenarios.values():
            if scenario.steps != self.cell.steps and scenario.status in JUDGED:
                was = scenario.status.value
                scenario.refuse(f"result refused: the scenario trained {scenario.steps} steps; the cell asked for "
                                f"{self.cell.steps} [the file said {was}]")
                stands = False
            else:
                stands = scenario.rejudge() and stands
        return stands

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        """From a stored cell result (schema-checked), of either format."""
        values = known_fields(cls, data, "cell result")
        scenario = ScenarioResult.from_first_format if data.get("schema") == "bnmatrix.cell/1" else (
            ScenarioResult.from_dict)
        return cls(**{**values, "cell": Cell.from_record(data["cell"]), "status": CellStatus(data["status"]),
                      "scenarios": {k: scenario(v) for k, v in data["scenarios"].items()}})

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
    def searches(self) -> list[Conclusion]:
        """The bisect conclusions stored with this run (none for a plain run)."""
        return read_searches(self.directory)

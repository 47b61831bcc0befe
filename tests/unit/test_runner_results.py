"""The runner and the results store: outcomes as values, atomic files, resume and reuse.

The backend here is a stand-in that replays scenario output through the real OutputCapture, so
these tests run without TensorFlow; tests/e2e runs the same code on real TensorFlow.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.backends import RESULT_MARKER, CellNotRun, CellSetupError, OutputCapture, ScenarioRun
from bnmatrix.config import PACKAGE_DIR, SCHEMA_FILES, Matrix, Scenario
from bnmatrix.errors import BnMatrixError, Cancelled, Stop, Terminated
from bnmatrix.intake import check
from bnmatrix.plan import Cell, plan
from bnmatrix.runner import run_plan
from bnmatrix.store.files import now, write_json
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import FIRST_FORMAT, CellResult, Manifest, Observed, RunStatus, ScenarioResult
from bnmatrix.store.runstore import RunStore, new_run_id
from bnmatrix.store.searches import Conclusion, Probe
from bnmatrix.verdict import BatchData, CellStatus, Status, expected_statistics, judge_layer

REPO = Path(__file__).resolve().parents[2]
BATCH = BatchData.from_observation({"values": [0.0, 1.0, 2.0, 3.0]})


def observation(name: str, updates: float = 100, tf: str = "1.15.5", **changes: Any) -> dict[str, Any]:
    """A bnmatrix.scenario/2 result whose statistics are those of `updates` updates on the batch 0..3."""
    mean, variance = expected_statistics(BATCH, 0.99, updates)
    result = {"schema": "bnmatrix.scenario/2", "scenario": name, "outcome": "observed", "python": "3.7.16",
              "tf_version": tf, "keras_version": "2.2.4-tf", "device": "cpu", "devices_seen": ["CPU"], "steps": 100,
              "momentum": 0.99, "layers": {"bn": {"moving_mean": mean, "moving_variance": variance,
                                                  "data": {"values": [0, 1, 2, 3]}}},
              "update_ops": 2, "train_loss": 1.0, "eval_loss": 1.1, "extra": {}, "unsupported": None, "error": None,
              "duration_s": 0.1}
    result.update(changes)
    return result


def scenario_output(name: str, **changes: Any) -> str:
    return "TF noise\n" + RESULT_MARKER.decode() + json.dumps(observation(name, **changes)) + "\n"


class ReplayBackend:
    """Answers per cell id: a CellNotRun/CellSetupError/KeyboardInterrupt, or scenario runs."""

    name = "replay"

    def __init__(self, plan_by_cell: dict[str, Any], outputs: dict[str, str] | None = None):
        self.plan_by_cell = plan_by_cell
        self.outputs = outputs or {}  # scenario name -> its stdout
        self.opened: list[str] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    @contextmanager
    def open(self, cell: Cell, setup_log: Path, report_step: Any) -> Iterator[Any]:
        self.opened.append(cell.id)
        action = self.plan_by_cell.get(cell.id, "ok")
        if isinstance(action, BaseException):
            raise action
        backend = self

        class Session:
            environment = {"kind": "replay"}

            def run(self, scenario: Scenario, args: list[str], timeout_s: float, log: Path) -> ScenarioRun:
                assert backend is not None
                stdout, stderr, code, timed_out = {
                    "timeout": ("", "still training", None, True), "crash": ("", "Segmentation fault", -11, False),
                }.get(action, (backend.outputs.get(scenario.name) or scenario_output(scenario.name), "", 0, False))
                with open(log, "wb") as handle:
                    capture = OutputCapture(handle)
                    capture.feed(stdout.encode(), "stdout")
                    capture.feed(stderr.encode(), "stderr")
                    capture.finish()
                return ScenarioRun.from_capture(capture, code, timed_out, timeout_s if timed_out else 0.2)

        yield Session()


MATRIX = Matrix.from_file(REPO / "matrix.yaml")


@pytest.fixture
def cells() -> list[Cell]:
    return plan(MATRIX, select=["tf-1.15.5-*", "tf-1.14.0-cpu"], scenarios=["keras_bn_custom_estimator",
                                                                          "layers_bn_session"])


def run(root: Path, cells: list[Cell], backend: ReplayBackend, force: bool = False) -> RunStore:
    manifest = {"backend": backend.name, "matrix": "m", "matrix_hash": "h", "bnmatrix_version": "t",
                "selection": {}, "cells": [c.id for c in cells]}
    store = RunStore(root, new_run_id(), manifest)
    try:
        run_plan(cells, MATRIX.catalog, backend, store, MATRIX.scenario_dirs, 5.0, force, lambda *a: None)
    except KeyboardInterrupt:
        store.finish(RunStatus.INTERRUPTED)
        raise
    store.finish(RunStatus.COMPLETE)
    return store


def test_a_stop_whose_exception_python_dropped_still_stops_the_run(tmp_path: Path, cells: list[Cell]) -> None:
    """A signal whose handler ran inside a __del__ raises nothing (Python prints "Exception ignored" and goes on);
    the handler has recorded it (errors.Stop), and the run stops all the same: the cell being built is killed and
    not stored, the queued ones never start, the finished one is kept."""

    class Building(ReplayBackend):
        def open(self, cell: Cell, setup_log: Path, report_step: Any) -> Any:
            if cell.id == cells[1].id:
                Stop.signum = signal.SIGTERM  # what the handler records before the exception it raises is dropped
                deadline = time.monotonic() + 10
                while not self.closed and time.monotonic() < deadline:  # a long install, until the stop kills it
                    time.sleep(0.01)
                raise CellSetupError("installing tensorflow failed (exit -9)", "killed")
            return super().open(cell, setup_log, report_step)

    backend = Building({})
    store = RunStore(tmp_path, new_run_id(), {"backend": "replay", "matrix": "m", "matrix_hash": "h",
                                              "bnmatrix_version": "t", "cells": [c.id for c in cells[:3]]})
    try:
        with pytest.raises(Terminated) as stopped:
            run_plan(cells[:3], MATRIX.catalog, backend, store, MATRIX.scenario_dirs, 5.0, False, lambda *a: None)
    finally:
        Stop.signum = None
    assert stopped.value.signum == signal.SIGTERM and backend.closed
    assert backend.opened == [cells[0].id]  # the third cell never started
    assert sorted(p.stem for p in (store.directory / "cells").glob("*.json")) == [cells[0].id]


def test_a_closed_run_writes_no_cell_that_ends_after_it(tmp_path: Path, cells: list[Cell]) -> None:
    """A stop closes the run while a cell may still be ending (its build killed by the stop): what it ends with is
    no result of the run, and the closed run's files stay as the stop left them."""
    store = run(tmp_path, cells[:1], ReplayBackend({}))
    late = CellResult(cell=cells[1], status=CellStatus.BUILD_ERROR, reason="creating venv failed (exit -9)",
                      backend="replay", inputs_hash="h", started=now())
    before = sorted(p.name for p in store.directory.rglob("*"))
    with pytest.raises(Cancelled):
        store.write_cell(late)
    assert sorted(p.name for p in store.directory.rglob("*")) == before
    assert [c.id for c in load_run(store.directory).cells] == [cells[0].id]


def test_every_outcome_is_a_value_in_its_own_file(tmp_path: Path, cells: list[Cell]) -> None:
    backend = ReplayBackend({"tf-1.15.5-gpu": CellNotRun("no GPU on this host"),
                             "tf-1.14.0-cpu": CellSetupError("installing tensorflow failed (exit 1)", "No matching")})
    store = run(tmp_path, cells, backend)
    loaded = load_run(tmp_path / "latest")
    assert loaded.directory == store.directory and loaded.manifest.status is RunStatus.COMPLETE
    by_id = {c.id: c for c in loaded.cells}
    assert by_id["tf-1.15.5-cpu"].status.value == "ran"
    assert {s.status.value for s in by_id["tf-1.15.5-cpu"].scenarios.values()} == {"updated"}
    assert by_id["tf-1.15.5-gpu"].status.value == "not-run"
    assert by_id["tf-1.15.5-gpu"].reason == "no GPU on this host"
    assert by_id["tf-1.14.0-cpu"].status.value == "build-error"
    assert "No matching" in (by_id["tf-1.14.0-cpu"].setup_log_tail or "")
    log = store.directory / str(by_id["tf-1.15.5-cpu"].scenarios["layers_bn_session"].log)
    assert "TF noise" in log.read_text()


def test_timeout_and_crash_are_scenario_errors(tmp_path: Path, cells: list[Cell]) -> None:
    store = run(tmp_path, cells[:2], ReplayBackend({"tf-1.15.5-cpu": "timeout", "tf-1.15.5-gpu": "crash"}))
    by_id = {c.id: c for c in load_run(store.directory).cells}
    timeout = by_id["tf-1.15.5-cpu"].scenarios["keras_bn_custom_estimator"]
    assert timeout.status.value == "error" and timeout.reason == "timeout: killed after 5 s"
    crash = by_id["tf-1.15.5-gpu"].scenarios["keras_bn_custom_estimator"]
    assert crash.status.value == "error" and "exited with code -11" in str(crash.reason)
    assert crash.error is not None and "Segmentation fault" in crash.error["traceback"]


def test_interrupted_run_keeps_finished_cells_and_the_next_run_reuses_them(tmp_path: Path,
                                                                        cells: list[Cell]) -> None:
    interrupting = ReplayBackend({"tf-1.15.5-gpu": KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, cells, interrupting)
    assert interrupting.closed  # the backend was told to stop what still runs
    interrupted = load_run(tmp_path)
    assert interrupted.manifest.status is RunStatus.INTERRUPTED
    assert [c.id for c in interrupted.cells] == ["tf-1.15.5-cpu"]

    backend = ReplayBackend({})
    resumed = run(tmp_path, cells, backend)
    assert backend.opened == ["tf-1.15.5-gpu", "tf-1.14.0-cpu"]  # the finished cell was not redone
    by_id = {c.id: c for c in load_run(resumed.directory).cells}
    assert by_id["tf-1.15.5-cpu"].reused_from == interrupted.directory.name
    assert (resumed.directory / str(by_id["tf-1.15.5-cpu"].scenarios["layers_bn_session"].log)).exists()
    assert by_id["tf-1.15.5-gpu"].reused_from is None


def test_force_and_changed_inputs_redo_cells(tmp_path: Path, cells: list[Cell]) -> None:
    run(tmp_path, cells[:1], ReplayBackend({}))
    forced = ReplayBackend({})
    run(tmp_path, cells[:1], forced, force=True)
    assert forced.opened == ["tf-1.15.5-cpu"]
    changed = ReplayBackend({})
    run(tmp_path, [replace(cells[0], steps=50)], changed)
    assert changed.opened == ["tf-1.15.5-cpu"]


def test_a_cell_starts_the_scenarios_that_took_longest_last_time_first(tmp_path: Path, cells: list[Cell]) -> None:
    """So that no core idles at a cell's end while one long scenario finishes: one at a time, the first run goes in the
    cell's order; the next starts with the one that took longest then, and a new one first of all; the results keep
    the cell's order."""

    class Recording(ReplayBackend):
        def __init__(self, took: dict[str, float]):
            super().__init__({}, {name: scenario_output(name, duration_s=seconds) for name, seconds in took.items()})
            self.started: list[str] = []

        @contextmanager
        def open(self, cell: Cell, setup_log: Path, report_step: Any) -> Iterator[Any]:
            with super().open(cell, setup_log, report_step) as session:
                replay = session.run

                def run(scenario: Scenario, *args: Any) -> ScenarioRun:
                    self.started.append(scenario.name)
                    return replay(scenario, *args)

                session.run = run
                yield session

    order = cells[0].scenarios
    assert order == ("keras_bn_custom_estimator", "layers_bn_session")
    first = Recording({"keras_bn_custom_estimator": 0.5, "layers_bn_session": 2.0})
    run(tmp_path, cells[:1], first)
    assert first.started == ["keras_bn_custom_estimator", "layers_bn_session"]
    again = Recording({"keras_bn_custom_estimator": 0.5, "layers_bn_session": 2.0})
    run(tmp_path, cells[:1], again, force=True)
    assert again.started == ["layers_bn_session", "keras_bn_custom_estimator"]
    stored = json.loads((tmp_path / "latest" / "cells" / "tf-1.15.5-cpu.json").read_text())
    assert list(stored["scenarios"]) == list(order)
    assert [stored["scenarios"][name]["duration_s"] for name in order] == [0.5, 2.0]
    grown = replace(cells[0], scenarios=(*order, "keras_fit"))
    with_new = Recording({"keras_bn_custom_estimator": 0.5, "layers_bn_session": 2.0, "keras_fit": 0.1})
    run(tmp_path, [grown], with_new, force=True)
    assert with_new.started == ["keras_fit", "layers_bn_session", "keras_bn_custom_estimator"]


def test_a_result_changed_after_its_run_is_checked_again_before_it_is_reused(tmp_path: Path,
                                                                             cells: list[Cell]) -> None:
    first = run(tmp_path, cells[:1], ReplayBackend({}))
    assert (first.manifest.checked or {})["cells"]["tf-1.15.5-cpu"]["status"] == "ran"
    unchanged = run(tmp_path, cells[:1], ReplayBackend({}))  # read on the strength of the recorded digest
    reused = load_run(unchanged.directory).cells[0]
    assert reused.reused_from == first.directory.name
    log = str(reused.scenarios["layers_bn_session"].log)
    assert (unchanged.directory / log).stat().st_ino == (first.directory / log).stat().st_ino  # linked, not copied

    edited = unchanged.directory / "cells" / "tf-1.15.5-cpu.json"
    data = json.loads(edited.read_text())
    data["duration_s"] = 99.0  # still a valid result: checked, then reused
    edited.write_text(json.dumps(data))
    backend = ReplayBackend({})
    again = run(tmp_path, cells[:1], backend)
    assert backend.opened == [] and load_run(again.directory).cells[0].duration_s == 99.0

    edited = again.directory / "cells" / "tf-1.15.5-cpu.json"
    data["scenarios"]["layers_bn_session"]["status"] = "fine"  # no longer a result: checked and passed over
    edited.write_text(json.dumps(data))
    for older in (first, unchanged):
        (older.directory / "cells" / "tf-1.15.5-cpu.json").write_text("{truncated")
    backend = ReplayBackend({})
    redone = run(tmp_path, cells[:1], backend)
    assert backend.opened == ["tf-1.15.5-cpu"]  # no earlier result left to reuse: run again
    assert load_run(redone.directory).cells[0].scenarios["layers_bn_session"].status.value == "updated"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "cell.json"
    write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]


def test_a_damaged_result_file_is_named_in_the_error(tmp_path: Path, cells: list[Cell]) -> None:
    store = run(tmp_path, cells[:1], ReplayBackend({}))
    damaged = store.directory / "cells" / "tf-1.15.5-cpu.json"
    data = json.loads(damaged.read_text())
    data["scenarios"]["layers_bn_session"]["status"] = "fine"
    damaged.write_text(json.dumps(data))
    with pytest.raises(BnMatrixError, match=r"tf-1.15.5-cpu.json: scenarios.layers_bn_session.status: 'fine'"):
        load_run(store.directory)
    damaged.write_text("{not json")
    with pytest.raises(BnMatrixError, match=r"tf-1.15.5-cpu.json:1: not valid JSON"):
        load_run(store.directory)


@pytest.mark.parametrize(("record", "file", "where"), [
    (CellResult, "cell", ()), (ScenarioResult, "cell", ("$defs", "scenario")), (Cell, "cell", ("properties", "cell")),
    (Observed, "cell", ("$defs", "scenario", "properties", "observed")), (Manifest, "manifest", ())])
def test_each_stored_record_is_its_schema_field_for_field(record: type, file: str, where: tuple[str, ...]) -> None:
    """What the store writes is what the schema describes, no more and no less; the schema refuses any other key."""
    schema: Any = json.loads((PACKAGE_DIR / SCHEMA_FILES[file]).read_text())
    for key in where:
        schema = schema[key]
    assert set(schema["properties"]) - {"schema"} == {f.name for f in fields(record)}
    assert schema["additionalProperties"] is False


def test_a_bisect_conclusion_and_its_probes_are_their_schema_field_for_field() -> None:
    """bisect.json: a search holds a Conclusion's fields (less the run that holds it, known from where it is read) and
    the first change's ends and verdicts, written for its readers; a probe, a Probe's; both refuse any other key."""
    search: Any = json.loads((PACKAGE_DIR / SCHEMA_FILES["bisect"]).read_text())["$defs"]["search"]
    names = {f.name for f in fields(Conclusion)} - {"run_id"} | set(Conclusion.FIRST_CHANGE)
    assert set(search["properties"]) == names and search["additionalProperties"] is False
    probe = search["properties"]["probes"]["items"]
    assert set(probe["properties"]) == {f.name for f in fields(Probe)}
    assert set(probe["required"]) == {f.name for f in fields(Probe)} - {"facets"}  # absent before facets were
    assert probe["additionalProperties"] is False


def test_a_layers_verdict_and_the_first_formats_scenario_are_their_schema_field_for_field() -> None:
    schema: Any = json.loads((PACKAGE_DIR / SCHEMA_FILES["cell"]).read_text())["$defs"]
    verdict = schema["scenario"]["properties"]["verdicts"]["additionalProperties"]
    layer = {"moving_mean": 0.0, "moving_variance": 1.0, "data": {"values": [1.0, 2.0]}}
    mean, variance = expected_statistics(BatchData.from_observation(layer["data"]), 0.9, 10)
    offered = {**layer, "moving_mean": mean, "moving_variance": variance,  # updated, beside an alternative: `follows`
               "alternatives": {"another batch": {"values": [3.0, 4.0]}}}
    assert set(verdict["properties"]) == set(judge_layer(offered, 10, 0.9).to_dict())
    assert set(verdict["required"]) == set(judge_layer(layer, 10, 0.9).to_dict())  # stored before it: no `follows`
    assert set(schema["scenario_1"]["properties"]) - {"schema"} == FIRST_FORMAT


def test_a_first_format_run_reads_writes_in_the_new_one_and_reads_back_the_same() -> None:
    """Every cell of a real run stored in the first format (tests/legacy/run: the default matrix, Nov 27, 2026,
    bnmatrix.cell/1, flat) becomes a bnmatrix.cell/2 file that passes its schema, holds each number once (no copy of
    the judged layer's beside the observations) and reads back with the same statuses, reasons and numbers, its
    verdicts standing when judged again."""
    run = load_run(Path(__file__).resolve().parents[1] / "legacy" / "run")
    assert json.loads((run.directory / "cells" / "tf-1.15.5-cpu.json").read_text())["schema"] == "bnmatrix.cell/1"
    judged = 0
    for cell in run.cells:
        data = json.loads(json.dumps(cell.to_dict()))
        check(data, "cell", cell.id)
        again = CellResult.from_dict(data)
        assert data["schema"] == "bnmatrix.cell/2" and again.rejudge()
        for name, scenario in cell.scenarios.items():
            stored, back = data["scenarios"][name], again.scenarios[name]
            assert not {"moving_mean", "effective_updates", "judged_layer", "layers", "momentum"} & set(stored)
            assert all("verdict" not in layer for layer in (stored["observed"] or {"layers": {}})["layers"].values())
            assert (back.status, back.reason, back.numbers()) == (scenario.status, scenario.reason, scenario.numbers())
            judged += back.judged is not None
            if scenario.status is Status.UNSUPPORTED:
                assert back.unsupported and back.unsupported["api"] in str(back.reason) and back.error is None
    assert judged > 300  # 37 CPU cells x 18 scenarios, most of them with numbers


def test_a_stored_field_bnmatrix_does_not_know_is_named_not_dropped(tmp_path: Path, cells: list[Cell]) -> None:
    store = run(tmp_path, cells[:1], ReplayBackend({}))
    stored = store.directory / "cells" / "tf-1.15.5-cpu.json"
    places = {(): "(top level)", ("cell",): "cell", ("scenarios", "layers_bn_session"): "scenarios.layers_bn_session"}
    for path, where in places.items():
        data = json.loads(stored.read_text())
        target = data
        for key in path:
            target = target[key]
        target["verdict_override"] = "updated"
        shutil.copytree(store.directory, tmp_path / "edited", dirs_exist_ok=True)
        (tmp_path / "edited" / "cells" / "tf-1.15.5-cpu.json").write_text(json.dumps(data))
        with pytest.raises(BnMatrixError, match=rf"tf-1.15.5-cpu.json: {re.escape(where)}: Additional properties are "
                                                 r"not allowed \('verdict_override' was unexpected\)"):
            load_run(tmp_path / "edited")
    with pytest.raises(BnMatrixError, match="scenario result: unknown field 'verdict_override'"):
        ScenarioResult.from_dict({**load_run(store.directory).cells[0].scenarios["layers_bn_session"].to_dict(),
                                  "verdict_override": "updated"})


def test_no_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BnMatrixError, match="no run here"):
        load_run(tmp_path)


def intake(line: str | bytes, cell: Cell) -> Any:
    """The host's verdict on one result line, as the runner takes it from a scenario's output."""
    from bnmatrix.runner import parse_scenario

    raw = line if isinstance(line, bytes) else line.encode()
    return parse_scenario("keras_bn_custom_estimator", cell, ScenarioRun(raw, False, "stderr tail", 0, False, 1.0), 5.0)


def test_a_forged_opinion_is_ignored_and_the_numbers_decide(cells: list[Cell]) -> None:
    forged = observation("keras_bn_custom_estimator", updates=0, status="updated", reason="all good")
    result = intake(json.dumps(forged), cells[0])
    assert result.status.value == "stale" and result.reason == "moving statistics still at their initial values (0, 1)"
    old_style = {"schema": "bnmatrix.scenario/1", "scenario": "keras_bn_custom_estimator", "status": "updated",
                 "moving_mean": 0.0, "moving_variance": 1.0}
    refused = intake(json.dumps(old_style), cells[0])
    assert refused.status.value == "error"
    assert refused.reason.startswith("result refused: the result does not match bnmatrix.scenario/2")


@pytest.mark.parametrize(("change", "reason"), [
    ({"layers": {"bn": {"moving_mean": "0.95", "moving_variance": 1.1}}},
     "the result does not match bnmatrix.scenario/2: layers.bn.moving_mean: '0.95' is not of type 'number'"),
    ({"outcome": "fine"}, "the result does not match bnmatrix.scenario/2: outcome: 'fine' is not one of"),
    ({"tf_version": "2.15.1"}, "imported TF 2.15.1 but the cell installed 1.15.5"),
    ({"scenario": "keras_fit"}, "the result is for scenario 'keras_fit'; expected 'keras_bn_custom_estimator'"),
    ({"steps": 10}, "the scenario trained 10 steps; the cell asked for 100"),
])
def test_a_result_that_fails_intake_is_an_error_that_says_why(cells: list[Cell], change: dict[str, Any],
                                                              reason: str) -> None:
    result = intake(json.dumps(observation("keras_bn_custom_estimator", **change)), cells[0])
    assert result.status.value == "error"
    assert reason in result.reason


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_never_reach_a_result(cells: list[Cell], tmp_path: Path, constant: str) -> None:
    line = json.dumps(observation("keras_bn_custom_estimator"))
    line = line.replace('"train_loss": 1.0', f'"train_loss": {constant}')
    result = intake(line, cells[0])
    assert result.status.value == "error"
    assert result.reason == f"result refused: the result line: non-finite number {constant}; expected finite numbers"
    write_json(tmp_path / "r.json", result.to_dict())  # and what is stored is strict JSON
    json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_a_result_line_over_the_limit_is_refused_unread(cells: list[Cell], tmp_path: Path) -> None:
    huge = RESULT_MARKER + b'{"padding": "' + b"x" * (2 << 20) + b'"}\n'
    with open(tmp_path / "log", "wb") as handle:
        capture = OutputCapture(handle)
        for start in range(0, len(huge), 65536):
            capture.feed(huge[start:start + 65536], "stdout")
        capture.finish()
    assert capture.result_line is None and capture.result_too_long
    from bnmatrix.runner import parse_scenario

    result = parse_scenario("keras_bn_custom_estimator", cells[0], ScenarioRun.from_capture(capture, 0, False, 1.0),
                            5.0)
    assert result.status.value == "error" and result.reason == "result line longer than 1048576 bytes; refused unread"


def test_the_launchers_first_line_says_how_the_scenario_started(cells: list[Cell], tmp_path: Path) -> None:
    """The launcher's line comes first (split across reads here); a scenario that prints another cannot change it, and
    the result says which way the scenario ran."""
    output = (b"BNMATRIX_LAU", b"NCH fresh: TensorFlow's import left 2 threads\nsome output\nBNMATRIX_LAUNCH zygote\n",
              scenario_output("keras_bn_custom_estimator", updates=0).encode())
    with open(tmp_path / "log", "wb") as handle:
        capture = OutputCapture(handle)
        for chunk in output:
            capture.feed(chunk, "stdout")
        capture.finish()
    assert capture.launch == "fresh: TensorFlow's import left 2 threads"
    from bnmatrix.runner import parse_scenario

    result = parse_scenario("keras_bn_custom_estimator", cells[0], ScenarioRun.from_capture(capture, 0, False, 1.0),
                            5.0)
    assert result.status.value == "stale" and result.launch == "fresh: TensorFlow's import left 2 threads"
    crashed = parse_scenario("keras_bn_custom_estimator", cells[0],
                             ScenarioRun(None, False, "", -6, False, 1.0, "zygote"), 5.0)
    assert crashed.launch == "zygote" and crashed.reason == "no result: the scenario process exited with code -6"


def test_a_run_whose_every_result_is_bad_still_finishes(tmp_path: Path, cells: list[Cell]) -> None:
    bad = {"keras_bn_custom_estimator": RESULT_MARKER.decode() + '{"schema": "bnmatrix.scenario/1"}\n',
           "layers_bn_session": RESULT_MARKER.decode() + "{not json\n"}
    store = run(tmp_path, cells, ReplayBackend({}, outputs=bad))
    loaded = load_run(store.directory)
    assert loaded.manifest.status is RunStatus.COMPLETE and len(loaded.cells) == 3
    reasons = {s.reason for c in loaded.cells for s in c.scenarios.values()}
    assert any(r and r.startswith("result refused: the result line:1: not valid JSON") for r in reasons)
    assert {s.status.value for c in loaded.cells for s in c.scenarios.values()} == {"error"}


FLOOD = r"""
import sys
line = "x" * 1023 + "\n"
for _ in range(200 * 1024):
    sys.stdout.write(line)
sys.stdout.write('BNMATRIX_RESULT {"ok": 1}\n')
sys.stderr.write("the end\n")
"""

# The peak from /proc (VmHWM, this process's own memory), not ru_maxrss, which Linux carries over an exec from
# the forking process (pytest, hundreds of MiB into the suite).
MEASURE = r"""
import sys
from bnmatrix.backends import OutputCapture
from bnmatrix.host import ProcessGroups

with open(sys.argv[2], "wb") as log:
    capture = OutputCapture(log)
    code, timed_out = ProcessGroups().stream([sys.executable, sys.argv[1]], 120, capture)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(code, timed_out, capture.result_line.decode().replace(" ", ""), capture.tail("stderr", 1).replace(" ", "_"),
      peak // 1024)
"""


def test_a_scenario_printing_200_mb_costs_bounded_memory_and_log(tmp_path: Path) -> None:
    """The real streaming path: a child process floods 200 MB; the runner's side keeps a bounded tail."""
    import subprocess
    import sys

    (tmp_path / "flood.py").write_text(FLOOD)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "flood.py"), str(tmp_path / "log")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    code, timed_out, line, stderr_tail, peak_mib = done.stdout.split()
    assert (code, timed_out, line, stderr_tail) == ("0", "False", '{"ok":1}', "the_end")
    assert int(peak_mib) < 120, f"peak RSS {peak_mib} MiB for 200 MB of output"
    log = (tmp_path / "log").read_bytes()
    assert len(log) < 9 << 20  # the first 8 MiB, a note, and the tail
    assert b"bytes of output left out here" in log  # then the ends of both streams
    assert b'BNMATRIX_RESULT {"ok": 1}' in log[-200:]  # the streams interleave in any order


def test_an_imported_run_is_checked_again_whatever_its_manifest_says(tmp_path: Path, cells: list[Cell]) -> None:
    """A hostile archive whose manifest vouches for a cell file that is no result: the file is not reused."""
    import hashlib
    import tarfile

    from bnmatrix.history import ARCHIVE_INDEX, ARCHIVE_SCHEMA, import_archive

    source = run(tmp_path / "theirs", cells[:1], ReplayBackend({}))
    cell_file = source.directory / "cells" / "tf-1.15.5-cpu.json"
    data = json.loads(cell_file.read_text())
    # a number, says the schema
    data["scenarios"]["layers_bn_session"]["observed"]["momentum"] = "<img src=x onerror=alert(1)>"
    cell_file.write_text(json.dumps(data))
    manifest = json.loads((source.directory / "manifest.json").read_text())
    manifest["checked"]["cells"]["tf-1.15.5-cpu"]["sha256"] = hashlib.sha256(cell_file.read_bytes()).hexdigest()
    (source.directory / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / ARCHIVE_INDEX).write_text(json.dumps({"schema": ARCHIVE_SCHEMA,
                                                      "runs": [{"folder": source.directory.name}]}))
    with tarfile.open(tmp_path / "archive.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / ARCHIVE_INDEX, ARCHIVE_INDEX)
        archive.add(source.directory, source.directory.name)

    with pytest.raises(BnMatrixError, match=r"observed.momentum: '<img src=x onerror=alert\(1\)>' is not of type"):
        import_archive(tmp_path / "archive.tar.gz", tmp_path / "ours")
    assert [p.name for p in (tmp_path / "ours").iterdir()] == []  # nothing imported
    # Copied in by hand instead: the manifest's record names the forged file's digest, but without this host's
    # key it vouches for nothing, so the file is checked, refused, and the cell runs again.
    shutil.copytree(source.directory, tmp_path / "ours" / source.directory.name)
    backend = ReplayBackend({})
    ours = run(tmp_path / "ours", cells[:1], backend)
    assert backend.opened == ["tf-1.15.5-cpu"]
    assert load_run(ours.directory).cells[0].scenarios["layers_bn_session"].status.value == "updated"


def test_cells_starting_together_all_find_uv() -> None:
    """uv's finder reads sysconfig, whose first reading races on Python 3.11: two cells starting at once once got
    a TypeError instead of uv. Eight threads at a barrier, in a fresh interpreter, must all get the same path."""
    import subprocess
    import sys

    code = ("import threading\nfrom bnmatrix.backends.venv import uv_binary\nbarrier = threading.Barrier(8)\n"
            "found = []\ndef find():\n    barrier.wait()\n    try:\n        found.append(uv_binary())\n"
            "    except Exception as exc:\n        found.append(repr(exc))\n"
            "threads = [threading.Thread(target=find) for _ in range(8)]\n"
            "for t in threads: t.start()\nfor t in threads: t.join()\nprint(sorted(set(found)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.count("'") == 2 and "/uv'" in out, out  # one path, no exception


def test_only_a_process_writing_to_a_scenarios_output_is_taken_for_its_leftover() -> None:
    """When a scenario ends, what still holds its output's writing end is its leftover, and is killed; a process
    holding only a reading end (another scenario just starting: until it execs, it holds copies of bnmatrix's
    reading ends) is not."""
    import os
    import subprocess

    from bnmatrix.host import pipe_holders

    read, write = os.pipe()
    writer = subprocess.Popen(["sleep", "30"], stdout=write)
    reader = subprocess.Popen(["sleep", "30"], stdin=read)
    os.close(write)
    try:
        assert pipe_holders({os.fstat(read).st_ino}) == [writer.pid]
    finally:
        for process in (writer, reader):
            process.kill()
            process.wait()
        os.close(read)

"""The runner and the results store: outcomes as values, atomic files, resume and reuse.

The backend here is a stand-in that replays scenario output, so these tests run without
TensorFlow; tests/e2e runs the same code on real TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.backends import CellNotRun, CellSetupError, ScenarioRun
from bnmatrix.config import Matrix
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import Cell, plan
from bnmatrix.results import RunStore, load_run, new_run_id, write_json
from bnmatrix.runner import RESULT_MARKER, run_plan

REPO = Path(__file__).resolve().parents[2]


def scenario_output(name: str, status: str = "updated", mean: float = 0.95) -> str:
    result = {"schema": "bnmatrix.scenario/1", "scenario": name, "status": status, "reason": "r",
              "tf_version": "1.15.5",
              "keras_version": "2.2.4-tf", "python": "3.7.16", "device": "cpu", "steps": 100, "moving_mean": mean,
              "moving_variance": 1.15, "expected_moving_mean": 0.95, "expected_moving_variance": 1.15,
              "effective_updates": 100.0, "update_ops": 2, "train_loss": 1.0, "eval_loss": 1.1, "duration_s": 0.1,
              "error": None}
    return "TF noise\n" + RESULT_MARKER + json.dumps(result) + "\n"


class ReplayBackend:
    """Answers per cell id: a CellNotRun/CellSetupError/KeyboardInterrupt, or scenario runs."""

    name = "replay"

    def __init__(self, plan_by_cell: dict[str, Any]):
        self.plan_by_cell = plan_by_cell
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

            def run(self, script: Path, args: list[str], timeout_s: float) -> ScenarioRun:
                if action == "timeout":
                    return ScenarioRun("", "still training", None, True, timeout_s)
                if action == "crash":
                    return ScenarioRun("", "Segmentation fault", -11, False, 0.5)
                assert backend is not None
                return ScenarioRun(scenario_output(script.stem), "", 0, False, 0.2)

        yield Session()


@pytest.fixture
def cells() -> list[Cell]:
    matrix = Matrix.from_file(REPO / "matrix.yaml")
    return plan(matrix, select=["tf-1.15.5-*", "tf-1.14.0-cpu"])


def run(root: Path, cells: list[Cell], backend: ReplayBackend, force: bool = False) -> RunStore:
    manifest = {"backend": backend.name, "matrix": "m", "matrix_hash": "h", "bnmatrix_version": "t",
                "selection": {}, "cells": [c.id for c in cells]}
    store = RunStore(root, new_run_id(), manifest)
    try:
        run_plan(cells, backend, store, REPO / "scenarios", 5.0, force, lambda *a: None)
    except KeyboardInterrupt:
        store.finish("interrupted")
        raise
    store.finish("complete")
    return store


def test_every_outcome_is_a_value_in_its_own_file(tmp_path: Path, cells: list[Cell]) -> None:
    backend = ReplayBackend({"tf-1.15.5-gpu": CellNotRun("no GPU on this host"),
                             "tf-1.14.0-cpu": CellSetupError("installing tensorflow failed (exit 1)", "No matching")})
    store = run(tmp_path, cells, backend)
    loaded = load_run(tmp_path / "latest")
    assert loaded.directory == store.directory and loaded.manifest["status"] == "complete"
    by_id = {c["cell"]["id"]: c for c in loaded.cells}
    assert by_id["tf-1.15.5-cpu"]["status"] == "ran"
    assert {s["status"] for s in by_id["tf-1.15.5-cpu"]["scenarios"].values()} == {"updated"}
    assert by_id["tf-1.15.5-gpu"]["status"] == "not-run"
    assert by_id["tf-1.15.5-gpu"]["reason"] == "no GPU on this host"
    assert by_id["tf-1.14.0-cpu"]["status"] == "build-error"
    assert "No matching" in by_id["tf-1.14.0-cpu"]["setup_log_tail"]
    log = store.directory / by_id["tf-1.15.5-cpu"]["scenarios"]["layers_bn_session"]["log"]
    assert "TF noise" in log.read_text()


def test_timeout_and_crash_are_scenario_errors(tmp_path: Path, cells: list[Cell]) -> None:
    store = run(tmp_path, cells[:2], ReplayBackend({"tf-1.15.5-cpu": "timeout", "tf-1.15.5-gpu": "crash"}))
    by_id = {c["cell"]["id"]: c for c in load_run(store.directory).cells}
    timeout = by_id["tf-1.15.5-cpu"]["scenarios"]["keras_bn_custom_estimator"]
    assert timeout["status"] == "error" and timeout["reason"] == "timeout: killed after 5 s"
    crash = by_id["tf-1.15.5-gpu"]["scenarios"]["keras_bn_custom_estimator"]
    assert crash["status"] == "error" and "exited with code -11" in crash["reason"]
    assert "Segmentation fault" in crash["error"]["traceback"]


def test_interrupted_run_keeps_finished_cells_and_the_next_run_reuses_them(tmp_path: Path,
                                                                        cells: list[Cell]) -> None:
    interrupting = ReplayBackend({"tf-1.15.5-gpu": KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, cells, interrupting)
    assert interrupting.closed  # the backend was told to stop what still runs
    interrupted = load_run(tmp_path)
    assert interrupted.manifest["status"] == "interrupted"
    assert [c["cell"]["id"] for c in interrupted.cells] == ["tf-1.15.5-cpu"]

    backend = ReplayBackend({})
    resumed = run(tmp_path, cells, backend)
    assert backend.opened == ["tf-1.15.5-gpu", "tf-1.14.0-cpu"]  # the finished cell was not redone
    by_id = {c["cell"]["id"]: c for c in load_run(resumed.directory).cells}
    assert by_id["tf-1.15.5-cpu"]["reused_from"] == interrupted.directory.name
    assert (resumed.directory / by_id["tf-1.15.5-cpu"]["scenarios"]["layers_bn_session"]["log"]).exists()
    assert by_id["tf-1.15.5-gpu"]["reused_from"] is None


def test_force_and_changed_inputs_redo_cells(tmp_path: Path, cells: list[Cell]) -> None:
    run(tmp_path, cells[:1], ReplayBackend({}))
    forced = ReplayBackend({})
    run(tmp_path, cells[:1], forced, force=True)
    assert forced.opened == ["tf-1.15.5-cpu"]
    changed = ReplayBackend({})
    from dataclasses import replace

    run(tmp_path, [replace(cells[0], steps=50)], changed)
    assert changed.opened == ["tf-1.15.5-cpu"]


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


def test_no_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BnMatrixError, match="no run here"):
        load_run(tmp_path)

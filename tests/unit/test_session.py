"""The exit policies of a run and a bisect (pure), and the questions a session refuses before anything runs."""

from __future__ import annotations

import re
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import Cell
from bnmatrix.session import (
    BisectOptions,
    BisectOutcome,
    BisectSession,
    RunOptions,
    RunOutcome,
    RunSession,
    bisect_exit_code,
    exit_code,
)
from bnmatrix.store.records import CellResult, ScenarioResult
from bnmatrix.store.searches import Conclusion, End, Outcome
from bnmatrix.verdict import CellStatus, Status


def cell(cell_id: str, status: CellStatus, *verdicts: Status) -> CellResult:
    device = "gpu" if "-gpu" in cell_id else "cpu"
    scenarios = {f"s{i}": ScenarioResult(scenario=f"s{i}", status=v, reason="", device=device, steps=100)
                 for i, v in enumerate(verdicts)}
    tf = cell_id.split("-")[1]
    definition = Cell(id=cell_id, tf=tf, python="3.7", device=device, variant=None, requirements=(), env={},
                      image="", requested_image="", steps=100, scenarios=tuple(scenarios), index_url="")
    return CellResult(cell=definition, status=status,
                      reason=None if status is CellStatus.RAN else "why", backend="venv", inputs_hash="0" * 64,
                      started="2026-11-29T00:00:00+00:00", scenarios=scenarios)


def outcome(*results: CellResult, select: tuple[str, ...] = (), stopped_by: int | None = None) -> RunOutcome:
    return RunOutcome(run_id="r", directory=Path("r"), scenarios=("s0",), results=list(results), select=select,
                      stopped_by=stopped_by)


RAN = cell("tf-1.15.5-cpu", CellStatus.RAN, Status.STALE, Status.UPDATED)
GPU = cell("tf-1.15.5-gpu", CellStatus.NOT_RUN)


@pytest.mark.parametrize(("select", "code"), [
    ((), 0),  # the default matrix on a host without a GPU succeeds
    (("tf-1.15.5-*",), 0),  # a glob that names neither the cell nor its device
    (("*-gpu*",), 1),  # asked for by device
    (("tf-1.15.5-gpu",), 1),  # asked for by name
])
def test_a_cell_this_host_cannot_serve_fails_the_run_only_when_asked_for(select: tuple[str, ...], code: int) -> None:
    assert exit_code(outcome(RAN, GPU, select=select)) == code


def test_stale_and_wrong_verdicts_do_not_fail_a_run_but_a_cell_that_broke_does() -> None:
    assert exit_code(outcome(cell("tf-2.15.1-cpu", CellStatus.RAN, Status.WRONG, Status.ERROR), RAN)) == 0
    assert exit_code(outcome(RAN, cell("tf-2.15.1-cpu", CellStatus.BUILD_ERROR))) == 1
    assert exit_code(outcome(RAN, cell("tf-2.15.1-cpu", CellStatus.ERROR))) == 1


def test_a_run_without_a_single_verdict_fails() -> None:
    nothing = outcome(cell("tf-2.15.1-cpu", CellStatus.RAN, Status.ERROR, Status.ERROR))
    assert nothing.nothing_judged and exit_code(nothing) == 1


def test_a_stopped_run_exits_with_its_signal() -> None:
    assert exit_code(outcome(RAN, stopped_by=signal.SIGTERM)) == 128 + signal.SIGTERM
    assert exit_code(outcome(stopped_by=signal.SIGINT)) == 130


def test_a_session_knows_its_cells_before_it_runs_and_refuses_an_empty_selection(tmp_path: Path) -> None:
    session = RunSession(RunOptions(select=("tf-1.15.5-*",), skip=("*-gpu*",), results=tmp_path))
    assert [c.id for c in session.cells] == ["tf-1.15.5-cpu"]
    with pytest.raises(BnMatrixError, match="the selection leaves no cell to run"):
        RunSession(RunOptions(select=("tf-1.15.5-*",), skip=("tf-1.*",), results=tmp_path))
    with pytest.raises(BnMatrixError, match="--jobs 0: expected a whole number of at least 1"):
        RunSession(RunOptions(jobs=0, results=tmp_path))
    assert not any(tmp_path.iterdir())  # nothing written before run()


def conclusions(*outcomes: str) -> list[Conclusion]:
    return [Conclusion(scenario="s", device="cpu", variant=None, good=End("1.0.0", Status.STALE),
                       bad=End("2.0.0", Status.UPDATED), outcome=Outcome(outcome), answer=f"search {i}: {outcome}",
                       candidates=["1.0.0", "2.0.0"], unavailable=[], probes=[], checked=2, total=2, changes=[],
                       exhaustive=False, assumed_monotonic=True, monotonic=True, command="bnmatrix bisect",
                       updated="2026-11-29T00:00:00+00:00") for i, outcome in enumerate(outcomes)]


@pytest.mark.parametrize(("found", "one_search", "code"), [
    (("narrowed",), True, 0),
    (("narrowed", "incomplete"), False, 1),  # a budget used up, or a probe that could not run: run again
    (("endpoint-error", "narrowed"), False, 1),
    (("nothing-to-bisect",), True, 2),  # both ends of the one search asked for agree: the question was wrong
    (("nothing-to-bisect", "narrowed"), False, 0),  # a change point another bisect resolved meanwhile
    ((), False, 0),  # every change point of the run was narrowed already
])
def test_a_bisect_fails_when_a_search_could_not_finish_or_the_question_was_wrong(found: tuple[str, ...],
                                                                                 one_search: bool, code: int) -> None:
    assert bisect_exit_code(BisectOutcome(conclusions=conclusions(*found), one_search=one_search)) == code
    assert bisect_exit_code(BisectOutcome(conclusions=conclusions(*found), stopped_by=signal.SIGHUP)) == 129


@pytest.mark.parametrize(("options", "message"), [
    (BisectOptions(from_run="", scenario="keras_fit"), "--from-run bisects every change point of a run"),
    (BisectOptions(scenario="keras_fit", good="1.9.0"), "bisect: --bad missing"),
    (BisectOptions(scenario="keras_fit", good="1.9.0", bad="1.9.0"), "--good and --bad are both 1.9.0"),
    (BisectOptions(scenario="keras_fi", good="1.9.0", bad="2.0.0"), "perhaps you meant 'keras_fit'?"),
    (BisectOptions(from_run="", budget_min=float("nan")), "--budget nan: expected a number of minutes above 0"),
    (BisectOptions(from_run="", variant="nosuch"), "--variant nosuch: unknown"),
])
def test_a_bisect_question_is_checked_before_anything_runs(options: BisectOptions, message: str,
                                                           tmp_path: Path) -> None:
    with pytest.raises(BnMatrixError, match=re.escape(message)):
        BisectSession(replace(options, results=tmp_path))
    assert not any(tmp_path.iterdir())

"""Runs the planned cells on a backend, one after another, and stores each outcome as a value.

A cell that cannot run, fails to build or breaks is recorded and the matrix goes on; only
KeyboardInterrupt stops it, and then every finished cell is already on disk.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

from bnmatrix.backends import Backend, CellNotRun, CellSetupError, ScenarioRun
from bnmatrix.plan import Cell
from bnmatrix.results import RunStore, now

RESULT_MARKER = "BNMATRIX_RESULT "
TAIL_LINES = 40

# (cell index, cell count, cell, step text, the cell's result once it is done).
ProgressCallback = Callable[[int, int, Cell, str, dict[str, Any] | None], None]


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def scenario_sources(scenario_dir: Path) -> dict[str, str]:
    """Every script of the scenario directory (the scenarios and their helper) by file name."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(scenario_dir.glob("*.py"))}


def parse_scenario(name: str, cell: Cell, run: ScenarioRun, timeout_s: float) -> dict[str, Any]:
    """The scenario's own JSON result, or an `error` result saying why there is none."""
    for line in reversed(run.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                result: dict[str, Any] = json.loads(line[len(RESULT_MARKER):])
            except json.JSONDecodeError as exc:
                reason = f"unreadable result line: {exc}"
                break
            return result
    else:
        if run.timed_out:
            reason = f"timeout: killed after {timeout_s:g} s"
        else:
            reason = f"no result: the scenario process exited with code {run.returncode}"
    return {
        "schema": "bnmatrix.scenario/1", "scenario": name, "status": "error", "reason": reason,
        "tf_version": None, "keras_version": None, "python": None, "device": cell.device, "steps": cell.steps,
        "moving_mean": None, "moving_variance": None, "expected_moving_mean": None,
        "expected_moving_variance": None, "effective_updates": None, "update_ops": None, "train_loss": None,
        "eval_loss": None, "duration_s": run.duration_s,
        "error": {"type": "timeout" if run.timed_out else "crash", "message": reason, "traceback": tail(run.stderr)},
    }


def run_cell(cell: Cell, backend: Backend, store: RunStore, scenario_dir: Path, timeout_s: float,
             inputs_hash: str, step: Callable[[str], None]) -> dict[str, Any]:
    started, clock = now(), time.monotonic()
    result: dict[str, Any] = {
        "schema": "bnmatrix.cell/1", "cell": cell.describe(), "status": "ran", "reason": None,
        "backend": backend.name, "inputs_hash": inputs_hash, "reused_from": None, "started": started,
        "environment": None, "setup_log": None, "setup_log_tail": None, "scenarios": {},
    }
    setup_log = store.log_path(cell.id, "setup")
    result["setup_log"] = store.relative(setup_log)
    try:
        with backend.open(cell, setup_log, step) as session:
            result["environment"] = session.environment
            for index, name in enumerate(cell.scenarios, 1):
                step(f"scenario {index}/{len(cell.scenarios)}: {name}")
                args = ["--steps", str(cell.steps), "--device", cell.device, "--tf-version", cell.tf]
                run = session.run(scenario_dir / f"{name}.py", args, timeout_s)
                log = store.log_path(cell.id, name)
                log.write_text(f"{run.stdout}\n--- stderr ---\n{run.stderr}", encoding="utf-8")
                scenario = parse_scenario(name, cell, run, timeout_s)
                scenario.update(log=store.relative(log), log_tail=tail(run.stderr, 15))
                result["scenarios"][name] = scenario
    except CellNotRun as exc:
        result.update(status="not-run", reason=str(exc))
    except CellSetupError as exc:
        result.update(status="build-error", reason=str(exc), setup_log_tail=tail(exc.log))
    except Exception as exc:  # a bnmatrix bug must not stop the other cells
        result.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                      setup_log_tail=tail(traceback.format_exc()))
    result["duration_s"] = round(time.monotonic() - clock, 3)
    return result


def run_plan(cells: list[Cell], backend: Backend, store: RunStore, scenario_dir: Path, timeout_s: float,
             force: bool, progress: ProgressCallback, jobs: int = 1) -> list[dict[str, Any]]:
    """Run every cell, `jobs` at a time (reusing unchanged ones unless `force`), storing each as it finishes.

    On KeyboardInterrupt the backend stops what still runs, and nothing half-done is stored.
    """
    sources = scenario_sources(scenario_dir)
    stopping = threading.Event()

    def one(index: int, cell: Cell) -> dict[str, Any]:
        if stopping.is_set():
            raise KeyboardInterrupt
        inputs_hash = cell.inputs_hash(sources)
        result = None if force else store.reusable(cell.id, inputs_hash, backend.name)
        if result is None:
            progress(index, len(cells), cell, "starting", None)
            try:
                result = run_cell(cell, backend, store, scenario_dir, timeout_s, inputs_hash,
                                  lambda text: progress(index, len(cells), cell, text, None))
            except BaseException:
                stopping.set()
                raise
        if stopping.is_set():
            raise KeyboardInterrupt
        store.write_cell(result)
        progress(index, len(cells), cell, "reused" if result.get("reused_from") else "done", result)
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="bnmatrix-cell")
    futures = [pool.submit(one, index, cell) for index, cell in enumerate(cells, 1)]
    try:
        for future in as_completed(futures):
            future.result()
    except BaseException:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        backend.close()  # kills the scenarios and containers still running
        wait(futures)
        raise
    finally:
        pool.shutdown(wait=True)
    return [future.result() for future in futures]

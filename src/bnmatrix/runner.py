"""Runs the planned cells on a backend and stores each outcome as a value.

A cell that cannot run, fails to build or breaks is recorded and the matrix goes on; a scenario
whose result is missing, malformed, non-finite, too long or from the wrong TensorFlow is an
`error` with the reason; only a stop (Ctrl-C, a signal, a store that cannot be written) ends the run
early, and then every finished cell is already on disk.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from bnmatrix.backends import MAX_RESULT_BYTES, Backend, CellNotRun, CellSetupError, ScenarioRun
from bnmatrix.config import WARMUP_MODULE, Scenario, file_digests
from bnmatrix.errors import BnMatrixError, Cancelled, Stop
from bnmatrix.gpu import CANNOT
from bnmatrix.intake import parse_json, schema_problem
from bnmatrix.plan import Cell, scenario_inputs_hash
from bnmatrix.store.files import StoreError, now
from bnmatrix.store.records import CellResult, Observed, ScenarioResult
from bnmatrix.store.runstore import RunStore
from bnmatrix.verdict import CellStatus, Status

SCENARIO_SCHEMA = "bnmatrix.scenario/2"
# After a stop, how long the cells still running get to end (their processes and containers are killed at
# once); a cell that takes longer is left behind, and bnmatrix exits all the same.
STOP_GRACE_S = 30.0
STOP_POLL_S = 0.5  # how often waiting for cells looks for a stop whose exception was lost (errors.Stop)

# (cell index, cell count, cell, step text, the cell's result once it is done).
ProgressCallback = Callable[[int, int, Cell, str, CellResult | None], None]
WARMUP_TIMEOUT_S = 3600.0  # a GPU cell's warm-up: compiling a release's PTX for a newer GPU can take 30 minutes
JIT_WARNING = "jit-compiled from PTX"  # TF's warning where it has no machine code for the GPU (gpu_device.cc)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def folder_sources(directories: tuple[Path, ...]) -> dict[Path, dict[str, str]]:
    """Each scenario folder's Python files by their path in the folder, digested once for a whole run (editing a
    scenario's notes does not redo anything); in the folders' order, the built-in one first."""
    return {directory: {name: digest for name, digest in file_digests(directory).items()
                        if name.endswith(".py") and name != f"{WARMUP_MODULE}.py"}  # the warm-up decides no verdict
            for directory in directories}


def scenario_sources(folders: dict[Path, dict[str, str]]) -> dict[str, str]:
    """The code of every scenario folder: what a cell's outcome depends on besides its definition."""
    return {f"{index}/{name}": digest for index, files in enumerate(folders.values()) for name, digest in files.items()}


def scenario_hashes(cell: Cell, catalog: dict[str, Scenario], folders: dict[Path, dict[str, str]]) -> dict[str, str]:
    """What decides each of the cell's scenarios (plan.scenario_inputs_hash): its folder's code and the built-in
    folder's (the helper), wherever the folders are listed; a scenario whose folder is unchanged is reused when
    another folder changes."""
    builtin_folder = next(iter(folders))
    return {name: scenario_inputs_hash(cell.describe(), name, {
        "builtin": folders[builtin_folder],
        "own": folders[catalog[name].root] if catalog[name].root != builtin_folder else {}}) for name in cell.scenarios}


class ResultRefused(Exception):
    """The scenario's result line cannot be taken; the message says why."""


def read_observation(line: bytes, name: str, cell: Cell) -> dict[str, Any]:
    """The observations of a result line, checked: JSON (bounded, finite), the schema, this scenario, this cell's TF."""
    try:
        data = parse_json(line, "the result line")
    except BnMatrixError as exc:
        raise ResultRefused(str(exc)) from None
    problem = schema_problem(data, "observation")
    if problem is not None:
        raise ResultRefused(f"the result does not match {SCENARIO_SCHEMA}: {problem}")
    if data["scenario"] != name:
        raise ResultRefused(f"the result is for scenario {data['scenario']!r}; expected {name!r}")
    if data["tf_version"] is not None and not same_release(data["tf_version"], cell.tf):
        raise ResultRefused(f"imported TF {data['tf_version']} but the cell installed {cell.tf}")
    if data["outcome"] == "observed" and cell.device == "gpu" and "GPU" not in (data.get("devices_seen") or []):
        raise ResultRefused(f"GPU cell, but TF sees only {data.get('devices_seen')}")
    return data  # type: ignore[no-any-return]


def same_release(reported: str, installed: str) -> bool:
    """Whether TF's own `__version__` names the release the cell installed: a nightly says 2.23.0-dev20261026 for
    the wheel 2.23.0.dev20261026 (the same PEP 440 version)."""
    try:
        return Version(reported) == Version(installed)
    except InvalidVersion:
        return reported == installed


def parse_scenario(name: str, cell: Cell, run: ScenarioRun, timeout_s: float) -> ScenarioResult:
    """The host's verdict on a scenario's result line, or an `error` saying why there is none."""
    base: dict[str, Any] = {"scenario": name, "device": cell.device, "steps": cell.steps,
                            "duration_s": run.duration_s, "launch": run.launch}
    if run.result_line is None:
        if run.result_too_long:
            reason = f"result line longer than {MAX_RESULT_BYTES} bytes; refused unread"
        elif run.timed_out:
            reason = f"timeout: killed after {timeout_s:g} s"
        else:
            reason = f"no result: the scenario process exited with code {run.returncode}"
        kind = "timeout" if run.timed_out else "refused" if run.result_too_long else "crash"
        return ScenarioResult(**base, status=Status.ERROR, reason=reason,
                              error={"type": kind, "message": reason, "traceback": run.stderr_tail})
    try:
        data = read_observation(run.result_line, name, cell)
    except ResultRefused as exc:
        return ScenarioResult(**base, status=Status.ERROR, reason=f"result refused: {exc}",
                              error={"type": "refused", "message": str(exc), "traceback": run.stderr_tail})
    base.update({key: data.get(key) for key in ("tf_version", "keras_version", "python", "devices_seen")},
                steps=data["steps"], duration_s=data.get("duration_s", run.duration_s),
                timings=data.get("timings") or {}, build_info=data.get("build_info") or {})
    observed = Observed(momentum=data["momentum"], layers=data["layers"], update_ops=data.get("update_ops"),
                        steps_ran=data.get("steps_ran"), train_loss=data.get("train_loss"),
                        eval_loss=data.get("eval_loss"), extra=data.get("extra") or {})
    result = ScenarioResult(**base, status=Status.ERROR, reason=None, observed=observed)
    if data["steps"] != cell.steps:
        result.reason = f"result refused: the scenario trained {data['steps']} steps; the cell asked for {cell.steps}"
        return result
    if data["outcome"] == "unsupported":
        unsupported = data["unsupported"]
        result.status, result.reason = Status.UNSUPPORTED, f"{unsupported['api']}: {unsupported['message']}"
        result.unsupported = {"api": unsupported["api"], "message": unsupported["message"]}
        return result
    if data["outcome"] == "error":
        lines = [line.strip() for line in data["error"]["message"].splitlines() if line.strip()]
        last = lines[-1] if lines else ""  # TF's multi-line errors end with the one that says what broke
        result.reason = last if last.startswith(data["error"]["type"]) else f"{data['error']['type']}: {last[:500]}"
        result.error = data["error"]
        return result
    result.judge()
    return result


def warm_up(session: Any, cell: Cell, builtin: Path, log: Path, relative: Callable[[Path], str]) -> dict[str, Any]:
    """A GPU cell's warm-up (bnmatrix_warmup.py: a matmul and a BatchNormalization step on the GPU), timed and
    outside the scenario timeout, so that a PTX JIT fills the cache before the first scenario's clock starts."""
    warmup = Scenario(name="warmup", script=builtin / f"{WARMUP_MODULE}.py", root=builtin)
    run = session.run(warmup, ["--device", cell.device, "--tf-version", cell.tf], WARMUP_TIMEOUT_S, log)
    try:
        answer = parse_json(run.result_line, "the warm-up's result line") if run.result_line else {}
    except BnMatrixError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    found = {"seconds": run.duration_s, "log": relative(log),
             "jit": JIT_WARNING in log.read_text(encoding="utf-8", errors="replace"),
             "outcome": str(answer.get("outcome") or ("timeout" if run.timed_out else f"exit {run.returncode}"))[:200]}
    for key, limit in (("cuda", 100), ("cudnn", 100), ("error", 1000)):
        if isinstance(answer.get(key), str):
            found[key] = answer[key][:limit]
    described = answer.get("gpus_described")
    if isinstance(described, list):
        found["devices"] = [str(item)[:500] for item in described[:64]]
    return found


def run_cell(cell: Cell, catalog: dict[str, Scenario], backend: Backend, store: RunStore, timeout_s: float,
             inputs_hash: str, step: Callable[[str], None], scenarios: ThreadPoolExecutor,
             scenario_dirs: tuple[Path, ...], hashes: dict[str, str] | None = None,
             kept: dict[str, tuple[ScenarioResult, CellResult, Path]] | None = None) -> CellResult:
    """Prepare the cell's environment, then run its scenarios as independent processes on `scenarios`, the
    run's pool (--jobs processes at once, shared by every cell). `hashes`: what decides each scenario's outcome,
    stored with it; `kept`: earlier results of some scenarios with those very inputs (RunStore.reusable_scenarios),
    reused as they are, their logs linked: only the others run, and none when every one is kept. The scenario
    folders are kept in the run (RunStore.keep_code), for the command that reproduces a scenario."""
    clock = time.monotonic()
    kept = kept or {}
    result = CellResult(cell=cell, status=CellStatus.RAN, reason=None, backend=backend.name,
                        inputs_hash=inputs_hash, started=now(), code=store.keep_code(cell, catalog, scenario_dirs))
    for name, (scenario, holder, directory) in kept.items():
        store.link_log(cell.id, name, directory)
        scenario.reused_from = scenario.reused_from or holder.run_id
        result.scenarios[name] = scenario
    remaining = [name for name in cell.scenarios if name not in kept]
    # The longest first (as they took last time; a new one counts as long), so that no core idles at the cell's end
    # while one long scenario finishes on the other.
    took = store.previous_scenario_durations(cell.id)
    remaining.sort(key=lambda name: -took.get(name, math.inf))
    if not remaining:  # nothing to run: the newest holder's environment and setup log stand for the cell
        holder, directory = max(((h, d) for _, h, d in kept.values()), key=lambda item: item[0].started)
        result.environment, result.setup_log, result.reused_from = holder.environment, holder.setup_log, holder.run_id
        store.link_log(cell.id, "setup", directory)
        result.scenarios = {name: result.scenarios[name] for name in cell.scenarios}
        result.duration_s = round(time.monotonic() - clock, 3)
        return result
    setup_log = store.log_path(cell.id, "setup")
    result.setup_log = store.relative(setup_log)
    try:
        with backend.open(cell, setup_log, step) as session:
            result.environment = session.environment
            if cell.device == "gpu":
                step("warming up the GPU (outside the scenario timeout)")
                result.environment = {**session.environment, "warmup": warm_up(
                    session, cell, scenario_dirs[0], store.log_path(cell.id, "warmup"), store.relative)}
            done = []

            def one(name: str) -> ScenarioResult:
                log = store.log_path(cell.id, name)
                try:
                    args = ["--steps", str(cell.steps), "--device", cell.device, "--tf-version", cell.tf]
                    run = session.run(catalog[name], args, timeout_s, log)
                    scenario = parse_scenario(name, cell, run, timeout_s)
                    scenario.log, scenario.log_tail = store.relative(log), tail(run.stderr_tail, 15)
                except Cancelled:
                    raise
                except Exception as exc:  # a bnmatrix bug costs this scenario, not the cell's other results
                    why = f"bnmatrix failed on this scenario: {type(exc).__name__}: {exc}"
                    scenario = ScenarioResult(scenario=name, status=Status.ERROR, reason=why, device=cell.device,
                                              steps=cell.steps, error={"type": "bnmatrix", "message": why,
                                                                       "traceback": tail(traceback.format_exc())})
                scenario.inputs_hash = (hashes or {}).get(name)
                done.append(name)
                step(f"scenarios {len(done)}/{len(remaining)} done (last: {name})")
                return scenario

            step(f"scenarios 0/{len(remaining)} done" + (f" ({len(kept)} reused)" if kept else ""))
            futures = [(name, scenarios.submit(one, name)) for name in remaining]
            try:
                for name, future in futures:
                    result.scenarios[name] = future.result()
            except BaseException:
                for _, future in futures:
                    future.cancel()
                raise
        result.scenarios = {name: result.scenarios[name] for name in cell.scenarios}
        predicted = (result.environment or {}).get("gpu_prediction") or {}
        if predicted.get("outcome") == CANNOT:  # asked for by name: each failure says what was predicted
            for scenario in result.scenarios.values():
                if scenario.status is Status.ERROR and not scenario.reused_from:
                    scenario.reason = f"{scenario.reason}; bnmatrix predicted this: {predicted['reason']}"
    except CellNotRun as exc:
        result.status, result.reason, result.scenarios, result.code = CellStatus.NOT_RUN, str(exc), {}, None
    except CellSetupError as exc:
        result.status, result.reason, result.scenarios, result.code = CellStatus.BUILD_ERROR, str(exc), {}, None
        result.setup_log_tail = tail(exc.log)
    except (StoreError, Cancelled):
        raise
    except Exception as exc:  # a bnmatrix bug must not stop the other cells
        result.status, result.reason, result.scenarios = CellStatus.ERROR, f"{type(exc).__name__}: {exc}", {}
        result.code = None
        result.setup_log_tail = tail(traceback.format_exc())
    result.duration_s = round(time.monotonic() - clock, 3)
    return result


def run_plan(cells: list[Cell], catalog: dict[str, Scenario], backend: Backend, store: RunStore,
             scenario_dirs: tuple[Path, ...], timeout_s: float, force: bool, progress: ProgressCallback,
             jobs: int = 1) -> list[CellResult]:
    """Run every cell, `jobs` at a time (reusing unchanged ones unless `force`), storing each as it finishes;
    `jobs` also bounds the scenario processes running at once, over all cells, so that the cores stay busy
    while a single cell is left.

    Any failure inside a cell becomes that cell's (or scenario's) error. On a stop (Ctrl-C, a signal, or a result that
    cannot be written) the cells still queued are dropped, the backend stops what still runs, the running cells
    get STOP_GRACE_S to end, and nothing half-done is stored.
    """
    folders = folder_sources(scenario_dirs)
    sources = scenario_sources(folders)
    stopping = threading.Event()
    scenario_pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="bnmatrix-scenario")

    def failed(cell: Cell, why: str, inputs: str = "", started: str | None = None) -> CellResult:
        return CellResult(cell=cell, status=CellStatus.ERROR, reason=why, backend=backend.name,
                          inputs_hash=inputs, started=started or now())

    def one(index: int, cell: Cell) -> CellResult:
        if stopping.is_set():
            raise Cancelled
        try:
            inputs_hash = cell.inputs_hash(sources)
            result = None if force else store.reusable(cell.id, inputs_hash, backend.name)
            if result is not None and result.status is CellStatus.RAN:  # its code, kept in this run too
                result.code = store.keep_code(cell, catalog, scenario_dirs)
            if result is None:
                hashes = scenario_hashes(cell, catalog, folders)
                kept = {} if force else store.reusable_scenarios(cell, hashes, sources, backend.name)
                progress(index, len(cells), cell, "starting", None)
                result = run_cell(cell, catalog, backend, store, timeout_s, inputs_hash,
                                  lambda text: progress(index, len(cells), cell, text, None), scenario_pool,
                                  scenario_dirs, hashes, kept)
        except (Cancelled, StoreError):
            stopping.set()
            raise
        except Exception as exc:  # a bnmatrix bug must cost one cell, not the run
            result = failed(cell, f"{type(exc).__name__}: {exc}")
        if stopping.is_set():
            raise Cancelled
        try:
            store.write_cell(result)
        except StoreError:
            stopping.set()
            raise
        except BnMatrixError as exc:  # a result that breaks its schema: a bug, recorded as the cell's error
            result = failed(cell, f"result not stored: {exc}", result.inputs_hash, result.started)
            store.write_cell(result)
        progress(index, len(cells), cell, "reused" if result.reused_from else "done", result)
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="bnmatrix-cell")
    futures: list[Future[CellResult]] = []
    try:  # a stop while the cells are submitted stops those already started too
        Stop.check()
        for index, cell in enumerate(cells, 1):
            futures.append(pool.submit(one, index, cell))
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=STOP_POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            Stop.check()  # a stop signal whose exception Python dropped (errors.Stop)
    except BaseException as exc:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        scenario_pool.shutdown(wait=False, cancel_futures=True)
        backend.close()  # kills the scenarios and containers still running
        settle(futures, STOP_GRACE_S)
        if isinstance(exc, Cancelled):  # a cell saw the stop first: what stopped the run is another's failure
            failures = [f.exception() for f in futures if f.done() and not f.cancelled()]
            store_error = next((e for e in failures if isinstance(e, StoreError)), None)
            if store_error is not None:
                raise store_error from None
        raise
    pool.shutdown()
    scenario_pool.shutdown()
    return [future.result() for future in futures]


def settle(futures: list[Future[Any]], timeout_s: float) -> None:
    """Wait at most `timeout_s` for the work that started: a cancelled future (a queued cell dropped by a stop)
    never completes, so waiting for it would wait forever."""
    wait([future for future in futures if not future.cancelled()], timeout=timeout_s)

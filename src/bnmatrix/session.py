"""A run of the matrix as one workflow over one state: options -> matrix and plan -> backend -> store (and the sweep
of what killed runs left) -> the cells -> finish -> prune -> an outcome, whose exit code a pure policy gives.

The CLI parses its arguments into RunOptions, hands them to a RunSession and prints; a library caller does the same:

    outcome = RunSession(RunOptions(select=("tf-2.15.1-cpu",), backend="venv")).run()
    print(outcome.directory, [cell.status for cell in outcome.results], exit_code(outcome))
"""

from __future__ import annotations

import fnmatch
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from bnmatrix import __version__
from bnmatrix.backends import Setup, select_backend
from bnmatrix.backends.venv import default_cache_dir
from bnmatrix.config import Matrix, default_matrix_path, parse_image_map
from bnmatrix.errors import EXIT_CELL_FAILED, EXIT_OK, BnMatrixError
from bnmatrix.history import prune
from bnmatrix.host import sweep_dead_run
from bnmatrix.plan import Cell, parse_shard, plan, shard
from bnmatrix.results import CellResult, RunStore, StoreError, new_run_id
from bnmatrix.runner import ProgressCallback, run_plan
from bnmatrix.verdict import CellStatus, Status

Say = Callable[[str], None]
# A live view of the cells: given the cell count, each cell's last duration and --jobs, it yields the callback the
# runner reports each cell's steps to (the CLI's is a rich progress display).
Watch = Callable[[int, dict[str, float], int], AbstractContextManager[ProgressCallback]]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What `bnmatrix run` is asked (its options, typed, once)."""

    matrix: Path | None = None  # default: ./matrix.yaml, else the one bnmatrix ships
    scenario_dirs: tuple[Path, ...] = ()
    select: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = ()
    shard: str | None = None  # K/N
    image_map: tuple[str, ...] = ()  # FROM=TO
    backend: str = "auto"
    results: Path = Path("results")
    jobs: int = 1
    force: bool = False
    rebuild: bool = False


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """How a run ended: every cell's result (those that finished, if it was stopped), and what stopped it."""

    run_id: str
    directory: Path
    scenarios: tuple[str, ...]
    results: list[CellResult] = field(default_factory=list)
    duration_s: float = 0.0
    stopped_by: int | None = None  # the signal that stopped the run before its end (SIGINT for Ctrl-C)
    select: tuple[str, ...] = ()

    @property
    def not_ran(self) -> list[CellResult]:
        return [r for r in self.results if r.status is not CellStatus.RAN]

    @property
    def failed(self) -> list[CellResult]:
        """The cells that fail the run: any that did not run, but a cell this host cannot serve that was not asked
        for by name or device (so that the default matrix on a host without a GPU succeeds)."""
        return [r for r in self.not_ran if r.status is not CellStatus.NOT_RUN or named(r, self.select)]

    @property
    def nothing_judged(self) -> bool:
        """Every scenario of every cell that ran is an error: no verdict at all."""
        outcomes = [s.status for r in self.results for s in r.scenarios.values()]
        return bool(outcomes) and all(status is Status.ERROR for status in outcomes)


def named(result: CellResult, select: Sequence[str]) -> bool:
    """Whether a --select glob asks for this cell by its id or by its device ('*-gpu*')."""
    return any(fnmatch.fnmatchcase(result.id, pattern) and (pattern == result.id or result.cell.device in pattern)
               for pattern in select)


def exit_code(outcome: RunOutcome) -> int:
    """The exit code of a run (pure): 128 + the signal that stopped it; 1 when a cell failed it (RunOutcome.failed)
    or no scenario gave a verdict; 0 otherwise."""
    if outcome.stopped_by is not None:
        return 128 + outcome.stopped_by
    return EXIT_CELL_FAILED if outcome.failed or outcome.nothing_judged else EXIT_OK


def load_matrix(path: Path | None, scenario_dirs: Sequence[Path] = ()) -> Matrix:
    matrix = Matrix.from_file(path or default_matrix_path())
    return matrix.with_scenario_dirs(scenario_dirs) if scenario_dirs else matrix


@contextmanager
def _silent(total: int, expected: dict[str, float], jobs: int) -> Iterator[ProgressCallback]:
    yield lambda index, count, cell, step, result: None


class RunSession:
    """One `bnmatrix run`: what it plans is known before it starts (cells); run() does the rest, once."""

    def __init__(self, options: RunOptions, say: Say = print):
        if options.jobs < 1:
            raise BnMatrixError(f"--jobs {options.jobs}: expected a whole number of at least 1")
        self.options = options
        self.say = say
        self.matrix = load_matrix(options.matrix, options.scenario_dirs)
        cells = plan(self.matrix, options.select, options.skip, options.scenarios, parse_image_map(options.image_map))
        self.cells: list[Cell] = shard(cells, *parse_shard(options.shard)) if options.shard else cells
        if not self.cells:
            raise BnMatrixError("the selection leaves no cell to run (see 'bnmatrix plan' with the same "
                                "--select/--skip)")

    def run(self, watch: Watch = _silent) -> RunOutcome:
        """Open the backend and the run's store, sweep what killed runs left, run every cell (reusing unchanged
        ones), close the run and prune old ones. A stop (Ctrl-C, SIGTERM, SIGHUP) closes the run `interrupted`
        with every finished cell kept; a store that cannot be written closes it as far as it can and raises."""
        options, matrix, cells = self.options, self.matrix, self.cells
        run_id = new_run_id()
        backend, why = select_backend(options.backend, Setup(matrix=matrix, run_id=run_id,
                                                             cache_dir=default_cache_dir(), rebuild=options.rebuild,
                                                             images=[cell.image for cell in cells]))
        self.say(why)
        try:
            store = RunStore(options.results, run_id, {
                "matrix": str(matrix.path), "matrix_hash": matrix.digest, "backend": backend.name,
                "bnmatrix_version": __version__,
                "selection": {"select": list(options.select), "skip": list(options.skip), "shard": options.shard,
                              "scenario": list(options.scenarios), "force": options.force},
                "cells": [cell.id for cell in cells],
            })
        except BaseException:
            backend.close()
            raise
        for dead in store.dead_runs:
            killed = sweep_dead_run(dead)
            self.say(f"run {dead} was killed before it finished: marked interrupted"
                     + (f", {killed} process{'es' if killed != 1 else ''} it left stopped" if killed else ""))
        outcome = RunOutcome(run_id=run_id, directory=store.directory, scenarios=cells[0].scenarios,
                             select=options.select)
        self.say(f"run {run_id}: {len(cells)} cell{'s' if len(cells) != 1 else ''} -> {store.directory}")
        started = time.monotonic()
        try:
            store.save_scenarios([matrix.catalog[name] for name in cells[0].scenarios])
            expected = {cell.id: store.previous_duration(cell.id) or 0.0 for cell in cells}
            with watch(len(cells), expected, options.jobs) as progress:
                results = run_plan(cells, matrix.catalog, backend, store, matrix.scenario_dirs, matrix.timeout_s,
                                   options.force or options.rebuild, progress, jobs=options.jobs)
        except KeyboardInterrupt as exc:  # Ctrl-C, or the CLI's SIGTERM/SIGHUP (cli.Terminated carries its number)
            store.finish("interrupted")
            return replace(outcome, stopped_by=getattr(exc, "signum", signal.SIGINT))
        except StoreError:
            with suppress(StoreError):  # as far as it can: else the next run marks it, as a killed run's
                store.finish("interrupted")
            raise
        finally:
            backend.close()
        store.finish("complete")
        deleted = prune(options.results, matrix.keep_runs)
        if deleted:
            self.say(f"kept the newest {matrix.keep_runs} runs of {options.results} (settings.keep_runs) and every "
                     f"run still cited; deleted {len(deleted)}: {', '.join(deleted)}")
        return replace(outcome, results=results, duration_s=time.monotonic() - started)

"""A run of the matrix, and a bisect, each as one workflow over one state: options -> matrix and plan -> backend ->
store (and the sweep of what killed runs left) -> the cells -> finish -> prune -> an outcome, whose exit code a pure
policy gives.

The CLI parses its arguments into RunOptions (BisectOptions), hands them to a RunSession (BisectSession) and prints;
a library caller does the same:

    outcome = RunSession(RunOptions(select=("tf-2.15.1-cpu",), backend="venv")).run()
    print(outcome.directory, [cell.status for cell in outcome.results], exit_code(outcome))
"""

from __future__ import annotations

import fnmatch
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from bnmatrix import __version__
from bnmatrix.backends import Setup, select_backend
from bnmatrix.backends.venv import default_cache_dir
from bnmatrix.config import Matrix, default_matrix_path, parse_image_map, unknown_scenario
from bnmatrix.errors import EXIT_CELL_FAILED, EXIT_OK, EXIT_USAGE, BnMatrixError
from bnmatrix.history import prune
from bnmatrix.host import sweep_dead_run
from bnmatrix.plan import Cell, parse_shard, plan, shard
from bnmatrix.runner import ProgressCallback, run_plan
from bnmatrix.store.files import StoreError
from bnmatrix.store.reader import load_run, runs_in
from bnmatrix.store.records import CellResult, RunKind, RunStatus
from bnmatrix.store.runstore import RunStore, new_run_id
from bnmatrix.store.searches import Conclusion, Outcome, Probe, latest_searches, read_searches
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
    jobs: int = os.cpu_count() or 1  # cells, and scenario processes, at once
    force: bool = False
    rebuild: bool = False
    fresh_processes: bool = False  # no zygote: every scenario imports TensorFlow itself


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
                                                             images=[cell.image for cell in cells],
                                                             fresh=options.fresh_processes, select=options.select))
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
        except KeyboardInterrupt as exc:  # Ctrl-C, or the CLI's SIGTERM/SIGHUP (errors.Terminated carries its number)
            store.finish(RunStatus.INTERRUPTED)
            return replace(outcome, stopped_by=getattr(exc, "signum", signal.SIGINT))
        except StoreError:
            with suppress(StoreError):  # as far as it can: else the next run marks it, as a killed run's
                store.finish(RunStatus.INTERRUPTED)
            raise
        finally:
            backend.close()
        store.finish(RunStatus.COMPLETE)
        _prune(options.results, matrix.keep_runs, self.say)
        return replace(outcome, results=results, duration_s=time.monotonic() - started)


@dataclass(frozen=True, kw_only=True)
class BisectOptions:
    """What `bnmatrix bisect` is asked: one search (scenario, good, bad) or every change point of a run (from_run)."""

    scenario: str | None = None
    good: str | None = None
    bad: str | None = None
    from_run: str | None = None  # a run directory; "" for the results root's latest run
    device: str | None = None  # default cpu; with from_run: every device
    variant: str | None = None
    package: str | None = None  # bisect this package's releases (--package keras), TF held at `tf`
    tf: str | None = None  # default: the matrix's newest final release
    pre: bool = False
    exhaustive: bool = False
    budget_min: float | None = None
    matrix: Path | None = None
    scenario_dirs: tuple[Path, ...] = ()
    backend: str = "auto"
    results: Path = Path("results")
    jobs: int = os.cpu_count() or 1  # cells, and scenario processes, at once


@dataclass(frozen=True, kw_only=True)
class BisectOutcome:
    """The conclusions of a bisect (the searches the results root had narrowed already apart), and how it ended."""

    conclusions: list[Conclusion] = field(default_factory=list)
    known: list[Conclusion] = field(default_factory=list)  # narrowed by an earlier bisect: not searched again
    directory: Path | None = None  # the bisect's run, if it was kept (nothing new run: dropped)
    stopped_by: int | None = None
    one_search: bool = True  # --scenario/--good/--bad, not --from-run

    @property
    def outcomes(self) -> set[Outcome]:
        return {c.outcome for c in self.conclusions}

    @property
    def wrong_question(self) -> bool:
        """The one search asked for has nothing to bisect: both its ends give the same verdict."""
        return self.one_search and self.outcomes == {Outcome.NOTHING_TO_BISECT}


def bisect_exit_code(outcome: BisectOutcome) -> int:
    """The exit code of a bisect (pure): 128 + the signal that stopped it; 2 when the one search asked for has
    nothing to bisect (both ends agree: a mistake in the question); 1 when a search could not finish; else 0."""
    if outcome.stopped_by is not None:
        return 128 + outcome.stopped_by
    if outcome.wrong_question:
        return EXIT_USAGE
    return EXIT_CELL_FAILED if outcome.outcomes & {Outcome.INCOMPLETE, Outcome.ENDPOINT_ERROR} else EXIT_OK


class BisectSession:
    """One `bnmatrix bisect`: its question checked when made, answered by run(), once."""

    def __init__(self, options: BisectOptions, say: Say = print):
        one = (options.scenario, options.good, options.bad)
        if options.from_run is not None and any(one):
            raise BnMatrixError("--from-run bisects every change point of a run; --scenario/--good/--bad name one "
                                "search: expected one or the other")
        if options.from_run is not None and (options.package or options.tf):
            raise BnMatrixError("--package and --tf name one search of a package's releases; --from-run bisects the "
                                "TF releases of a run's change points: expected one or the other")
        if options.tf and not options.package:
            raise BnMatrixError(f"--tf {options.tf}: holds TF fixed while --package's releases are searched; expected "
                                "--package NAME too (without it, --good and --bad are TF releases)")
        if options.from_run is None and not all(one):
            missing = [o for o, v in zip(("--scenario", "--good", "--bad"), one, strict=True) if not v]
            raise BnMatrixError(f"bisect: {', '.join(missing)} missing; expected --scenario NAME --good VERSION --bad "
                                "VERSION, or --from-run [RUN]")
        if options.jobs < 1:
            raise BnMatrixError(f"--jobs {options.jobs}: expected a whole number of at least 1")
        budget = options.budget_min
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise BnMatrixError(f"--budget {budget:g}: expected a number of minutes above 0")
        self.options = options
        self.say = say
        self.matrix = load_matrix(options.matrix, options.scenario_dirs)
        if options.variant is not None and options.variant not in self.matrix.variants:
            raise BnMatrixError(f"--variant {options.variant}: unknown; expected one of "
                                f"{', '.join(self.matrix.variants) or '(none)'}")
        if options.from_run is None:
            _check_search(options, self.matrix)

    def run(self, watch: Watch = _silent) -> BisectOutcome:
        """Plan the searches (the change points of a run, less those narrowed already; or the one asked for), open the
        backend and a bisect run, probe round after round, and keep the conclusions (a run that ran nothing new and
        concluded only what the root holds is dropped). A stop keeps every probe that finished."""
        from bnmatrix.bisect import Bisector
        from bnmatrix.history import change_points

        options, matrix = self.options, self.matrix
        run_id = new_run_id()
        backend, why = select_backend(options.backend, Setup(matrix=matrix, run_id=run_id,
                                                             cache_dir=default_cache_dir()))
        try:
            held = options.tf or (max((e.tf for e in matrix.versions if not Version(e.tf).is_prerelease), key=Version)
                                  if options.package else None)  # (a nightly's .devN is a pre-release too)
            bisector = Bisector(matrix, backend.serves_python, pre=options.pre, exhaustive=options.exhaustive,
                                pinned=options.package, held=held)
            source, known = None, []
            if options.from_run is not None:
                run = load_run(Path(options.from_run) if options.from_run else options.results / "latest")
                source = run.id
                points = change_points(run, [options.device] if options.device else [])
                narrowed = _narrowed(options.results, options.exhaustive)
                for name, device, variant, older, newer in points:
                    ends = {c.cell.tf: Probe.of(c, name) for c in (older, newer)}
                    found = narrowed.get((name, device, variant, older.cell.tf, newer.cell.tf))
                    if found is not None and all((probe := found.probe_at(version)) is not None
                                                 and probe.agrees(end) for version, end in ends.items()):
                        known.append(found)
                        continue
                    bisector.add(name, device, variant, older.cell.tf, newer.cell.tf, endpoints=ends)
                self.say(f"run {run.id} ({run.directory}): {len(points)} change point{'s' if len(points) != 1 else ''}"
                         + (f", {len(known)} already narrowed in {options.results}" if known else ""))
                for found in known:
                    self.say(f"  {found.answer} [run {found.run_id}]")
                if not bisector.searches:
                    backend.close()
                    return BisectOutcome(known=known, one_search=False)
            else:
                assert options.scenario and options.good and options.bad
                bisector.add(options.scenario, options.device or "cpu", options.variant, options.good, options.bad)
                if Version(options.good) > Version(options.bad):  # a change is always stored in release order
                    self.say(f"--good {options.good} is newer than --bad {options.bad}: searching from {options.bad} "
                             f"to {options.good}, in release order")
            self.say(why)
            for search in bisector.searches:
                between = len(search.candidates) - 2
                left_out = "; left out: " + ", ".join(f"{v} ({w})" for v, w in search.unavailable.items()) \
                    if search.unavailable else ""
                what = f" with {search.package} on TF {search.tf}" if search.package else ""
                self.say(f"{search.scenario} ({search.device}){what}: {search.candidates[0]} -> "
                         f"{search.candidates[-1]}, {between} release{'s' if between != 1 else ''} between{left_out}")
            store = RunStore(options.results, run_id, {
                "matrix": str(matrix.path), "matrix_hash": matrix.digest, "backend": backend.name,
                "bnmatrix_version": __version__, "cells": [],
                "bisect": {"from_run": source, "scenario": options.scenario, "good": options.good,
                           "bad": options.bad, "device": options.device, "variant": options.variant,
                           "pre": options.pre, "exhaustive": options.exhaustive,
                           **({"package": options.package, "tf": held} if options.package else {})},
            }, kind=RunKind.BISECT)
        except BaseException:
            backend.close()
            raise
        outcome = BisectOutcome(known=known, directory=store.directory, one_search=options.from_run is None)
        try:
            with watch(0, {}, options.jobs) as progress:
                conclusions = bisector.run(backend, store, options.jobs, progress, self.say,
                                           options.budget_min * 60 if options.budget_min else None)
        except KeyboardInterrupt as exc:  # Ctrl-C, or the CLI's SIGTERM/SIGHUP (errors.Terminated carries its number)
            store.write_searches([s.conclusion() for s in bisector.searches])
            store.finish(RunStatus.INTERRUPTED)
            return replace(outcome, stopped_by=getattr(exc, "signum", signal.SIGINT))
        except StoreError:
            with suppress(StoreError):
                store.finish(RunStatus.INTERRUPTED)
            raise
        finally:
            backend.close()
        store.finish(RunStatus.COMPLETE)
        dropped = _drop_if_known(store)
        outcome = replace(outcome, conclusions=conclusions, directory=None if dropped else store.directory)
        if not outcome.wrong_question:
            _prune(options.results, matrix.keep_runs, self.say)
        return outcome


def _prune(root: Path, keep: int, say: Say) -> None:
    """Delete the runs of a results root beyond settings.keep_runs (history.prune), and say which."""
    deleted = prune(root, keep)
    if deleted:
        say(f"kept the newest {keep} runs of {root} (settings.keep_runs) and every run still cited; deleted "
            f"{len(deleted)}: {', '.join(deleted)}")


def _drop_if_known(store: RunStore) -> bool:
    """Remove a bisect run that ran no cell and concluded only what the results root already holds (a rerun)."""
    if store.written:
        return False
    mine = read_searches(store.directory)
    earlier = {s.key: s.answer for s in latest_searches((d, m) for d, m in runs_in(store.root) if d != store.directory)}
    if not mine or any(earlier.get(s.key) != s.answer for s in mine):
        return False
    shutil.rmtree(store.directory)
    return True


def _narrowed(root: Path, exhaustive: bool) -> dict[tuple[Any, ...], Conclusion]:
    """The searches a results root has already narrowed to their release (as thoroughly as asked now), by the
    change they looked at."""
    if not root.is_dir():
        return {}
    return {s.span: s for s in latest_searches(runs_in(root))
            if s.outcome is Outcome.NARROWED and (s.exhaustive or not exhaustive)}


def _check_search(options: BisectOptions, matrix: Matrix) -> None:
    if options.scenario not in matrix.catalog:
        raise unknown_scenario(str(options.scenario), sorted(matrix.catalog), f"from {matrix.path}")
    for option, value in (("--good", options.good), ("--bad", options.bad)):
        try:
            Version(str(value))
        except InvalidVersion:
            raise BnMatrixError(f"{option} {value!r}: not a version; expected a release such as 1.10.0") from None
    if Version(str(options.good)) == Version(str(options.bad)):
        raise BnMatrixError(f"--good and --bad are both {options.good}; expected two different releases")
    device = options.device or "cpu"
    if not any(device in entry.devices for entry in matrix.versions):
        raise BnMatrixError(f"--device {device}: no entry of {matrix.path} has it; expected cpu or gpu")

"""The `bnmatrix` command: plan, run, report. Maps a user's mistake to one message and exit 2."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bnmatrix import __version__
from bnmatrix.backends import Setup, backend_kinds, gpu_prediction, select_backend
from bnmatrix.backends.venv import default_cache_dir
from bnmatrix.config import Matrix, default_matrix_path, parse_image_map
from bnmatrix.errors import EXIT_CELL_FAILED, EXIT_OK, EXIT_USAGE, BnMatrixError, Stop, Terminated
from bnmatrix.gpu import CANNOT, JIT, NATIVE, UNKNOWN
from bnmatrix.history import History, diff, import_archive
from bnmatrix.host import host_gpus
from bnmatrix.index import REGISTRY_URL, sync_matrix
from bnmatrix.plan import GITHUB_JOB_LIMIT, Cell, github_jobs, plan
from bnmatrix.runner import ProgressCallback
from bnmatrix.session import (
    BisectOptions,
    BisectSession,
    RunOptions,
    RunSession,
    bisect_exit_code,
    exit_code,
    load_matrix,
)
from bnmatrix.store.merge import merge_runs
from bnmatrix.store.reader import check_results_root, load_run
from bnmatrix.store.records import CellResult, Run
from bnmatrix.store.runstore import new_run_id
from bnmatrix.verdict import CellStatus, Status

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop:
    """The first stop signal stops cleanly (Terminated: running work killed, finished cells kept, the run closed; it
    is recorded in errors.Stop, so that a run notices it even where Python drops the exception); a second one, while
    that cleanup runs, ends bnmatrix at once: the next run marks the run interrupted and sweeps whatever it left (its
    children die with it)."""

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        if Stop.signum is not None:
            os.write(2, f"\nbnmatrix: {signal.Signals(signum).name} again: stopping at once; the next run marks "
                        "this one interrupted and sweeps what it left\n".encode())
            os._exit(128 + signum)
        Stop.signum = signum
        raise Terminated(signum)


def _styled(status: Status, note: str = "") -> str:
    return f"[{status.colour}]{status.icon} {status.word}[/]" + (f" ({escape(note)})" if note else "")


def _matrix_options(parser: argparse.ArgumentParser, scenarios_help: str) -> None:
    parser.add_argument("--matrix", type=Path, default=None,
                        help="the matrix file (default: ./matrix.yaml, else the one bnmatrix ships)")
    parser.add_argument("--scenarios", action="append", default=[], type=Path, metavar="DIR",
                        help=f"a folder of your own scenarios: {scenarios_help} (repeatable; see docs/scenarios.md)")


def _selection_options(parser: argparse.ArgumentParser) -> None:
    _matrix_options(parser, "every cell runs them too")
    parser.add_argument("--select", action="append", default=[], metavar="GLOB",
                        help="only cells whose id matches (repeatable), e.g. 'tf-1.*' or 'tf-2.15*-cpu'")
    parser.add_argument("--skip", action="append", default=[], metavar="GLOB",
                        help="leave out cells whose id matches (repeatable)")


def _backend_option(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument("--backend", choices=("auto", *backend_kinds()), default="auto",
                        help=help_text or "where cells run: " + "; ".join(
                            f"{name}: {kind.summary}" for name, kind in backend_kinds().items())
                        + "; auto (the default): the first of them this host can use")


def _image_map_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-map", action="append", default=[], metavar="FROM=TO",
                        help="use image TO where matrix.yaml names FROM (repeatable; overrides image-map.yaml)")


def _results_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                        help=help_text if "default" in help_text else f"{help_text} (default: results)")


def _jobs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="cells at once, and scenario processes at once over all cells (default: the CPU count)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnmatrix", description="Which TensorFlow versions update "
                                     "BatchNormalization statistics, pattern by pattern, from real runs.")
    parser.add_argument("--version", action="version", version=f"bnmatrix {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    plan_parser = commands.add_parser("plan", help="list the cells a run would do")
    _selection_options(plan_parser)
    plan_parser.add_argument("--format", choices=("table", "json", "github"), default="table",
                             help="github: a GitHub Actions matrix ({\"include\": [jobs]}) for fromJSON")
    plan_parser.add_argument("--json", action="store_const", const="json", dest="format", help="same as --format json")
    plan_parser.add_argument("--max-jobs", type=int, default=GITHUB_JOB_LIMIT, metavar="N",
                             help=f"with --format github: at most N jobs, cells grouped into shards (default "
                                  f"{GITHUB_JOB_LIMIT}, GitHub's limit)")
    _backend_option(plan_parser, "with the table: which cells this host can run with that backend, as run would")
    _image_map_option(plan_parser)

    run_parser = commands.add_parser("run", help="run the selected cells and keep a JSON result per cell")
    _selection_options(run_parser)
    run_parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                            help="only this scenario (repeatable)")
    run_parser.add_argument("--shard", default=None, metavar="K/N",
                            help="only the K-th of N deterministic shards of the selected cells")
    _backend_option(run_parser)
    _results_option(run_parser, "results root; the run goes to DIR/<run-id>, DIR/latest points at it")
    run_parser.add_argument("--force", action="store_true",
                            help="run the scenarios again even where the cell's inputs did not change "
                                 "(on the cached environments)")
    run_parser.add_argument("--rebuild", action="store_true",
                            help="recreate the cells' environments (venvs or images; downloads come from the cache); "
                                 "implies --force")
    run_parser.add_argument("--fresh-processes", action="store_true",
                            help="start every scenario as a fresh process, importing TensorFlow each time, rather "
                                 "than forking it from the cell's zygote, which imports it once")
    _jobs_option(run_parser)
    _image_map_option(run_parser)

    scenario_parser = commands.add_parser("scenario", help="work with scenarios: 'scenario new NAME'")
    scenario_commands = scenario_parser.add_subparsers(dest="scenario_command", required=True)
    new_parser = scenario_commands.add_parser("new", help="write a working skeleton of a scenario and its notes")
    new_parser.add_argument("name", help="the scenario's name: lower case letters, digits and _")
    new_parser.add_argument("--dir", type=Path, default=Path("scenarios"), metavar="DIR",
                            help="the folder to write it into (default: ./scenarios)")

    bisect_parser = commands.add_parser("bisect", help="find the exact release where a scenario's verdict changes",
                                        description="Binary-search the releases on the index between two versions "
                                        "for the first whose verdict differs from --good's, running only that "
                                        "scenario; or every change point of a run (--from-run).")
    bisect_parser.add_argument("--scenario", metavar="NAME", help="the scenario whose verdict changes")
    bisect_parser.add_argument("--good", metavar="VERSION", help="a release with the old verdict, e.g. 1.9.0")
    bisect_parser.add_argument("--bad", metavar="VERSION", help="a release with the new verdict, e.g. 1.10.1")
    bisect_parser.add_argument("--from-run", nargs="?", const="", default=None, metavar="RUN",
                               help="bisect every change point of a run (default: the results root's latest run)")
    bisect_parser.add_argument("--device", default=None, metavar="DEVICE",
                               help="the cells' device (default cpu; with --from-run: every device)")
    bisect_parser.add_argument("--variant", default=None, metavar="NAME", help="the cells' variant, e.g. tfkeras")
    bisect_parser.add_argument("--package", default=None, metavar="NAME",
                               help="search this package's releases instead of TF's (--good and --bad are its "
                                    "versions), TF held at --tf: e.g. --package keras --good 3.4.1 --bad 3.15.1")
    bisect_parser.add_argument("--tf", default=None, metavar="VERSION",
                               help="with --package: the TF release held fixed (default: the matrix's newest)")
    bisect_parser.add_argument("--pre", action="store_true", help="release candidates and betas count too")
    bisect_parser.add_argument("--exhaustive", action="store_true",
                               help="run every release in the range instead of a binary search (shows a verdict "
                                    "that comes back)")
    bisect_parser.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                               help="start no new probe after this long (run again to go on)")
    _matrix_options(bisect_parser, "--scenario may name one of them")
    _backend_option(bisect_parser)
    _results_option(bisect_parser, "results root: the probes are a run there, reused like any other")
    _jobs_option(bisect_parser)

    sync_parser = commands.add_parser("sync", help="compare matrix.yaml with the package index: new releases, newer "
                                      "patches, each release's Pythons", description="Show what the matrix lacks "
                                      "against the index the cells install from (a readable diff; exit 0). A new "
                                      "minor release is added with its neighbour's pins and variants, a newer patch "
                                      "replaces the listed one, on the newest Python the scenarios run on that it "
                                      "has a wheel for; yanked releases are left out.")
    sync_parser.add_argument("--matrix", type=Path, default=None,
                             help="the matrix file (default: ./matrix.yaml, else the one bnmatrix ships)")
    sync_parser.add_argument("--index-url", default=None, metavar="URL",
                             help="a PEP 503/691 index, file:// too (default: the matrix's settings.index_url)")
    sync_parser.add_argument("--pre", action="store_true",
                             help="add the newest release candidate of a minor release not yet out, as a pre entry")
    sync_parser.add_argument("--nightly", action="store_true",
                             help="add a CPU entry of tf-nightly's newest nightly (its exact version), as a nightly "
                                  "entry")
    sync_parser.add_argument("--registry-url", default=REGISTRY_URL, metavar="URL",
                             help=f"where GPU images' tags are looked up: Docker Hub's API (default {REGISTRY_URL})")
    action = sync_parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the matrix file (its comments and layout stay)")
    action.add_argument("--check", action="store_true", help="exit 1 when the matrix is behind the index (for CI)")

    merge_parser = commands.add_parser("merge", help="merge result directories (e.g. CI shards) into one run")
    merge_parser.add_argument("inputs", nargs="+", type=Path, metavar="DIR",
                              help="run directories, results roots or folders holding them")
    merge_parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the merged run directory")

    diff_parser = commands.add_parser("diff", help="what changed between two runs (exit 1 when anything did)")
    diff_parser.add_argument("before", metavar="RUN_A", help="a run directory, or a run id in --results")
    diff_parser.add_argument("after", metavar="RUN_B", nargs="?", default="latest",
                             help="a run directory, or a run id in --results (default: latest)")
    _results_option(diff_parser, "the results root the run ids are in (default: results)")

    import_parser = commands.add_parser("import", help="add the runs of a published archive to a results root")
    import_parser.add_argument("archive", type=Path, metavar="FILE", help="a results-archive.tar.gz")
    _results_option(import_parser, "the results root to add the runs to (default: results)")

    report_parser = commands.add_parser("report", help="render the HTML matrix of a results root (or one run)")
    _results_option(report_parser, "a results root: each cell's newest result, its history and the bisect "
                                   "conclusions (default: results); or one run directory: that run alone")
    report_parser.add_argument("--out", type=Path, default=Path("public"), metavar="DIR")
    report_parser.add_argument("--previous", type=Path, default=None, metavar="DIR",
                               help="with one run directory: an earlier run (or a folder holding one, or none yet) "
                                    "to mark what changed")
    report_parser.add_argument("--matrix", type=Path, default=None, metavar="FILE",
                               help="judge the results by this matrix file's current expect: rules (default: the "
                                    "expectations recorded with each cell)")
    return parser


def command_plan(args: argparse.Namespace, console: Console) -> int:
    matrix = load_matrix(args.matrix, args.scenarios)
    cells = plan(matrix, args.select, args.skip, image_map=parse_image_map(args.image_map))
    if args.format == "json":  # with what each backend installs for the cell (a GPU venv adds CUDA's wheels), and
        kinds = backend_kinds()  # for a GPU cell what its release does on this host's first GPU (nvidia-smi)
        gpus = host_gpus() if any(cell.device == "gpu" for cell in cells) else []

        def gpu(cell: Cell) -> dict[str, Any] | None:
            prediction = gpu_prediction(cell, gpus)
            return None if prediction is None else {"on": gpus[0].describe(), **prediction.describe()}

        print(json.dumps([{**cell.describe(), "installs": {name: list(kind.installs(cell)) for name, kind in
                                                           kinds.items()}, "gpu": gpu(cell)} for cell in cells],
                         indent=1))
        return EXIT_OK
    if args.format == "github":
        if args.max_jobs < 1 or args.max_jobs > GITHUB_JOB_LIMIT:
            raise BnMatrixError(f"--max-jobs {args.max_jobs}: expected 1 to {GITHUB_JOB_LIMIT}")
        print(json.dumps({"include": github_jobs(cells, matrix.runs_on, args.max_jobs)}, separators=(",", ":")))
        return EXIT_OK
    scenarios = cells[0].scenarios if cells else matrix.scenarios
    backend, why = select_backend(args.backend, Setup(matrix=matrix, run_id=new_run_id(), cache_dir=default_cache_dir(),
                                                      images=[cell.image for cell in cells], sweep=False,
                                                      select=args.select))
    try:
        unserved = {cell.id: reason for cell in cells if (reason := backend.serves(cell))}
        predicted = {cell.id: prediction for cell in cells if cell.id not in unserved
                     and (prediction := gpu_prediction(cell, backend.cell_gpus(cell)))}
    finally:
        backend.close()
    table = Table(title=f"{len(cells)} cells from {matrix.path}",
                  caption=f"each runs {len(scenarios)} scenarios: {', '.join(scenarios)}")
    images = backend.uses_images
    for column in ("cell", "python", "requirements", *(["image"] if images else []), "steps", "here"):
        table.add_column(column, overflow="fold")
    for cell in cells:
        here = Text("– not run", style=Status.NOT_RUN.colour) if cell.id in unserved else Text("✔ runs" + {
            JIT: " after a PTX JIT", CANNOT: " (asked for: predicted to fail)", UNKNOWN: " (not predicted)"}.get(
            predicted[cell.id].outcome if cell.id in predicted else NATIVE, ""))
        table.add_row(cell.id, cell.python, " ".join(cell.requirements), *([cell.image] if images else []),
                      str(cell.steps), here)
    console.print(table)
    console.print(why, highlight=False, soft_wrap=True, markup=False)
    by_reason: dict[str, list[str]] = {}
    for cell_id, reason in unserved.items():
        by_reason.setdefault(reason, []).append(cell_id)
    for reason, ids in by_reason.items():
        console.print(f"{len(ids)} cell{'s' if len(ids) != 1 else ''} cannot run here ({', '.join(ids)}): "
                      f"{reason}", highlight=False, soft_wrap=True, markup=False)
    for cell_id, prediction in predicted.items():
        if prediction.outcome != NATIVE:
            console.print(f"{cell_id}: {prediction.reason}", highlight=False, soft_wrap=True, markup=False)
    return EXIT_OK


SCENARIOS_DONE = re.compile(r"scenarios (\d+)/(\d+) done")  # the step runner.run_cell reports


@contextlib.contextmanager
def _cell_progress(console: Console, total: int | None, expected: dict[str, float] | None = None,
                   jobs: int = 1) -> Iterator[ProgressCallback]:
    """A live view of the cells being run (one line each, with its current step); yields the callback run_plan
    reports to. With `expected` (each cell's duration when it last ran) the overall line says how long is left."""
    columns = (TextColumn("{task.fields[label]}"), BarColumn(bar_width=16), TextColumn("{task.fields[count]}"),
               TextColumn("{task.description}"), TimeElapsedColumn())
    known = [v for v in (expected or {}).values() if v]
    typical = sorted(known)[len(known) // 2] if known else None
    with Progress(*columns, console=console, refresh_per_second=4) as progress:  # 10 a second cost 3% of a core
        overall = progress.add_task("", total=total, label="cells", count=f"0/{total}" if total else "0 done")
        running: dict[str, tuple[TaskID, float]] = {}  # cell id -> its progress task, start time
        finished: set[str] = set()
        lock = threading.Lock()

        def left() -> str:
            """About how long the cells still to finish take, from their last durations, `jobs` at a time."""
            if expected is None or typical is None or finished >= expected.keys():
                return ""
            now = time.monotonic()
            seconds = sum(max(0.0, (expected.get(cell_id) or typical) - (now - running[cell_id][1]
                                                                         if cell_id in running else 0.0))
                          for cell_id in expected if cell_id not in finished) / max(1, jobs)
            return f"about {seconds / 60:.0f} min left" if seconds >= 90 else f"about {seconds:.0f} s left"

        def report_progress(index: int, count: int, cell: Cell, step: str, result: CellResult | None) -> None:
            with lock:
                if cell.id not in running:
                    task = progress.add_task("", total=None, label=f"{index}/{count} {cell.id}", count="")
                    running[cell.id] = (task, time.monotonic())
                task, cell_started = running[cell.id]
                progress.update(task, description=escape(step))
                scenarios = SCENARIOS_DONE.match(step)  # the bar: the cell's scenarios (none while it is set up)
                if scenarios:
                    done, of = int(scenarios[1]), int(scenarios[2])
                    progress.update(task, completed=done, total=of, count=f"{done}/{of}")
                if step.startswith("waiting"):  # worth a line of its own: it may last long
                    progress.console.print(f"{cell.id}: {escape(step)}", highlight=False, soft_wrap=True)
                if result is None:
                    progress.update(overall, description=left())
                    return
                progress.remove_task(task)
                del running[cell.id]
                finished.add(cell.id)
                progress.advance(overall)
                cells_done = len(finished)
                progress.update(overall, description=left(),
                                count=f"{cells_done}/{total}" if total else f"{cells_done} done")
                progress.console.print(f"[{index}/{count}] {cell.id}: {step} in "
                                       f"{time.monotonic() - cell_started:.0f} s: {_verdict_line(result)}",
                                       highlight=False)

        yield report_progress


def command_run(args: argparse.Namespace, console: Console) -> int:
    session = RunSession(RunOptions(
        matrix=args.matrix, scenario_dirs=tuple(args.scenarios), select=tuple(args.select), skip=tuple(args.skip),
        scenarios=tuple(args.scenario), shard=args.shard, image_map=tuple(args.image_map), backend=args.backend,
        results=args.results, jobs=args.jobs, force=args.force, rebuild=args.rebuild,
        fresh_processes=args.fresh_processes),
        say=functools.partial(console.print, highlight=False, soft_wrap=True, markup=False))
    outcome = session.run(functools.partial(_cell_progress, console))
    if outcome.stopped_by is not None:
        console.print(f"[bold red]interrupted[/] ({signal.Signals(outcome.stopped_by).name}): finished cells are "
                      f"kept in {escape(str(outcome.directory))}; run again to go on (unchanged cells are reused)")
        return exit_code(outcome)
    console.print(_verdict_table(outcome.results, outcome.scenarios))
    console.print(f"{len(outcome.results) - len(outcome.not_ran)}/{len(outcome.results)} cells ran in "
                  f"{outcome.duration_s:.0f} s; results in {outcome.directory}", soft_wrap=True)
    for result in outcome.not_ran:
        console.print(f"  [bold]{result.id}[/]: {result.status.value}: {escape(str(result.reason))}", soft_wrap=True)
    if any(r.status is CellStatus.NOT_RUN and r.cell.device == "gpu" for r in outcome.not_ran):
        console.print("  (GPU cells need a GPU host; they do not fail the run unless selected by name or "
                      "device, e.g. --select '*-gpu*'; --skip '*-gpu*' leaves them out)")
    if outcome.nothing_judged:
        console.print("[bold red]every scenario of every cell that ran is an error[/]: no verdict at all; see the "
                      "reasons above and the logs")
    return exit_code(outcome)


def _verdict_line(result: CellResult) -> str:
    """A finished cell in one line: its verdicts counted (the table at the end has them scenario by scenario)."""
    if result.status is not CellStatus.RAN:
        return f"{result.status.value}: {escape(str(result.reason))}"
    counts: dict[Status, int] = {}
    for scenario in result.scenarios.values():
        counts[scenario.status] = counts.get(scenario.status, 0) + 1
    return " · ".join(f"{count} {_styled(status)}" for status, count in
                      sorted(counts.items(), key=lambda item: list(Status).index(item[0])))


def _verdict_text(result: CellResult, name: str) -> str:
    scenario = result.scenarios.get(name)
    if scenario is None:
        return _styled(result.entry_status(name))
    updates = scenario.updates_text
    return f"{_styled(scenario.status)}{f' ({updates})' if updates else ''}"


def _verdict_table(results: list[CellResult], scenarios: Sequence[str]) -> RenderableType:
    """A few cells: a row per scenario, with words and effective updates; many: a row per cell, icons (drawn
    as lines of text: a rich Table of 74 x 18 cells took 0.4 s to measure, most of a rerun that reuses all)."""
    if len(results) <= 6:
        table = Table(title="verdicts (effective updates of the mean / steps)")
        table.add_column("scenario")
        for result in results:
            table.add_column(result.id)
        for name in scenarios:
            table.add_row(name, *[_verdict_text(result, name) for result in results])
        return table
    width = max(len(result.id) for result in results)
    icons = {status: Text(status.icon, style=status.colour) for status in Status}
    for icon in icons.values():
        icon.align("center", 3)
    lines = [Text("verdicts: " + " ".join(f"{i}={name}" for i, name in enumerate(scenarios, 1)), style="italic"),
             Text("cell".ljust(width) + "".join(f"{i:^3}" for i in range(1, len(scenarios) + 1)), style="bold")]
    for result in results:
        line = Text(result.id.ljust(width)).append_text(Text("").join(icons[result.entry_status(name)]
                                                                      for name in scenarios))
        line.rstrip()
        lines.append(line)
    return Group(*lines)


def command_bisect(args: argparse.Namespace, console: Console) -> int:
    say = functools.partial(console.print, highlight=False, soft_wrap=True, markup=False)
    session = BisectSession(BisectOptions(
        scenario=args.scenario, good=args.good, bad=args.bad, from_run=args.from_run, device=args.device,
        variant=args.variant, package=args.package, tf=args.tf, pre=args.pre, exhaustive=args.exhaustive,
        budget_min=args.budget, matrix=args.matrix,
        scenario_dirs=tuple(args.scenarios), backend=args.backend, results=args.results, jobs=args.jobs), say=say)
    outcome = session.run(lambda total, expected, jobs: _cell_progress(console, None))
    code = bisect_exit_code(outcome)
    if outcome.stopped_by is not None:
        console.print(f"[bold red]interrupted[/] ({signal.Signals(outcome.stopped_by).name}): the probes that "
                      f"finished are kept in {escape(str(outcome.directory))}; run the same command again to go on "
                      "(nothing is run twice)")
    elif outcome.wrong_question:
        _say_error(outcome.conclusions[0].answer)
    elif outcome.conclusions:
        for conclusion in outcome.conclusions:
            say(conclusion.answer)
        if outcome.directory is None:
            say(f"nothing new was run: these conclusions are in {args.results} already")
        else:
            say(f"conclusions in {outcome.directory / 'bisect.json'}")
    return code


def command_scenario(args: argparse.Namespace, console: Console) -> int:
    from bnmatrix.config import new_scenario

    script = new_scenario(args.name, args.dir)
    console.print(f"wrote {script} and {script.with_suffix('.yaml')}; try it with: "
                  f"bnmatrix run --scenarios {args.dir} --scenario {args.name} --select 'tf-2.15.1-cpu'",
                  highlight=False, soft_wrap=True)
    return EXIT_OK


def command_sync(args: argparse.Namespace, console: Console) -> int:
    found = sync_matrix(args.matrix or default_matrix_path(), args.index_url, args.pre, args.nightly, args.registry_url)
    say = functools.partial(console.print, highlight=False, soft_wrap=True, markup=False)
    say(f"{found.path} against {found.index_url} ({found.package}):")
    for line in [*found.changes, *(f"· {n}" for n in found.images), *(f"· left out {n}" for n in found.left_out)]:
        say(f"  {line}")
    if not found.behind:
        say(f"{found.path} is up to date with the index.")
        return EXIT_OK
    if args.write:
        found.write()
        say(f"{found.path} rewritten: {len(found.changes)} change{'s' if len(found.changes) != 1 else ''}.")
        return EXIT_OK
    say(found.diff().rstrip("\n"))
    if args.check:
        say(f"{found.path} is behind the index: `bnmatrix sync --write` brings it up to date.")
        return EXIT_CELL_FAILED
    say(f"`bnmatrix sync --write` applies {'these' if len(found.changes) != 1 else 'this'} "
        f"{len(found.changes)} change{'s' if len(found.changes) != 1 else ''}.")
    return EXIT_OK


def command_merge(args: argparse.Namespace, console: Console) -> int:
    out = merge_runs(args.inputs, args.out)
    merged = load_run(out)
    console.print(f"merged {len(merged.manifest.merged_from or [])} runs, {len(merged.cells)} cells -> {out}")
    return EXIT_OK


def _run_at(text: str, root: Path) -> Run:
    """A run given as a directory, or as an id (or 'latest') in the results root."""
    path = Path(text)
    if (path / "manifest.json").is_file():
        return load_run(path)
    return History.load(root).find(text)


def command_diff(args: argparse.Namespace, console: Console) -> int:
    before, after = _run_at(args.before, args.results), _run_at(args.after, args.results)
    found = diff(before, after)
    console.print(f"{before.id} -> {after.id}: {len(found.changes)} of {found.compared} verdicts changed",
                  highlight=False)
    if not found.compared:
        console.print("  nothing compared: the two runs hold no cell that ran in both", highlight=False)
    for change in found.changes:
        was, now_ = change.before, change.after
        full = was.status == now_.status
        what = f" ({' and '.join(was.differences(now_))})" if full else ""
        console.print(f"  {change.cell} {change.scenario}: {_styled(was.status, was.note(full))} -> "
                      f"{_styled(now_.status, now_.note(full))}{what}", highlight=False)
    for cell_id, packages in found.packages.items():  # the cell's TF is its own: what else it installed changed
        console.print(f"  {cell_id} installed other dependencies ({len(packages)}): {', '.join(packages)}",
                      highlight=False, soft_wrap=True, markup=False)
    for label, cells in (("only in " + before.id, found.only_before), ("only in " + after.id, found.only_after)):
        if cells:
            console.print(f"  {label} (not compared): {', '.join(cells)}", highlight=False, soft_wrap=True)
    return EXIT_CELL_FAILED if found.changes else EXIT_OK


def command_import(args: argparse.Namespace, console: Console) -> int:
    check_results_root(args.results)
    added = import_archive(args.archive, args.results)
    console.print(f"{len(added)} run{'s' if len(added) != 1 else ''} added to {args.results}"
                  + (f": {', '.join(added)}" if added else " (it holds them all already)"), highlight=False)
    return EXIT_OK


def command_report(args: argparse.Namespace, console: Console) -> int:
    from bnmatrix.report import write_report

    matrix = Matrix.from_file(args.matrix) if args.matrix else None
    index = write_report(args.results, args.out, args.previous, matrix)
    console.print(f"report written: {index}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    console = Console(stderr=False, soft_wrap=not sys.stdout.isatty())  # a pipe or a log: one line per line
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error (exit 2) or help (exit 0)
        return int(exc.code or 0)
    handlers = {"plan": command_plan, "run": command_run, "merge": command_merge, "report": command_report,
                "scenario": command_scenario, "bisect": command_bisect, "diff": command_diff,
                "import": command_import, "sync": command_sync}
    Stop.signum = None
    previous = {signum: signal.signal(signum, _Stop.handle) for signum in STOP_SIGNALS}
    try:
        code = handlers[args.command](args, console)
    except KeyboardInterrupt as exc:  # outside a run (plan, report, merge): nothing to record
        code = 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)
    except BnMatrixError as exc:
        _say_error(str(exc))
        code = exc.exit_code
    except OSError as exc:  # the file system refused (a name too long, a full disk): the user's to fix
        _say_error(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
        code = EXIT_USAGE
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _exit_if_stuck(code)
    return code


def _say_error(message: str) -> None:
    """One line on stderr, `bnmatrix: ...`; a control character from the data (a newline in a file's name) is
    shown escaped, so that no message can forge a line of its own."""
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message)
    Console(stderr=True, soft_wrap=True).print(f"[bold red]bnmatrix:[/] {escape(text)}", highlight=False)


def _exit_if_stuck(code: int) -> None:
    """A cell that outlived a stop's grace (runner.STOP_GRACE_S) would keep Python from exiting, which waits for
    every worker thread: exit without it (what it started dies with this process)."""
    stuck = [t for t in threading.enumerate() if t.name.startswith("bnmatrix-") and t.is_alive()]
    deadline = time.monotonic() + 5
    for thread in stuck:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in stuck):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

"""How fast a run is, side by side with plain shell loops doing the same work on the same cells.

Each case (cold or warm environments, 1 or 3 cells, the original 4 or all scenarios) is measured in
alternating rounds for: bnmatrix with 1 and N jobs (venv backend), a naive loop (`python -m venv`,
`pip install`, each script), the same loop with uv, and N uv loops in parallel, the floor: installs
N at a time, then every (cell, scenario) N at a time through xargs. Every method runs the same
scenario scripts with the same arguments and the same requirements.

Cold: no environment exists; downloads are cached (uv's cache for bnmatrix and the uv loops; pip's own
cache for the pip loop). Warm: every environment exists; only the scenarios run. Then the nothing-
changed rerun: `bnmatrix run` of the whole default matrix on a results root where every cell is
reusable (a copy of tests/data), and `bnmatrix plan`.

--scenario-cost measures what one scenario costs against one `import tensorflow`: a warm cell (a TF 1.x,
a 2.x before 2.16, a 2.16+ one) runs every scenario of the default matrix (`--force --jobs N`), its wall
time x N / the number of scenarios is the core time one scenario costs, and the TF import is timed in the
same environment right after; each scenario's own timings (startup, import, build and train, teardown)
say where the time goes. With --write, it replaces that section of the file only.

usage: python benchmarks/run_speed.py [--rounds 3] [--jobs 2] [--case cold-3x4 ...] [--write docs/benchmarks.md]
       python benchmarks/run_speed.py --scenario-cost [--rounds 3] [--jobs 2] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bnmatrix
from bnmatrix.backends.venv import find_interpreter, uv_binary
from bnmatrix.config import Matrix, default_matrix_path
from bnmatrix.plan import Cell, plan

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
ORIGINAL = ["keras_bn_custom_estimator", "layers_bn_custom_estimator", "keras_bn_model_to_estimator",
            "layers_bn_session"]
CELLS = {1: ["tf-2.15.1-cpu"], 3: ["tf-1.15.5-cpu", "tf-2.6.5-cpu", "tf-2.15.1-cpu"]}
# name -> (environments, cells, scenarios)
CASES = {"cold-1x4": ("cold", 1, "4"), "cold-3x4": ("cold", 3, "4"), "warm-1x4": ("warm", 1, "4"),
         "warm-3x4": ("warm", 3, "4"), "warm-1xall": ("warm", 1, "all"), "warm-3xall": ("warm", 3, "all")}
DEFAULT_CASES = ["cold-1x4", "cold-3x4", "warm-3x4", "warm-1xall"]
METHODS = ["bnmatrix -j1", "bnmatrix -jN", "pip loop", "uv loop", "uv xN (floor)"]


class Bench:
    """One case's cells, scenarios and folders; `run(method)` does the work once and returns the wall time."""

    def __init__(self, work: Path, cells: list[Cell], scenarios: list[str], jobs: int):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.cells = cells
        self.scenarios = scenarios
        self.jobs = jobs
        self.uv = uv_binary() or sys.exit("run_speed: uv is needed (pip install uv)")
        self.pythons = {}
        for cell in cells:
            interpreter, looked = find_interpreter(cell.python)
            if interpreter is None:
                sys.exit(f"run_speed: no Python {cell.python} for {cell.id} (looked in {', '.join(looked)})")
            self.pythons[cell.id] = str(interpreter.path)
        # One download cache for bnmatrix (its own, in BNMATRIX_CACHE) and the uv loops, as on a user's machine.
        self.downloads = self.folder("bnmatrix") / "uv"

    def env(self, method: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "BNMATRIX_"))}
        env.update(UV_CACHE_DIR=str(self.downloads), PIP_CACHE_DIR=str(self.work / "pip-cache"),
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONPATH=str(SCENARIOS), CUDA_VISIBLE_DEVICES="",
                   BNMATRIX_CACHE=str(self.folder(method)))
        return env

    def folder(self, method: str) -> Path:
        """Where a method keeps its environments (both bnmatrix methods share theirs: BNMATRIX_CACHE)."""
        return self.work / ("bnmatrix" if method.startswith("bnmatrix") else re.sub(r"\W+", "_", method).strip("_"))

    def venvs(self, method: str) -> Path:
        return self.folder(method) / "venvs"

    def clear(self, method: str) -> None:
        """Cold: no environment of this method is left (the download caches stay)."""
        shutil.rmtree(self.venvs(method), ignore_errors=True)

    def script(self, method: str) -> str:
        """The shell loop of a baseline method."""
        venvs = self.venvs(method)
        lines = ["set -e", f"mkdir -p {venvs}"]
        installs, runs = [], []
        for cell in self.cells:
            venv = venvs / cell.id
            python = f"{venv}/bin/python"
            reqs = " ".join(shlex.quote(r) for r in cell.requirements)
            if method == "pip loop":
                install = (f"{self.pythons[cell.id]} -m venv {venv} && {python} -m pip install -q -U pip "
                           f"&& {python} -m pip install -q --index-url {cell.index_url} {reqs}")
            else:
                compile_flag = "" if cell.python == "3.6" else "--compile-bytecode"
                install = (f"{self.uv} venv -q --seed --python {self.pythons[cell.id]} {venv} && {self.uv} pip "
                           f"install -q --python {python} --index-url {cell.index_url} {compile_flag} {reqs}")
            installs.append(f"[ -x {python} ] || {{ {install}; }}")
            args = f"--steps {cell.steps} --device {cell.device} --tf-version {cell.tf}"
            runs += [f"{python} {SCENARIOS / name}.py {args} >/dev/null 2>&1 || true" for name in self.scenarios]
        if method == "uv xN (floor)":
            for part in (installs, runs):
                lines.append(f"xargs -P {self.jobs} -d '\\n' -I CMD bash -c CMD <<'EOF'\n" + "\n".join(part)
                             + "\nEOF")
        else:
            lines += installs + runs
        return "\n".join(lines) + "\n"

    def run(self, method: str) -> float:
        if method.startswith("bnmatrix"):
            jobs = 1 if method == "bnmatrix -j1" else self.jobs
            results = Path(tempfile.mkdtemp(dir=self.work))  # a fresh results root: nothing is reused
            command = [sys.executable, "-m", "bnmatrix", "run", "--backend", "venv", "--jobs", str(jobs),
                       "--results", str(results)]
            command += [x for cell in self.cells for x in ("--select", cell.id)]
            command += [x for name in self.scenarios for x in ("--scenario", name)]
        else:
            command = ["bash", "-c", self.script(method)]
        started = time.monotonic()
        done = subprocess.run(command, env=self.env(method), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        elapsed = time.monotonic() - started
        # bnmatrix exits 1 when a verdict is unexpected or a cell errs: here only a crash (2, 130) is a failure.
        allowed = (0, 1) if method.startswith("bnmatrix") else (0,)
        if done.returncode not in allowed:
            sys.exit(f"run_speed: {method} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return elapsed


def measure(bench: Bench, state: str, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    for method in METHODS:  # once, untimed: the downloads are cached, and (warm) every environment exists
        bench.run(method)
    for number in range(rounds):
        order = METHODS if number % 2 == 0 else METHODS[::-1]  # alternate, so no method always goes first
        for method in order:
            if state == "cold":
                bench.clear(method)
            times[method].append(bench.run(method))
            print(f"  round {number + 1}: {method}: {times[method][-1]:.1f} s", flush=True)
    return times


def nothing_changed(work: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Wall times of `bnmatrix run` (every cell reusable) and `bnmatrix plan` on the default matrix."""
    root = work / "unchanged"
    shutil.copytree(REPO / "tests" / "data", root)
    env = {**os.environ, "BNMATRIX_CACHE": str(work / "unchanged-cache")}  # proves no env is needed
    # The committed run's cells of Pythons with local Docker bases were planned with an image map (an image is
    # part of a cell's definition): map the same images, so that this checkout's plan matches it.
    cells = [json.loads(p.read_text())["cell"] for p in (root / "run" / "cells").glob("*.json")]
    recorded = {cell["id"]: cell["image"] for cell in cells}
    images = {cell.image: recorded[cell.id] for cell in plan(Matrix.from_file(default_matrix_path()))
              if recorded.get(cell.id, cell.image) != cell.image}
    mapped = [x for pair in images.items() for x in ("--image-map", "=".join(pair))]
    run, plans = [], []
    for _ in range(rounds + 1):
        for command, times in ((["run", "--backend", "venv", "--results", str(root), *mapped], run),
                               (["plan", "--backend", "venv"], plans)):  # a Docker registry probe is the host's
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "bnmatrix", *command], env=env, capture_output=True,
                                  text=True)
            times.append(time.monotonic() - started)
            if done.returncode != 0 or (command[0] == "run" and "reused" not in done.stdout + done.stderr):
                sys.exit(f"run_speed: bnmatrix {command[0]} did not reuse every cell:\n{done.stdout[-2000:]}")
    if (work / "unchanged-cache").exists():
        sys.exit("run_speed: the nothing-changed rerun touched an environment")
    return run, plans


# TF 1.x, 2.x before 2.16 (tf-2.6.5, where the cost was first measured, and the newest), 2.16+ (Keras 3)
COST_CELLS = ["tf-1.15.5-cpu", "tf-2.6.5-cpu", "tf-2.15.1-cpu", "tf-2.16.2-cpu"]
COST_HEADING = "## What one scenario costs"
PHASES = {"startup_s": "start", "import_s": "import", "train_s": "build and train", "teardown_s": "teardown"}


WAYS = {"fresh": ["--fresh-processes"], "zygote": []}  # every scenario a fresh process, or forked from the zygote


def scenario_cost(jobs: int, rounds: int, work: Path) -> str:
    """The cost-per-scenario section: per cell and way of starting the scenarios (fresh processes, or forks of the
    cell's zygote), the wall time of every scenario (--force) against the TF import."""
    matrix = Matrix.from_file(default_matrix_path())
    env = dict(os.environ)
    rows = [f"| cell | scenarios started as | scenarios | the cell's wall, --jobs {jobs} (the command's) | "
            "core time per scenario | "
            f"`import tensorflow` | per scenario / import | summed over the scenarios: {' · '.join(PHASES.values())} "
            "· the rest |", "|---" * 8 + "|"]
    for cell_id in COST_CELLS:
        (cell,) = plan(matrix, select=[cell_id])
        for way, options in WAYS.items():
            rows.append(_cost_row(cell_id, len(cell.scenarios), way, options, jobs, rounds, work, env))
    return (f"{COST_HEADING}\n\nMade by `python benchmarks/run_speed.py --scenario-cost --write docs/benchmarks.md` "
            f"on {machine()}: {rounds} rounds after one untimed run, medians. A warm cell runs every scenario of "
            f"the default matrix (`bnmatrix run --force --jobs {jobs}`), each scenario a fresh process that imports "
            "TensorFlow (`--fresh-processes`) or a fork of the cell's zygote, which imported it once (the default); "
            "the core time one scenario costs is the cell's wall time (from its start, the environment checked and "
            f"the zygote's import included, to its last scenario's end, as its result records it) x {jobs} / the "
            "scenarios, set against `python -c \"import tensorflow\"` in the same environment, timed three times "
            "right after each run (their median). The last column is where the cell's core time goes, as each "
            "scenario measured it (bnmatrix_scenario.py: the interpreter's start, or the fork, and the scenario's "
            "imports, the TensorFlow import, building and training the pattern, reading the environment), summed "
            "over its scenarios; the rest is what no scenario measured: the interpreter's exit, the zygote's import, "
            "bnmatrix's own work per scenario, and a core left idle while the other ends the cell. Each `import "
            "tensorflow` ran on an idle machine; the fresh processes' own imports (the import sum over the "
            "scenarios) ran two at a time. The command's wall time adds what a run does once, not per scenario: "
            "bnmatrix's start, the plan, the results' checks and the report.\n\n"
            + "\n".join(rows) + "\n")


def _cost_row(cell_id: str, count: int, way: str, options: list[str], jobs: int, rounds: int, work: Path,
              env: dict[str, str]) -> str:
    results = work / f"cost-{cell_id}-{way}"
    command = [sys.executable, "-m", "bnmatrix", "run", "--backend", "venv", "--jobs", str(jobs), "--results",
               str(results), "--select", cell_id, "--force", *options]
    walls: list[float] = []  # the cell's own, as its result records it
    commands: list[float] = []  # the whole `bnmatrix run`: its start, the plan, the results and the report too
    imports: list[float] = []
    phases: dict[str, list[float]] = {phase: [] for phase in PHASES}  # per round: summed over the scenarios
    for number in range(rounds + 1):  # the first, untimed, builds the environment where it is missing
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        if done.returncode not in (0, 1):
            sys.exit(f"run_speed: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        stored = json.loads((results / "latest" / "cells" / f"{cell_id}.json").read_text())
        launches = {s.get("launch", "").partition(":")[0] for s in stored["scenarios"].values()}
        if launches != {way}:
            sys.exit(f"run_speed: {cell_id} {way}: the scenarios were started as {sorted(launches)}")
        python = str(Path(stored["environment"]["venv"]) / "bin" / "python")
        imported = statistics.median(import_time(python, {**env, **stored["environment"]["variables"]})
                                     for _ in range(IMPORTS_PER_ROUND))
        if number == 0:
            continue
        walls.append(stored["duration_s"])
        commands.append(wall)
        imports.append(imported)
        for phase in PHASES:
            phases[phase].append(sum(s.get("timings", {}).get(phase, 0.0) for s in stored["scenarios"].values()))
        print(f"  {cell_id} {way}: round {number}: cell {stored['duration_s']:.1f} s, command {wall:.1f} s, "
              f"import {imported:.2f} s", flush=True)
    per_scenario = statistics.median(walls) * jobs / count
    median_import = statistics.median(imports)
    summed = {phase: statistics.median(values) for phase, values in phases.items()}
    rest = statistics.median(walls) * jobs - sum(summed.values())  # process start and exit, bnmatrix, idle cores
    breakdown = " · ".join(f"{value:.1f} s" for value in [*summed.values(), rest])
    started_as = "fresh processes" if way == "fresh" else "forks of the zygote"
    return (f"| {cell_id} | {started_as} | {count} | {statistics.median(walls):.1f} s "
            f"({statistics.median(commands):.1f} s) | {per_scenario:.2f} s | "
            f"{median_import:.2f} s | {per_scenario / median_import:.2f} | {breakdown} |")


IMPORTS_PER_ROUND = 3  # one import alone moves by a third on a shared machine


def import_time(python: str, env: dict[str, str]) -> float:
    """Seconds `python -c "import tensorflow"` takes, the interpreter's start included."""
    started = time.monotonic()
    subprocess.run([python, "-c", "import tensorflow"], env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
                   stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def with_section(text: str, section: str) -> str:
    """`text` with its scenario-cost section (from its heading to the end) replaced by `section`, or added."""
    head = text.split(COST_HEADING)[0].rstrip("\n")
    return f"{head}\n\n{section}"


def table(results: dict[str, dict[str, list[float]]], jobs: int) -> str:
    rows = ["| case | " + " | ".join(m.replace("N", str(jobs)) for m in METHODS) + " |",
            "|---" * (len(METHODS) + 1) + "|"]
    for case, times in results.items():
        floor = statistics.median(times["uv xN (floor)"])
        cells = []
        for method in METHODS:
            median = statistics.median(times[method])
            cells.append(f"{median:.1f} s (min {min(times[method]):.1f}; {median / floor:.2f}x)")
        rows.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def machine() -> str:
    uv = subprocess.run([uv_binary() or "uv", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, Python "
            f"{platform.python_version()} (bnmatrix), {uv}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--case", action="append", choices=sorted(CASES), help=f"(default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--work", type=Path, default=None, help="keep the caches here (default: a temporary folder)")
    parser.add_argument("--write", type=Path, default=None, help="write the tables as Markdown to this file")
    parser.add_argument("--scenario-cost", action="store_true",
                        help="only what one scenario costs against one TF import (the section of --write it replaces)")
    args = parser.parse_args()
    # As a wheel install would have it: bnmatrix's own bytecode exists (an editable install under
    # PYTHONDONTWRITEBYTECODE=1 would compile bnmatrix's source at every start, about 0.1 s).
    compileall.compile_dir(Path(bnmatrix.__file__).parent, quiet=1)
    matrix = Matrix.from_file(default_matrix_path())
    work = args.work or Path(tempfile.mkdtemp(prefix="bnmatrix-speed-"))
    if args.scenario_cost:
        section = scenario_cost(args.jobs, args.rounds, work)
        print(section)
        if args.write:
            old = args.write.read_text(encoding="utf-8") if args.write.exists() else "# Run speed\n"
            args.write.write_text(with_section(old, section), encoding="utf-8")
        return
    results: dict[str, dict[str, list[float]]] = {}
    for case in args.case or DEFAULT_CASES:
        state, count, which = CASES[case]
        scenarios = ORIGINAL if which == "4" else list(matrix.scenarios)
        cells = plan(matrix, select=CELLS[count], scenarios=scenarios)
        print(f"{case}: {', '.join(CELLS[count])}, {len(scenarios)} scenarios, {state} environments", flush=True)
        bench = Bench(work / f"{count}x{which}", cells, scenarios, args.jobs)
        label = f"{state}, {count} cell{'s' * (count > 1)}, {len(scenarios)} scenarios"
        results[label] = measure(bench, state, args.rounds)
    rerun, plans = nothing_changed(work, args.rounds)
    cells = len(plan(matrix))
    text = (f"# Run speed\n\nMade by `python benchmarks/run_speed.py --write docs/benchmarks.md` on {machine()}: "
            f"{args.rounds} alternating rounds, median wall time (min; ratio to the floor). The cells: "
            f"{', '.join(CELLS[3])} (1 cell: {CELLS[1][0]}); the 4 scenarios: {', '.join(ORIGINAL)}.\n\n"
            + table(results, args.jobs)
            + f"\n\nNothing changed: `bnmatrix run` of the whole default matrix ({cells} cells) with every cell "
            f"reusable, on a copy of tests/data: the first rerun, which checks every cell file against the schema "
            f"(their run recorded no digests), {rerun[0]:.2f} s; the {len(rerun) - 1} reruns after it, which read "
            f"the files their run recorded as checked: median {statistics.median(rerun[1:]):.2f} s (min "
            f"{min(rerun[1:]):.2f}). `bnmatrix plan --backend venv`: median {statistics.median(plans):.2f} s.\n")
    print(text)
    if args.write:
        old = args.write.read_text(encoding="utf-8") if args.write.exists() else ""
        kept = old[old.index(COST_HEADING):] if COST_HEADING in old else ""  # measured on its own
        args.write.write_text(with_section(text, kept) if kept else text, encoding="utf-8")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

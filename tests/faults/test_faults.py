"""The fault suite: the real `bnmatrix run` against a fake TensorFlow on a local file index, hit by every
fault a long unattended run meets. Each test asserts the outcome recorded, nothing left running, no
finished cell lost, and that the next run recovers by itself."""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnmatrix.config import data_path
from tests.conftest import require
from tests.faults.conftest import PYTHON, SCENARIOS, Fault, stopped_at_once, wait_for

pytestmark = pytest.mark.faults


def hang_in_second_cell(fault: Fault) -> tuple[object, dict[str, object]]:
    """A run whose first cell (2.15.1) finishes and whose second (2.14.1) hangs in a scenario."""
    fault.matrix(["ok", "hang"], timeout_s=600)
    process = fault.start(FAULT_HANG_TF="2.14.1")
    wait_for(lambda: list(fault.results.glob("2*/logs/tf-2.14.1-cpu/hang.log")), what="the hanging scenario")
    (run,) = fault.runs()
    wait_for(lambda: fault.left_running(run["run_id"]), what="the scenario process")
    time.sleep(1)
    return process, run


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_the_run_cleanly_and_the_next_run_goes_on(fault: Fault, signum: int, code: int) -> None:
    process, run = hang_in_second_cell(fault)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)  # type: ignore[attr-defined]
    assert process.returncode == code, output  # type: ignore[attr-defined]
    assert f"interrupted ({signal.Signals(signum).name})" in output
    (after,) = fault.runs()
    assert after["status"] == "interrupted"
    assert fault.cell(after, "tf-2.15.1-cpu")["status"] == "ran"  # the finished cell is kept
    assert fault.left_running(str(run["run_id"])) == []
    assert list(fault.tmp.glob("bnmatrix-cell-*")) == []  # no scratch folder left
    code, output = fault.run(FAULT_HANG_TF="none")
    assert code == 0, output
    last = fault.runs()[-1]
    assert fault.cell(last, "tf-2.15.1-cpu")["reused_from"] == run["run_id"]  # not run twice
    assert fault.cell(last, "tf-2.14.1-cpu")["scenarios"]["hang"]["status"] == "updated"


def test_sigkill_leaves_no_process_and_the_next_run_marks_it_and_recovers(fault: Fault) -> None:
    process, run = hang_in_second_cell(fault)
    process.kill()  # type: ignore[attr-defined]
    process.wait(timeout=30)  # type: ignore[attr-defined]
    wait_for(lambda: not fault.left_running(str(run["run_id"])), timeout=10,
             what="the scenario to die with bnmatrix (parent-death signal)")
    assert fault.runs()[0]["status"] == "running"  # nobody could write more
    assert list(fault.tmp.glob(f"bnmatrix-cell-{run['run_id']}-*"))  # its scratch folder, left behind
    half_written = fault.results / run["run_id"] / "cells" / ".tf-2.14.1-cpu.json.k1ll3d.tmp"  # as by a kill mid-write
    half_written.write_text('{"schema": "bnmatrix.cel')
    code, output = fault.run(FAULT_HANG_TF="none")
    assert code == 0, output
    assert f"run {run['run_id']} was killed before it finished: marked interrupted" in output
    assert list(fault.tmp.glob("bnmatrix-cell-*")) == []  # swept
    dead, last = fault.runs()
    assert dead["status"] == "interrupted" and "ended without finishing" in dead["note"]
    assert not half_written.exists()
    assert last["previous_run"] == dead["run_id"]
    assert fault.cell(last, "tf-2.15.1-cpu")["reused_from"] == dead["run_id"]


def test_a_double_forked_grandchild_dies_when_its_scenario_ends(fault: Fault) -> None:
    fault.matrix(["double_fork"], versions=("2.15.1",))
    code, output = fault.run()
    assert code == 0, output
    grandchild = int((fault.dir / "grandchild").read_text())
    wait_for(lambda: not Path(f"/proc/{grandchild}").exists() or
             Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
             timeout=10, what=f"the setsid grandchild {grandchild} to be killed")
    (run,) = fault.runs()
    assert fault.cell(run, "tf-2.15.1-cpu")["scenarios"]["double_fork"]["status"] == "updated"


def test_a_flood_and_a_scenario_without_result(fault: Fault) -> None:
    fault.matrix(["flood", "no_result"], versions=("2.15.1",))
    code, output = fault.run()
    assert code == 0, output
    (run,) = fault.runs()
    scenarios = fault.cell(run, "tf-2.15.1-cpu")["scenarios"]
    assert scenarios["flood"]["status"] == "updated"
    assert (fault.results / run["run_id"] / "logs" / "tf-2.15.1-cpu" / "flood.log").stat().st_size < 9 << 20
    assert scenarios["no_result"]["status"] == "error"
    assert scenarios["no_result"]["reason"] == "no result: the scenario process exited with code 3"
    assert "leaving without a result" in scenarios["no_result"]["error"]["traceback"]


def test_a_run_where_every_scenario_errors_exits_1(fault: Fault) -> None:
    fault.matrix(["no_result"])
    code, output = fault.run()
    assert code == 1 and "every scenario of every cell that ran is an error" in output
    assert fault.runs()[0]["status"] == "complete"


def test_a_killed_install_never_writes_into_a_later_env(fault: Fault) -> None:
    fault.matrix(["ok"], pins=["slowpkg==1.0"], versions=("2.15.1",))
    process = fault.start(FAULT_SLOW_SECONDS="120")
    setup = wait_for(lambda: next(iter(fault.results.glob("2*/logs/tf-2.15.1-cpu/setup.log")), None),
                     what="the setup log")
    wait_for(lambda: "pip install" in setup.read_text() and "tensorflow==2.15.1 slowpkg==1.0" in setup.read_text(),
             what="installing")
    (run,) = fault.runs()
    wait_for(lambda: fault.left_running(run["run_id"]), what="the installer")
    time.sleep(2)  # the installer is inside the slow build now
    process.kill()
    process.wait(timeout=30)
    venvs = fault.dir / "cache" / "venvs"
    assert [p for p in venvs.iterdir() if not p.name.startswith(".") and p.suffix != ".lock"] == []  # never in place
    code, output = fault.run()  # FAULT_SLOW_SECONDS=0 now; the dead run's build is swept
    assert code == 0, output
    assert fault.left_running(run["run_id"]) == []
    assert not list(venvs.glob(".*.partial"))
    (env,) = [p for p in venvs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert json.loads((env / "bnmatrix-ready.json").read_text())["requirements"] == ["tensorflow==2.15.1",
                                                                                     "slowpkg==1.0"]


def test_a_corrupt_ready_marker_means_a_rebuild_not_an_error(fault: Fault) -> None:
    fault.matrix(["ok"], versions=("2.15.1",))
    assert fault.run()[0] == 0
    (marker,) = (fault.dir / "cache" / "venvs").glob("*/bnmatrix-ready.json")
    marker.write_text('{"python": "/usr/bin/py')  # truncated, as by a crash while writing
    code, output = fault.run("--force")
    assert code == 0, output
    last = fault.runs()[-1]
    setup = (fault.results / last["run_id"] / "logs" / "tf-2.15.1-cpu" / "setup.log").read_text()
    assert "uv venv " in setup and json.loads(marker.read_text())["python_version"]
    # What the cell records as installed: the environment's packages, one per line, and nothing else.
    packages = json.loads(marker.read_text())["packages"]
    assert "tensorflow==2.15.1" in packages and all("==" in line for line in packages), packages


def test_force_reruns_scenarios_and_rebuild_recreates_envs(fault: Fault) -> None:
    fault.matrix(["ok"], versions=("2.15.1",))
    assert fault.run()[0] == 0
    assert fault.run("--force")[0] == 0
    forced = fault.runs()[-1]
    setup = (fault.results / forced["run_id"] / "logs" / "tf-2.15.1-cpu" / "setup.log").read_text()
    assert setup.startswith("reused ") and fault.cell(forced, "tf-2.15.1-cpu")["reused_from"] is None
    assert fault.run("--rebuild")[0] == 0
    rebuilt = fault.runs()[-1]
    assert "uv venv " in (fault.results / rebuilt["run_id"] / "logs" / "tf-2.15.1-cpu" / "setup.log").read_text()


@pytest.mark.parametrize("damage", ["real directory", "dangling"])
def test_a_damaged_latest_is_recovered(fault: Fault, damage: str) -> None:
    fault.matrix(["ok"], versions=("2.15.1",))
    assert fault.run()[0] == 0
    (first,) = fault.runs()
    latest = fault.results / "latest"
    if damage == "real directory":  # an artifact download or `cp -rL` of the results
        copy = fault.dir / "copy"
        shutil.copytree(latest, copy, symlinks=False)
        shutil.rmtree(fault.results / first["run_id"])
        latest.unlink()
        copy.rename(latest)
    else:
        latest.unlink()
        latest.symlink_to("nowhere")
    code, output = fault.run()
    assert code == 0, output
    assert latest.is_symlink() and (latest / "manifest.json").is_file()
    last = fault.runs()[-1]
    if damage == "real directory":  # the copy is kept as the run it is, and reused
        assert (fault.results / first["run_id"] / "manifest.json").is_file()
        assert fault.cell(last, "tf-2.15.1-cpu")["reused_from"] == first["run_id"]


def test_two_runs_at_once_on_one_results_root(fault: Fault) -> None:
    fault.matrix(["ok"])
    first = fault.start("--select", "tf-2.15.1-cpu")
    second = fault.start("--select", "tf-2.14.1-cpu")
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), outputs
    runs = fault.runs()
    assert len(runs) == 2 and {r["status"] for r in runs} == {"complete"}
    ids = {r["run_id"] for r in runs}
    assert not any(r["previous_run"] in ids for r in runs)  # neither took the other as its previous run


def test_waiting_for_another_runs_env_says_so_and_stops_on_ctrl_c(fault: Fault) -> None:
    fault.matrix(["ok"], pins=["slowpkg==1.0"], versions=("2.15.1",))
    builder = fault.start(FAULT_SLOW_SECONDS="120")
    wait_for(lambda: any("slowpkg==1.0" in p.read_text() for p in fault.results.glob("2*/logs/*/setup.log")),
             what="the first run installing")
    waiter = fault.start(FAULT_SLOW_SECONDS="120")
    wait_for(lambda: len(fault.runs()) == 2, what="the second run")
    time.sleep(3)  # it is waiting for the lock now
    started = time.monotonic()
    waiter.send_signal(signal.SIGINT)
    output, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 130, output
    assert time.monotonic() - started < 10
    assert "tf-2.15.1-cpu: waiting for another bnmatrix run that is building tf-2.15.1-py" in output
    builder.send_signal(signal.SIGTERM)
    builder.communicate(timeout=60)
    assert builder.returncode == 143
    for run in fault.runs():
        assert fault.left_running(run["run_id"]) == []


def test_a_system_folder_is_refused_as_results_root(fault: Fault) -> None:
    fault.matrix(["ok"])
    for root in ("/", "/usr", str(Path.home())):
        code, output = fault.run("--results", root)
        assert code == 2 and "is a system or home folder; expected a folder of its own" in output, output
    assert not os.path.exists("/latest")


def test_a_hanging_scenario_is_killed_at_its_timeout_with_nothing_left(fault: Fault) -> None:
    fault.matrix(["hang", "ok"], timeout_s=5, versions=("2.15.1",))
    started = time.monotonic()
    code, output = fault.run()
    assert code == 0, output
    assert time.monotonic() - started < 120
    (run,) = fault.runs()
    scenarios = fault.cell(run, "tf-2.15.1-cpu")["scenarios"]
    assert scenarios["hang"]["status"] == "error" and scenarios["hang"]["reason"] == "timeout: killed after 5 s"
    assert scenarios["ok"]["status"] == "updated"  # the cell went on
    assert fault.left_running(run["run_id"]) == []


def test_gpu_cells_a_host_cannot_serve_fail_the_run_only_when_asked_for(fault: Fault) -> None:
    matrix = fault.matrix(["ok"], versions=("2.15.1",))
    matrix.write_text(matrix.read_text().replace("  devices: [cpu]\n", "  devices: [cpu, gpu]\n"))
    env = {"PATH": "/usr/bin:/bin"}  # no nvidia-smi here
    code, output = fault.run(**env)
    assert code == 0, output
    assert "tf-2.15.1-gpu: not-run: no GPU on this host" in output
    code, output = fault.run("--select", "*-gpu*", **env)
    assert code == 1, output


def test_auto_on_a_docker_host_that_cannot_get_the_base_image_runs_in_venvs(fault: Fault) -> None:
    """The quick start on a host whose Docker daemon answers but has no registry (this machine) and no local
    base for the cells: auto says so in one line and gives verdicts with the venv backend."""
    from bnmatrix.backends.docker import connect

    client, about = connect()
    require(client is not None, f"no Docker daemon answered: {about}")
    # A base image no host has and no registry serves: what a host without a registry sees for python:X.Y-slim.
    fault.matrix(["ok"], versions=("2.15.1",), extra='  images: {cpu: "bnmatrix-test/nowhere:{python}"}\n')
    process = subprocess.run([sys.executable, "-m", "bnmatrix", "run", "--matrix", "matrix.yaml", "--results",
                              str(fault.results)], capture_output=True, text=True, env=fault.env, cwd=fault.dir,
                             timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    image = f"bnmatrix-test/nowhere:{sys.version_info[0]}.{sys.version_info[1]}"
    assert "venv backend (auto: Docker" in process.stdout and f"but it has no {image} and cannot pull" in process.stdout
    (run,) = fault.runs()
    assert run["backend"] == "venv" and fault.cell(run, "tf-2.15.1-cpu")["scenarios"]["ok"]["status"] == "updated"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_while_cells_are_still_queued_stops_the_run_at_once(fault: Fault, signum: int, code: int) -> None:
    """The first cell hangs and the second waits its turn (--jobs 1), as cells do in every run of the default
    matrix: the stop must not wait for the queued cell, which will never start."""
    fault.matrix(["ok", "hang"], timeout_s=600)
    process = fault.start(FAULT_HANG_TF="2.15.1")
    wait_for(lambda: list(fault.results.glob("2*/logs/tf-2.15.1-cpu/hang.log")), what="the hanging scenario")
    (run,) = fault.runs()
    output = stopped_at_once(fault, process, run["run_id"], signum, code)
    assert f"interrupted ({signal.Signals(signum).name})" in output
    (after,) = fault.runs()
    assert after["status"] == "interrupted" and after["cells_written"] == 0  # the queued cell never started
    assert not list((fault.results / run["run_id"] / "cells").iterdir())
    assert fault.left_running(str(run["run_id"])) == []
    code_again, again = fault.run(FAULT_HANG_TF="none")
    assert code_again == 0, again


def test_a_second_stop_signal_ends_bnmatrix_at_once_even_while_its_cleanup_hangs(tmp_path: Path) -> None:
    """The first SIGTERM starts a clean stop; a second one (GitHub Actions sends SIGINT, then SIGTERM) is never
    ignored: bnmatrix's own handler ends the process at once, whatever the cleanup waits for."""
    script = ("import signal, sys, time\n"
              "from bnmatrix.cli import STOP_SIGNALS, _Stop\n"
              "for signum in STOP_SIGNALS:\n"
              "    signal.signal(signum, _Stop.handle)\n"
              "try:\n"
              "    print('working', flush=True)\n"
              "    time.sleep(600)\n"
              "except KeyboardInterrupt:\n"
              "    print('cleaning up', flush=True)\n"
              "    time.sleep(600)  # a cleanup that hangs\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    assert process.stdout is not None and process.stdout.readline() == "working\n"
    process.send_signal(signal.SIGINT)
    assert process.stdout.readline() == "cleaning up\n"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 143 and time.monotonic() - started < 5
    assert "SIGTERM again: stopping at once" in output


def test_a_child_that_sheds_its_token_and_session_cannot_hold_the_run(fault: Fault) -> None:
    """A scenario leaves a child with an empty environment (no token), in its own session (not in the group),
    holding the scenario's output pipe open: the scenario still ends, and the child is killed."""
    fault.matrix(["escape", "ok"], versions=("2.15.1",))
    started = time.monotonic()
    code, output = fault.run(timeout=120)
    assert code == 0, output
    assert time.monotonic() - started < 60
    (run,) = fault.runs()
    scenarios = fault.cell(run, "tf-2.15.1-cpu")["scenarios"]
    assert scenarios["escape"]["status"] == "updated" and scenarios["ok"]["status"] == "updated"
    escaped = int((fault.dir / "escaped").read_text())
    wait_for(lambda: not Path(f"/proc/{escaped}").exists() or
             Path(f"/proc/{escaped}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
             timeout=10, what=f"the escaped child {escaped} to be killed")


def test_numbers_no_verdict_can_be_computed_from_cost_their_scenario_only(fault: Fault) -> None:
    """Schema-valid numbers that overflow, nest too deep, or have no square root: each of those scenarios is an
    `error` saying why, while the other scenarios of the cell (and the queued cell) keep their verdicts."""
    fault.matrix(["overflow", "deep_json", "huge_spread", "negative_variance", "ok"])
    code, output = fault.run(timeout=120)
    assert code == 0, output
    (run,) = fault.runs()
    for cell_id in ("tf-2.15.1-cpu", "tf-2.14.1-cpu"):
        cell = fault.cell(run, cell_id)
        assert cell["status"] == "ran", cell["reason"]
        scenarios = cell["scenarios"]
        assert scenarios["ok"]["status"] == "updated"
        reasons = {name: scenarios[name]["reason"] for name in ("overflow", "deep_json", "huge_spread",
                                                                 "negative_variance")}
        assert all(scenarios[name]["status"] == "error" for name in reasons), reasons
        assert reasons["overflow"] == ("result refused: the result line: layers.bn.moving_mean: the number overflows "
                                       "(inf); expected finite numbers")
        assert reasons["deep_json"] == ("result refused: the result line: nested deeper than Python can parse; "
                                        "expected at most 64 levels")
        assert reasons["huge_spread"].startswith("the observed numbers cannot be judged:")
        assert reasons["negative_variance"] == "the observed numbers cannot be judged: math domain error"


def test_plan_and_run_say_which_cells_this_host_cannot_serve_and_how_to_get_them(fault: Fault) -> None:
    """A host without Python 3.9 (no pyenv, no uv, nothing on PATH): plan marks the cell before anything runs,
    and the run's not-run reason says how to get that Python."""
    path = fault.matrix(["ok"])
    path.write_text(path.read_text().replace('{tf: 2.14.1, python: "' + PYTHON + '"', '{tf: 2.14.1, python: "3.9"'))
    bare = {"PYENV_ROOT": str(fault.dir / "no-pyenv"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "bnmatrix", "plan", "--matrix", "matrix.yaml", "--backend", "venv"],
                          capture_output=True, text=True, env={**fault.env, **bare}, cwd=fault.dir, timeout=120)
    assert done.returncode == 0, done.stderr
    output = " ".join(done.stdout.split())
    assert "1 cell cannot run here (tf-2.14.1-cpu): no Python 3.9 on this host" in output
    script = str(data_path("docker") / "base" / "build.sh")  # where bnmatrix is installed: a path that exists
    hint = ("install it (uv python install 3.9, or pyenv install 3.9), or use the container backend: bnmatrix run "
            f"--backend docker (where no registry answers, {script} 3.9 builds its base image)")
    assert hint in output
    code, output = fault.run(**bare)
    assert code == 0, output  # a cell this host cannot serve fails a run only when asked for by name
    (run,) = fault.runs()
    assert fault.cell(run, "tf-2.14.1-cpu")["status"] == "not-run"
    assert hint in fault.cell(run, "tf-2.14.1-cpu")["reason"]


def test_the_report_keeps_every_measured_verdict_and_a_run_reuses_each_unchanged_scenario(fault: Fault) -> None:
    """A full run; a narrower one (one scenario, one cell); one where no cell could be built: the report shows every
    scenario's newest measured result, `latest` stays on the last run that measured something, and a run that
    adds a scenario of its own runs only that one, reusing the others scenario by scenario."""
    fault.matrix(["ok", "versioned"])
    assert fault.run()[0] == 0
    code, output = fault.run("--select", "tf-2.15.1-cpu", "--scenario", "ok", "--force")
    assert code == 0, output
    full, narrow = fault.runs()
    fault.matrix(["ok", "versioned"], pins=["nosuchpkg==1.0"])  # every cell fails to build
    code, output = fault.run()
    assert code == 1 and "build-error" in output, output
    assert (fault.results / "latest").resolve().name == narrow["run_id"]  # nothing was measured
    code, output = fault.bnmatrix("report", "--results", "results", "--out", "site")
    assert code == 0, output
    exported = json.loads((fault.dir / "site" / "results.json").read_text())
    by_id = {c["id"]: c for c in exported["cells"]}
    for cell_id in ("tf-2.15.1-cpu", "tf-2.14.1-cpu"):
        assert {n: s["status"] for n, s in by_id[cell_id]["scenarios"].items()} == {"ok": "updated",
                                                                                  "versioned": "updated"}, cell_id
    page = (fault.dir / "site" / "cells" / "tf-2.15.1-cpu.html").read_text()
    assert f"Measured by run <code>{full['run_id']}</code>" in page  # versioned: from the full run
    index = (fault.dir / "site" / "index.html").read_text()  # its entry names the run that measured it
    tips = re.findall(r'id="tip-tf-2\.15\.1-cpu-versioned"><span class="where">TF 2\.15\.1 · versioned \(CPU\)'
                      r'</span>[^<]*\[result of run ([^,\]]+)', index)  # the tip names the entry, then its run
    assert tips == [full["run_id"]], tips
    assert "Results of 2 runs, the newest" in (fault.dir / "site" / "summary.md").read_text()
    assert (fault.dir / "site" / "cells" / "logs" / "tf-2.15.1-cpu" / "versioned.log").is_file()

    extra = fault.dir / "extra"
    extra.mkdir()
    source = (Path(__file__).parent / "scenarios" / "ok.py").read_text()
    (extra / "extra_ok.py").write_text(source.replace('bns.main("ok", train)', 'bns.main("extra_ok", train)'))
    fault.matrix(["ok", "versioned"])
    code, output = fault.run("--scenarios", str(extra))
    assert code == 0, output
    last = fault.runs()[-1]
    for cell_id in ("tf-2.15.1-cpu", "tf-2.14.1-cpu"):
        scenarios = fault.cell(last, cell_id)["scenarios"]
        assert sorted(scenarios) == ["extra_ok", "ok", "versioned"]
        assert scenarios["extra_ok"]["reused_from"] is None and scenarios["extra_ok"]["status"] == "updated"
        assert scenarios["versioned"]["reused_from"] == full["run_id"]
        assert scenarios["ok"]["reused_from"] == (narrow if cell_id == "tf-2.15.1-cpu" else full)["run_id"]
        assert (fault.results / last["run_id"] / "logs" / cell_id / "versioned.log").is_file()
    ran = [line for line in (fault.results / last["run_id"] / "logs" / "tf-2.15.1-cpu").iterdir()]
    assert {p.name for p in ran} >= {"extra_ok.log", "ok.log", "versioned.log", "setup.log"}


def test_each_result_says_where_its_scenarios_time_went(fault: Fault) -> None:
    """The TensorFlow import, the pattern and the rest, as the scenario measured them, stored with its result and
    shown on the cell page; a scenario that printed no result says nothing of it."""
    fault.matrix(["ok", "no_result"])
    code, output = fault.run("--select", "tf-2.15.1-cpu", "--fresh-processes", FAULT_IMPORT_SECONDS="1.5")
    assert code == 0, output
    (run,) = fault.runs()
    scenarios = fault.cell(run, "tf-2.15.1-cpu")["scenarios"]
    timings = scenarios["ok"]["timings"]
    assert set(timings) == {"startup_s", "import_s", "train_s", "teardown_s"}
    assert 1.5 <= timings["import_s"] < 10 and timings["train_s"] < 1.5 and 0 < timings["startup_s"] < 10
    assert sum(timings.values()) <= scenarios["ok"]["duration_s"] + timings["startup_s"] + 0.01
    assert scenarios["ok"]["launch"] == "fresh: no zygote in this cell"
    assert scenarios["no_result"]["timings"] == {}  # no result line: nothing said
    assert fault.bnmatrix("report", "--results", "results", "--out", "site")[0] == 0
    page = " ".join((fault.dir / "site" / "cells" / "tf-2.15.1-cpu.html").read_text().split())
    assert f"TensorFlow import {timings['import_s']:.3g} s · build and train" in page
    assert 'started as</th><td colspan="3">a fresh process (no zygote in this cell)</td>' in page
    # forked from the cell's zygote, which imported TF once: the scenario's own import costs nothing
    code, output = fault.run("--select", "tf-2.15.1-cpu", "--force", FAULT_IMPORT_SECONDS="1.5")
    assert code == 0, output
    forked = fault.cell(fault.runs()[-1], "tf-2.15.1-cpu")["scenarios"]["ok"]
    assert forked["launch"] == "zygote" and forked["timings"]["import_s"] < 0.5, forked["timings"]
    assert fault.bnmatrix("report", "--results", "results", "--out", "site")[0] == 0
    page = html.unescape((fault.dir / "site" / "cells" / "tf-2.15.1-cpu.html").read_text())
    assert "a fork of the cell's zygote, which imported TensorFlow once for the cell" in page


def test_scenarios_that_start_and_end_at_once_never_take_each_other_down(fault: Fault) -> None:
    """Two cells, five scenarios each, two at a time, five times over: when a scenario ends, bnmatrix kills what
    still holds its output; a scenario another thread is just starting (between fork and exec it holds copies of
    bnmatrix's reading ends) must never be taken for one."""
    fault.matrix(["ok", "versioned", "versioned_twin", "escape", "double_fork"])
    for _ in range(5):
        code, output = fault.run("--jobs", "2", "--force")
        assert code == 0, output
        last = fault.runs()[-1]
        for cell_id in ("tf-2.15.1-cpu", "tf-2.14.1-cpu"):
            scenarios = fault.cell(last, cell_id)["scenarios"]
            assert {n: s["status"] for n, s in scenarios.items()} == dict.fromkeys(scenarios, "updated"), \
                {n: s["reason"] for n, s in scenarios.items()}


def test_a_library_caller_runs_the_matrix_in_a_few_lines(fault: Fault) -> None:
    """session.py's docstring, as a user's script: the same run as `bnmatrix run`, its outcome a value."""
    fault.matrix(["ok", "no_result"])
    script = ("from pathlib import Path\n"
              "from bnmatrix.session import RunOptions, RunSession, exit_code\n"
              "outcome = RunSession(RunOptions(matrix=Path('matrix.yaml'), backend='venv')).run()\n"
              "print(outcome.directory.name, exit_code(outcome))\n"
              "for cell in outcome.results:\n"
              "    print(cell.id, cell.status.value, sorted((n, s.status.value) for n, s in cell.scenarios.items()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=fault.env, cwd=fault.dir,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    run_id, code = lines[-3].split()[-2:]
    assert code == "0" and (fault.dir / "results" / run_id / "manifest.json").is_file()
    for line, version in zip(lines[-2:], ("2.15.1", "2.14.1"), strict=True):
        assert line == f"tf-{version}-cpu ran [('no_result', 'error'), ('ok', 'updated')]"
    assert json.loads((fault.dir / "results" / run_id / "manifest.json").read_text())["status"] == "complete"


def ended(pid: int) -> bool:
    """Whether a process is gone or a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


ZYGOTE_FAULTS = ["hang", "flood", "no_result", "abort", "killed", "double_fork", "escape", "ok"]


def test_a_zygote_child_meets_every_fault_as_a_fresh_process_does(fault: Fault) -> None:
    """A scenario that hangs past its timeout, floods its output, exits without a result, crashes the interpreter
    (os.abort), is killed (SIGKILL, as by the out-of-memory killer), leaves a double-forked daemon or a child that
    sheds its token and session: forked from the cell's zygote, each ends with the outcome it has as a fresh
    process, and nothing it started outlives it."""
    fault.matrix(ZYGOTE_FAULTS, timeout_s=5, versions=("2.15.1",))
    outcomes = {}
    for way, options in (("zygote", []), ("fresh", ["--fresh-processes"])):
        code, output = fault.run("--force", *options, timeout=300)
        assert code == 0, output
        run = fault.runs()[-1]
        scenarios = fault.cell(run, "tf-2.15.1-cpu")["scenarios"]
        launches = {name: scenario["launch"] for name, scenario in scenarios.items()}
        assert set(launches.values()) == {"zygote" if way == "zygote" else "fresh: no zygote in this cell"}, launches
        outcomes[way] = {name: (scenario["status"], scenario["reason"]) for name, scenario in scenarios.items()}
        assert (fault.results / run["run_id"] / "logs" / "tf-2.15.1-cpu" / "flood.log").stat().st_size < 9 << 20
        assert "aborting now" in scenarios["abort"]["error"]["traceback"]
        for left in ("grandchild", "escaped"):
            pid = int((fault.dir / left).read_text())
            wait_for(functools.partial(ended, pid), timeout=10, what=f"the {way} scenario's {left} {pid} to be killed")
        assert fault.left_running(run["run_id"]) == []
    assert outcomes["zygote"] == outcomes["fresh"]
    assert outcomes["zygote"]["hang"] == ("error", "timeout: killed after 5 s")
    assert outcomes["zygote"]["abort"] == ("error", f"no result: the scenario process exited with code "
                                                    f"{-signal.SIGABRT}")
    assert outcomes["zygote"]["killed"] == ("error", f"no result: the scenario process exited with code "
                                                     f"{-signal.SIGKILL}")
    assert outcomes["zygote"]["no_result"] == ("error", "no result: the scenario process exited with code 3")
    assert {outcomes["zygote"][name][0] for name in ("flood", "double_fork", "escape", "ok")} == {"updated"}


def test_a_cell_whose_import_leaves_a_thread_runs_every_scenario_fresh_and_says_why(fault: Fault) -> None:
    """A fork copies only the thread that calls it: where TensorFlow's import leaves another running, no scenario is
    forked; each runs as a fresh process, and its result and the setup log say why."""
    fault.matrix(["ok", "no_result"], versions=("2.15.1",))
    code, output = fault.run(FAULT_IMPORT_THREAD="1")
    assert code == 0, output
    run = fault.runs()[-1]
    cell = fault.cell(run, "tf-2.15.1-cpu")
    why = "fresh: TensorFlow's import left 2 threads in the zygote, and a fork copies only one"
    assert cell["scenarios"]["ok"]["launch"] == why and cell["scenarios"]["ok"]["status"] == "updated"
    assert cell["scenarios"]["no_result"]["launch"] == why
    assert cell["scenarios"]["no_result"]["reason"] == "no result: the scenario process exited with code 3"
    setup = (fault.results / run["run_id"] / cell["setup_log"]).read_text()
    assert "bnmatrix-zygote: fresh processes: TensorFlow's import left 2 threads" in setup


def test_the_launcher_runs_fresh_where_the_environment_differs_from_the_zygotes(tmp_path: Path) -> None:
    """The zygote imported TF with its own environment: a scenario whose environment differs (but for its scratch
    folder and token) would see TF imported under other settings, so the launcher runs it as a fresh process; with
    the same environment it is forked, and either way its exit status is the scenario's own."""
    from tests.faults.conftest import FAKE_TF
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TF.format(version="2.15.1"))
    helper = data_path("scenarios")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{tmp_path}:{helper}", "TMPDIR": str(tmp_path)}
    sock = str(tmp_path / "z.sock")
    zygote = subprocess.Popen([sys.executable, str(helper / "bnmatrix_zygote.py"), "serve", sock], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert zygote.stdout is not None and "listening" in zygote.stdout.readline()
        assert zygote.stdout.readline().strip() == "bnmatrix-zygote: forking each scenario"

        def launch(script: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-S", str(helper / "bnmatrix_zygote.py"), "run", sock,
                                   str(SCENARIOS / f"{script}.py"), "--steps", "7"], env={**env, **extra},
                                  capture_output=True, text=True, timeout=60, cwd=tmp_path)

        (tmp_path / "elsewhere").mkdir()
        forked = launch("ok", TMPDIR=str(tmp_path / "elsewhere"))  # the scratch folder may differ
        assert forked.returncode == 0 and forked.stdout.startswith("BNMATRIX_LAUNCH zygote\nBNMATRIX_RESULT "), forked
        assert json.loads(forked.stdout.splitlines()[1].partition(" ")[2])["steps"] == 7
        fresh = launch("ok", TF_ENABLE_ONEDNN_OPTS="0")
        assert fresh.returncode == 0 and fresh.stdout.startswith(
            "BNMATRIX_LAUNCH fresh: the scenario's environment differs from the zygote's in TF_ENABLE_ONEDNN_OPTS, "
            "which TensorFlow may read at import\nBNMATRIX_RESULT "), fresh
        assert launch("no_result").returncode == 3
        assert launch("abort").returncode == -signal.SIGABRT
        assert launch("killed").returncode == -signal.SIGKILL
    finally:
        zygote.kill()
        zygote.wait()

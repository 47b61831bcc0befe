"""`bnmatrix bisect`, `diff`, the history of runs and their archive, for real: fake tensorflow releases on a
local file index, each with its own number of BN updates (scenarios/versioned.py), judged by bnmatrix
from the numbers like any other cell."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.faults.conftest import FAKE_TF, Fault, _wheel, bisect_index, stopped_at_once, wait_for, write_index

pytestmark = pytest.mark.faults

STALE_UNTIL_4 = {f"2.99.{i}": (0 if i < 4 else 100) for i in range(7)}  # changes in 2.99.4
COMES_BACK = {"2.99.0": 100, "2.99.1": 100, "2.99.2": 0, "2.99.3": 0, "2.99.4": 100, "2.99.5": 100, "2.99.6": 0}


def setup(fault: Fault, releases: dict[str, int], scenarios: tuple[str, ...] = ("versioned",),
          versions: tuple[str, ...] = ("2.99.6", "2.99.0"), extra: str = "", tag: str = "py3-none-any") -> None:
    fault.index = bisect_index(fault.dir / "index", releases, tag)
    fault.matrix(list(scenarios), versions=versions, extra=extra)


def bisect(fault: Fault, *args: str, **env: str) -> tuple[int, str]:
    return fault.bnmatrix("bisect", "--matrix", "matrix.yaml", "--backend", "venv", "--jobs", "1", "--results",
                          "results", *args, **env)


def conclusions(fault: Fault) -> list[dict[str, Any]]:
    """The newest bisect run's conclusions."""
    (run,) = [r for r in fault.runs() if r.get("kind") == "bisect"][-1:]
    data = json.loads((fault.results / run["run_id"] / "bisect.json").read_text())
    assert data["schema"] == "bnmatrix.bisect/1"
    return data["searches"]  # type: ignore[no-any-return]


def probe_cells(fault: Fault) -> list[dict[str, Any]]:
    """Every cell result any bisect run stored."""
    return [json.loads(p.read_text()) for run in fault.runs() if run.get("kind") == "bisect"
            for p in sorted((fault.results / run["run_id"] / "cells").glob("*.json"))]


def test_bisect_pins_the_release_from_the_numbers_and_a_rerun_runs_nothing(fault: Fault) -> None:
    setup(fault, STALE_UNTIL_4)
    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.6")
    assert code == 0, output
    (search,) = conclusions(fault)
    assert "versioned (cpu) changed from stale to updated in 2.99.4 (last stale: 2.99.3)" in output
    assert search["outcome"] == "narrowed" and (search["changed_in"], search["last_before"]) == ("2.99.4", "2.99.3")
    assert search["total"] == 7 and search["checked"] < 7  # a binary search, not every release
    assert f"{search['checked']} releases checked of 7" in output
    for probe in search["probes"]:  # each verdict rests on the numbers of a stored cell
        assert probe["effective_updates"] == pytest.approx(0 if probe["version"] < "2.99.4" else 100, abs=1e-3)
        assert re.search(rf"{re.escape(probe['version'])} \(Python [0-9.]+\): . (stale|updated): moving mean", output)
    cells = probe_cells(fault)
    assert sorted(c["cell"]["tf"] for c in cells) == sorted(p["version"] for p in search["probes"])
    assert all(c["schema"] == "bnmatrix.cell/2" and c["status"] == "ran" for c in cells)

    code, again = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.6")
    assert code == 0, again
    assert "changed from stale to updated in 2.99.4" in again
    assert len(probe_cells(fault)) == len(cells)  # every probe reused, none run twice
    assert again.count("[from run ") == search["checked"]
    assert "nothing new was run" in again and len([r for r in fault.runs() if r.get("kind") == "bisect"]) == 1
    code, spelled = bisect(fault, "--scenario", "versioned", "--good", "2.99", "--bad", "2.99.6")  # 2.99 is 2.99.0
    assert code == 0 and "changed from stale to updated in 2.99.4" in spelled, spelled

    code, output = fault.bnmatrix("merge", "results", "--out", "merged")
    assert code == 0, output
    merged = json.loads((fault.dir / "merged" / "bisect.json").read_text())
    assert [s["changed_in"] for s in merged["searches"]] == ["2.99.4"]


def test_an_interrupted_bisect_goes_on_without_running_a_cell_twice(fault: Fault) -> None:
    setup(fault, STALE_UNTIL_4)
    command = [sys.executable, "-m", "bnmatrix", "bisect", "--matrix", "matrix.yaml", "--backend", "venv", "--jobs",
               "1", "--results", "results", "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.6"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=fault.dir,
                               env={**fault.env, "FAULT_PROBE_SECONDS": "3"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: len(list(fault.results.glob("2*/cells/*.json"))) >= 2, timeout=120, what="the two endpoints")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "run the same command again to go on" in output
    (first,) = fault.runs()
    assert first["status"] == "interrupted"
    (partial,) = conclusions(fault)
    assert partial["outcome"] == "incomplete"

    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.6")
    assert code == 0, output
    assert "changed from stale to updated in 2.99.4 (last stale: 2.99.3)" in output
    versions = [c["cell"]["tf"] for c in probe_cells(fault)]
    assert len(versions) == len(set(versions)), versions  # no release probed twice across the two runs
    assert {"2.99.0", "2.99.6"} <= set(versions)


def test_a_verdict_that_comes_back_is_reported_not_hidden(fault: Fault) -> None:
    setup(fault, COMES_BACK)
    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.5")
    assert code == 2, output  # updated at both ends: nothing for a binary search to find
    assert "bnmatrix: versioned (cpu): nothing to bisect: updated at both 2.99.0 and 2.99.5" in output
    assert "--exhaustive" in output

    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.6")
    assert code == 0, output
    assert "changed from updated to stale in 2.99.2 (last updated: 2.99.1)" in output
    assert "binary search: assumes each verdict holds over one stretch of releases; --exhaustive" in output

    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.5", "--exhaustive")
    assert code == 0, output
    (search,) = conclusions(fault)
    assert search["checked"] == search["total"] == 6 and search["monotonic"] is False
    assert [(c["after"], c["from"], c["to"]) for c in search["changes"]] == [("2.99.2", "updated", "stale"),
                                                                            ("2.99.4", "stale", "updated")]
    assert "not monotonic: a verdict comes back; every release checked: 2.99.0 updated, 2.99.1 updated, " \
           "2.99.2 stale, 2.99.3 stale, 2.99.4 updated, 2.99.5 updated" in output
    assert "then changed from stale to updated in 2.99.4" in output


def test_a_release_without_a_verdict_is_skipped_and_the_answer_says_so(fault: Fault) -> None:
    setup(fault, {"2.99.0": 0, "2.99.1": 0, "2.99.2": -2, "2.99.3": 100})
    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.3")
    assert code == 0, output
    (search,) = conclusions(fault)
    assert search["outcome"] == "range" and search["changes"][0]["unjudged"] == ["2.99.2"]
    assert "changed from stale to updated between 2.99.1 and 2.99.3 (no verdict at 2.99.2)" in output


@pytest.mark.parametrize(("args", "message"), [
    (("--scenario", "versioned", "--good", "9.9.9", "--bad", "2.99.6"),
     "--good 9.9.9: tensorflow 9.9.9 is not on file://"),
    (("--scenario", "versioned", "--good", "2.99.1", "--bad", "2.99.1"),
     "--good and --bad are both 2.99.1; expected two different releases"),
    (("--scenario", "nosuch", "--good", "2.99.0", "--bad", "2.99.6"), "--scenario nosuch: unknown scenario"),
    (("--scenario", "versioned", "--good", "nine", "--bad", "2.99.6"), "--good 'nine': not a version"),
    (("--scenario", "versioned", "--good", "2.99.0"), "bisect: --bad missing"),
    (("--from-run", "--scenario", "versioned"), "--from-run bisects every change point of a run"),
])
def test_bad_input_is_one_line_and_exit_2(fault: Fault, args: tuple[str, ...], message: str) -> None:
    setup(fault, STALE_UNTIL_4)
    code, output = bisect(fault, *args)
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert not list(fault.results.glob("*/cells/*.json"))  # nothing was run


def test_no_python_for_the_releases_is_one_line_with_what_to_do(fault: Fault) -> None:
    setup(fault, STALE_UNTIL_4, tag="cp35-cp35m-manylinux1_x86_64")
    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.6")
    assert code == 2, output
    assert "no release of tensorflow from 2.99.0 to 2.99.6" in output and "wheels for Python 3.5" in output
    assert "or use --backend docker" in output and len(output.strip().splitlines()) == 1


def test_from_run_shares_cells_the_report_pins_changes_and_history_is_kept(fault: Fault) -> None:
    setup(fault, STALE_UNTIL_4, scenarios=("versioned", "versioned_twin"), extra="  keep_runs: 1\n")
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results")
    assert code == 0, output
    first = fault.runs()[0]["run_id"]

    code, output = bisect(fault, "--from-run")
    assert code == 0, output
    assert "2 change points" in output
    answers = {s["scenario"]: s["changed_in"] for s in conclusions(fault)}
    assert answers == {"versioned": "2.99.4", "versioned_twin": "2.99.4"}
    cells = probe_cells(fault)
    assert cells and all(sorted(c["scenarios"]) == ["versioned", "versioned_twin"] for c in cells)  # shared
    assert {c["cell"]["tf"] for c in cells} <= {"2.99.1", "2.99.2", "2.99.3", "2.99.4", "2.99.5"}  # ends from the run
    code, output = bisect(fault, "--from-run")  # the scheduled workflow's rerun: nothing left to search
    assert code == 0 and "2 change points, 2 already narrowed in results" in output, output
    assert "versioned_twin (cpu) changed from stale to updated in 2.99.4" in output
    assert len(probe_cells(fault)) == len(cells)
    code, output = fault.bnmatrix("report", "--results", "results", "--out", "site")
    assert code == 0, output
    index = (fault.dir / "site" / "index.html").read_text()
    assert 'href="changes.html#versioned-cpu-2.99.0-2.99.6">versioned (cpu): stale → updated in 2.99.4 ' \
           "(rows 2.99.0 → 2.99.6)</a>" in index

    # A second run where 2.99.6 turned stale: diff says so (exit 1), the site shows the cell's history.
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results",
                                  "--force", FAULT_UPDATES="2.99.6=0")
    assert code == 0, output
    second = fault.runs()[-1]["run_id"]
    code, output = fault.bnmatrix("diff", first, second, "--results", "results")
    assert code == 1, output
    reasons = {n: s["reason"] for n, s in fault.cell(fault.runs()[-1], "tf-2.99.6-cpu")["scenarios"].items()}
    assert "tf-2.99.6-cpu versioned: ✔ updated -> ✘ stale" in output and "2 of 4 verdicts changed" in output, reasons
    code, output = fault.bnmatrix("diff", second, "latest", "--results", "results")
    assert code == 0 and "0 of 4 verdicts changed" in output, output

    code, output = fault.bnmatrix("report", "--results", "results", "--out", "site")
    assert code == 0, output
    site = fault.dir / "site"
    index = (site / "index.html").read_text()
    changes = (site / "changes.html").read_text()
    assert 'id="versioned-cpu-2.99.0-2.99.6"' in changes and "changed in 2.99.4" in changes
    for cell in cells:  # the evidence cells have pages
        assert f'href="cells/{cell["cell"]["id"]}.html#versioned"' in changes
        assert (site / "cells" / f"{cell['cell']['id']}.html").is_file()
    page = (site / "cells" / "tf-2.99.6-cpu.html").read_text()
    assert 'id="history-title"' in page and page.count('title="run ') >= 4  # 2 runs x 2 scenarios
    assert "differ from the cell's previous" in index and 'data-changed="1"' in index
    results = json.loads((site / "results.json").read_text())
    assert results["cumulative"] is True and {c["run_id"] for c in results["cells"]} == {second}
    assert {p["changed_in"] for p in results["change_points"]} == {"2.99.4"}

    # Retention (keep_runs: 1): a third run deletes the second, which nothing cites; the first stays, because
    # the change points cite its cells as their ends, and so does the bisect run.
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results",
                                  "--force")
    assert code == 0, output
    assert f"deleted 1: {second}" in output
    kept = {r["run_id"] for r in fault.runs()}
    assert second not in kept and first in kept and len(kept) == 3

    # The site's archive brings the whole history into another results root.
    code, output = fault.bnmatrix("import", str(site / "results-archive.tar.gz"), "--results", "other")
    assert code == 0 and "3 runs added" in output, output
    code, output = fault.bnmatrix("import", str(site / "results-archive.tar.gz"), "--results", "other")
    assert code == 0 and "holds them all already" in output, output
    code, output = fault.bnmatrix("report", "--results", "other", "--out", "site2")
    assert code == 0, output
    assert (fault.dir / "site2" / "changes.html").read_text().count("changed in 2.99.4") >= 2


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_probes_are_still_queued_stops_the_bisect_at_once(fault: Fault, signum: int,
                                                                         code: int) -> None:
    """--exhaustive with --jobs 1: the first release's probe runs (for 10 minutes) and six wait their turn."""
    setup(fault, STALE_UNTIL_4)
    command = [sys.executable, "-m", "bnmatrix", "bisect", "--matrix", "matrix.yaml", "--backend", "venv", "--jobs",
               "1", "--results", "results", "--scenario", "versioned", "--good", "2.99.0", "--bad", "2.99.6",
               "--exhaustive"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=fault.dir,
                               env={**fault.env, "FAULT_PROBE_SECONDS": "600"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: list(fault.results.glob("2*/logs/*/versioned.log")), timeout=120, what="the first probe")
    (run,) = fault.runs()
    stopped_at_once(fault, process, run["run_id"], signum, code)
    (after,) = fault.runs()
    assert after["status"] == "interrupted" and fault.left_running(run["run_id"]) == []
    assert [c["outcome"] for c in conclusions(fault)] == ["incomplete"]


def test_ends_given_the_wrong_way_round_give_the_change_in_release_order(fault: Fault) -> None:
    """--good newer than --bad: searched (and stored) from the older release to the newer, never backwards."""
    setup(fault, STALE_UNTIL_4)
    code, output = bisect(fault, "--scenario", "versioned", "--good", "2.99.6", "--bad", "2.99.0")
    assert code == 0, output
    assert "--good 2.99.6 is newer than --bad 2.99.0: searching from 2.99.0 to 2.99.6, in release order" in output
    assert "versioned (cpu) changed from stale to updated in 2.99.4 (last stale: 2.99.3)" in output
    (search,) = conclusions(fault)
    assert (search["good"]["version"], search["bad"]["version"], search["changed_in"]) == ("2.99.0", "2.99.6",
                                                                                          "2.99.4")


def test_bisect_package_holds_tf_and_pins_the_change_to_the_package_release_that_made_it(fault: Fault) -> None:
    """A fake TF 2.99.6 and fake keras releases 3.0.0 to 3.6.0 on one index, keras updating the statistics from 3.4.0
    on: `bisect --package keras` probes the TF cell with each keras pinned and names the keras release."""
    root = fault.dir / "index" / "simple"
    for name in ("tensorflow", "keras"):
        (root / name).mkdir(parents=True)
    tensorflow = [_wheel(root / "tensorflow", "tensorflow", "2.99.6",
                         {"tensorflow/__init__.py": FAKE_TF.format(version="2.99.6")})]
    keras = [_wheel(root / "keras", "keras", f"3.{minor}.0",
                    {"keras/__init__.py": f'__version__ = "3.{minor}.0"\nBN_UPDATES = {0 if minor < 4 else 100}\n'})
             for minor in range(7)]
    fault.index = write_index(root, {"tensorflow": tensorflow, "keras": keras})
    fault.matrix(["keras_versioned"], versions=("2.99.6",), pins=["keras"])
    code, output = bisect(fault, "--scenario", "keras_versioned", "--package", "keras", "--good", "3.0.0",
                          "--bad", "3.6.0")
    assert code == 0, output
    assert ("keras_versioned (cpu) with keras on TF 2.99.6 changed from stale to updated in 3.4.0 (last stale: 3.3.0)"
            in output)
    (search,) = conclusions(fault)
    assert (search["package"], search["tf"], search["changed_in"]) == ("keras", "2.99.6", "3.4.0")
    assert "--package keras --tf 2.99.6" in search["command"]
    cells = probe_cells(fault)
    assert {cell["cell"]["id"] for cell in cells} >= {"tf-2.99.6-cpu+keras-3.0.0", "tf-2.99.6-cpu+keras-3.6.0"}
    for cell in cells:  # TF held, keras pinned: the observation names the keras it ran with
        pinned = cell["cell"]["requirements"][-1]
        assert cell["cell"]["tf"] == "2.99.6" and pinned.startswith("keras==")
        assert cell["scenarios"]["keras_versioned"]["observed"]["extra"]["keras"] == pinned.split("==")[1]
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results")
    assert code == 0, output  # the matrix's own cell: today's keras
    code, output = fault.bnmatrix("report", "--results", "results", "--out", "site")
    assert code == 0, output
    changes = (fault.dir / "site" / "changes.html").read_text()
    assert "with keras on TF 2.99.6" in changes and "tf-2.99.6-cpu+keras-3.4.0" in changes

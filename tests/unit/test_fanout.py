"""Fan-out over CI jobs: shards, the GitHub plan and merging results, as properties (hypothesis)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnmatrix.cli import main
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import GITHUB_JOB_LIMIT, Cell, github_jobs, parse_shard, shard
from bnmatrix.store.files import write_json
from bnmatrix.store.merge import merge_runs
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import Observed, ScenarioResult
from bnmatrix.verdict import Status


def runs_on(device: str, tf: str) -> str | list[str]:
    """Runners as settings.runners may name them: one for CPU cells, and GPU runners by TF release."""
    if device == "cpu":
        return "ubuntu-latest"
    return ["self-hosted", "gpu", "t4"] if tf.startswith("1.") else ["self-hosted", "gpu", "h100"]


def make_cell(tf: str, device: str, variant: str | None) -> Cell:
    return Cell(id=f"tf-{tf}-{device}" + (f"-{variant}" if variant else ""), tf=tf, python="3.11", device=device,
                variant=variant, requirements=(f"tensorflow=={tf}",), env={}, image="python:3.11-slim",
                requested_image="python:3.11-slim", steps=100, scenarios=("layers_bn_session",),
                index_url="https://pypi.org/simple")


@st.composite
def cell_lists(draw: st.DrawFn) -> list[Cell]:
    """The cells of any matrix: unique versions, each on some devices, some with a variant."""
    versions = draw(st.lists(st.tuples(st.integers(1, 2), st.integers(0, 30), st.integers(0, 9)), unique=True,
                             min_size=1, max_size=60))
    cells = []
    for major, minor, patch in versions:
        devices = draw(st.sampled_from([("cpu",), ("gpu",), ("cpu", "gpu")]))
        variants = draw(st.sampled_from([(None,), (None, "tfkeras")]))
        cells += [make_cell(f"{major}.{minor}.{patch}", d, v) for d in devices for v in variants]
    return cells


@given(cells=cell_lists(), count=st.integers(1, 40))
def test_shards_are_disjoint_and_cover_the_plan(cells: list[Cell], count: int) -> None:
    shards = [shard(cells, k, count) for k in range(1, count + 1)]
    ids = [c.id for part in shards for c in part]
    assert len(ids) == len(set(ids))  # disjoint
    assert sorted(ids) == sorted(c.id for c in cells)  # union is the plan
    assert shards == [shard(cells, k, count) for k in range(1, count + 1)]  # deterministic


@given(cells=cell_lists(), max_jobs=st.integers(2, GITHUB_JOB_LIMIT))
def test_github_plan_never_exceeds_the_job_limit_and_runs_every_cell_once(cells: list[Cell], max_jobs: int) -> None:
    runners = {json.dumps(runs_on(c.device, c.tf)) for c in cells}
    if max_jobs < len(runners):
        with pytest.raises(BnMatrixError, match=f"at least {len(runners)} jobs"):
            github_jobs(cells, runs_on, max_jobs)
        return
    jobs = github_jobs(cells, runs_on, max_jobs)
    assert 1 <= len(jobs) <= max_jobs
    ids = [cell_id for job in jobs for cell_id in job["cells"].split()]
    assert sorted(ids) == sorted(c.id for c in cells) and len(ids) == len(set(ids))
    by_id = {c.id: c for c in cells}
    for job in jobs:  # a job's cells all want its runner
        assert all(runs_on(by_id[i].device, by_id[i].tf) == job["runs-on"] for i in job["cells"].split())
    assert len({job["name"] for job in jobs}) == len(jobs)
    if len(cells) <= max_jobs:
        assert all(len(job["cells"].split()) == 1 for job in jobs)  # one job per cell when they fit


def test_github_plan_for_the_default_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert main(["plan", "--matrix", str(repo / "matrix.yaml"), "--format", "github", "--max-jobs", "10"]) == 0
    jobs = json.loads(capsys.readouterr().out)["include"]
    assert len(jobs) == 10
    assert {json.dumps(j["runs-on"]) for j in jobs} == {'"ubuntu-latest"', '["self-hosted", "gpu"]'}


def test_gpu_runners_by_release_split_the_gpu_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """settings.runners.gpu as rules: TF 1.x-2.3 on a T4 runner, 2.12+ on an H100 one, the rest on a default."""
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "matrix.yaml").read_text().replace(
        "runners: {cpu: ubuntu-latest, gpu: [self-hosted, gpu]}",
        "runners: {cpu: ubuntu-latest, gpu: [{tf: '<2.4', runs-on: [self-hosted, t4]}, "
        "{tf: '>=2.12', runs-on: [self-hosted, h100]}, {runs-on: [self-hosted, gpu]}]}")
    (tmp_path / "matrix.yaml").write_text(text)
    shutil.copy(repo / "matrix.schema.json", tmp_path)
    assert main(["plan", "--matrix", str(tmp_path / "matrix.yaml"), "--format", "github", "--select", "*-gpu"]) == 0
    jobs = {job["name"]: job["runs-on"] for job in json.loads(capsys.readouterr().out)["include"]}
    assert jobs["tf-1.15.5-gpu"] == jobs["tf-2.3.4-gpu"] == ["self-hosted", "t4"]
    assert jobs["tf-2.4.4-gpu"] == jobs["tf-2.11.1-gpu"] == ["self-hosted", "gpu"]
    assert jobs["tf-2.12.1-gpu"] == jobs["tf-2.21.0-gpu"] == ["self-hosted", "h100"]
    assert main(["plan", "--matrix", str(tmp_path / "matrix.yaml"), "--format", "github", "--select", "*-gpu",
                 "--max-jobs", "3"]) == 0
    jobs = json.loads(capsys.readouterr().out)["include"]
    assert sorted(job["name"] for job in jobs) == ["gpu on self-hosted, gpu 1/1", "gpu on self-hosted, h100 1/1",
                                                   "gpu on self-hosted, t4 1/1"]
    (tmp_path / "matrix.yaml").write_text(text.replace("{runs-on: [self-hosted, gpu]}", "{tf: '~=x', runs-on: a}"))
    assert main(["plan", "--matrix", str(tmp_path / "matrix.yaml"), "--format", "github"]) == 2
    assert "settings.runners.gpu[2].tf" in capsys.readouterr().err


def test_bad_shard_and_job_limit_are_user_errors() -> None:
    for text in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(BnMatrixError, match="expected K/N"):
            parse_shard(text)
    with pytest.raises(BnMatrixError, match="at least 2 jobs"):
        github_jobs([make_cell("1.0.0", "cpu", None), make_cell("1.0.0", "gpu", None)], runs_on, 1)


T0 = "2026-01-01T00:00:00+00:00"


# -- merge ---------------------------------------------------------------------------------------

def cell_result(cell_id: str, started: str, status: str) -> dict[str, Any]:
    tf = cell_id.split("-")[1]
    return {"schema": "bnmatrix.cell/2", "status": "ran", "reason": None, "backend": "venv", "inputs_hash": "h",
            "reused_from": None, "started": started, "duration_s": 1.0, "environment": None, "setup_log": None,
            "setup_log_tail": None,
            "cell": {"id": cell_id, "tf": tf, "python": "3.11", "device": cell_id.split("-")[2], "variant": None,
                     "requirements": [], "steps": 100, "scenarios": ["layers_bn_session"]},
            "scenarios": {"layers_bn_session": scenario_result(status, tf, f"logs/{cell_id}/layers_bn_session.log")}}


def scenario_result(status: str, tf: str, log: str) -> dict[str, Any]:
    """A scenario's stored result whose numbers the host judges as `status` (updated: 100 updates of the
    report's batch [0, 1, 2, 3]; stale: still 0 and 1)."""
    mean, variance = (0.0, 1.0) if status == "stale" else (1.5 * (1 - 0.99 ** 100), 1.25 - 0.25 * 0.99 ** 100)
    result = ScenarioResult(scenario="layers_bn_session", status=Status.ERROR, reason=None, device="cpu", steps=100,
                            tf_version=tf, python="3.11.7", duration_s=1.0, log=log, observed=Observed(
                                momentum=0.99, update_ops=4, train_loss=1.0, eval_loss=1.0, layers={"bn": {
                                    "moving_mean": mean, "moving_variance": variance,
                                    "data": {"values": [0.0, 1.0, 2.0, 3.0]}}}))
    result.judge()
    assert result.status.value == status
    return result.to_dict()


def write_run(root: Path, run_id: str, cells: list[dict[str, Any]]) -> Path:
    directory = root / run_id
    write_json(directory / "manifest.json", {
        "schema": "bnmatrix.run/1", "run_id": run_id, "status": "complete", "started": T0,
        "finished": "2026-01-01T01:00:00+00:00", "backend": "venv", "host": {"hostname": f"host-{run_id}"},
        "matrix": "matrix.yaml",
        "matrix_hash": "0" * 64, "bnmatrix_version": "t", "previous_run": None, "cells": []})
    for cell in cells:
        write_json(directory / "cells" / f"{cell['cell']['id']}.json", cell)
        log = directory / "logs" / cell["cell"]["id"] / "layers_bn_session.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"log of {cell['cell']['id']} in {run_id}")
    return directory


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


CELL_IDS = [f"tf-2.{minor}.0-{device}" for minor in range(4) for device in ("cpu", "gpu")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.lists(st.tuples(st.sampled_from(CELL_IDS), st.integers(0, 3),
                                          st.sampled_from(["updated", "stale"])), max_size=6),
                       min_size=1, max_size=4),
       order=st.randoms())
def test_merge_is_order_independent_and_idempotent(tmp_path: Path, layout: list[list[tuple[str, int, str]]],
                                                   order: Any) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # a fresh folder per example, even when hypothesis replays one
    runs = []
    for index, entries in enumerate(layout):
        cells = {cell_id: cell_result(cell_id, f"2026-01-0{day + 1}T00:00:00+00:00", status)
                 for cell_id, day, status in entries}
        runs.append(write_run(work / "in", f"run{index}", list(cells.values())))
    first = merge_runs(runs, work / "a")
    shuffled = runs[:]
    order.shuffle(shuffled)
    second = merge_runs(shuffled, work / "b")
    assert snapshot(first) == snapshot(second)  # order does not matter
    again = merge_runs([first, *runs], work / "c")
    assert snapshot(again) == snapshot(first)  # merging a merge changes nothing
    merged = load_run(first)
    for cell in (c.to_dict() for c in merged.cells):  # the newest result of each cell wins, with its own log
        candidates = [(c.started, r.name) for r in runs for c in load_run(r).cells if c.id == cell["cell"]["id"]]
        assert (cell["started"], cell["run_id"]) == max(candidates)
        log = first / "logs" / cell["cell"]["id"] / "layers_bn_session.log"
        assert log.read_text() == f"log of {cell['cell']['id']} in {cell['run_id']}"
    shutil.rmtree(work)


def test_two_different_results_for_one_cell_and_run_are_an_error(tmp_path: Path) -> None:
    a = write_run(tmp_path / "x", "run1", [cell_result("tf-2.1.0-cpu", T0, "updated")])
    b = write_run(tmp_path / "y", "run1", [cell_result("tf-2.1.0-cpu", T0, "stale")])
    with pytest.raises(BnMatrixError) as caught:
        merge_runs([a, b], tmp_path / "out")
    message = str(caught.value)
    assert str(a / "cells" / "tf-2.1.0-cpu.json") in message and str(b / "cells" / "tf-2.1.0-cpu.json") in message
    assert "two different results for cell tf-2.1.0-cpu of run run1" in message
    assert not (tmp_path / "out").exists()


def test_merge_finds_runs_in_artifact_folders_and_keeps_a_foreign_out_dir(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "artifacts" / "results-0", "run1", [cell_result("tf-2.1.0-cpu", T0, "updated")])
    write_run(tmp_path / "artifacts" / "results-1", "run2", [cell_result("tf-2.2.0-cpu", T0, "stale")])
    assert main(["merge", str(tmp_path / "artifacts"), "--out", str(tmp_path / "merged")]) == 0
    assert "merged 2 runs, 2 cells" in capsys.readouterr().out
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["merge", str(tmp_path / "artifacts"), "--out", str(foreign)]) == 2
    assert "is not an earlier merge" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"

"""bnmatrix as a newcomer or another repository gets it: the built wheel alone, in a fresh virtualenv, from a
folder outside this checkout (plan, a scenario of one's own, a run of it on real TensorFlow, the report); and the
GitHub Action's own steps doing the same from another repository's checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bnmatrix.backends.venv import uv_binary
from bnmatrix.host import find_interpreter
from tests.conftest import require

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
CELL, CELL_PYTHON = "tf-2.15.1-cpu", "3.11"


def outside_env() -> dict[str, str]:
    """The environment of a user's shell: nothing of this checkout or of the test's own virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    return env


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    done = subprocess.run(command, cwd=cwd, env=env or outside_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bnmatrix's wheel, built from this checkout as the release workflow builds it."""
    out = tmp_path_factory.mktemp("dist")
    run([uv_binary(), "build", "--wheel", "--out-dir", str(out), str(REPO)], cwd=out)
    (built,) = out.glob("bnmatrix-*-py3-none-any.whl")
    return built


def test_the_wheel_alone_plans_writes_a_scenario_runs_it_and_reports(wheel: Path, tmp_path: Path) -> None:
    require(find_interpreter(CELL_PYTHON)[0] is not None, f"no Python {CELL_PYTHON} for {CELL}")
    venv = tmp_path / "venv"
    run([uv_binary(), "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=tmp_path)
    run([uv_binary(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)],
        cwd=tmp_path)
    bnmatrix = str(venv / "bin" / "bnmatrix")
    work = tmp_path / "elsewhere"
    work.mkdir()
    version = wheel.name.split("-")[1]
    assert run([bnmatrix, "--version"], work).strip() == f"bnmatrix {version}"
    plan = " ".join(run([bnmatrix, "plan", "--select", "tf-2.15.1-*", "--backend", "venv"], work).split())
    assert "2 cells from" in plan and "_data/matrix.yaml" in plan  # the matrix the wheel ships
    assert "1 cell cannot run here (tf-2.15.1-gpu): no GPU on this host" in plan
    run([bnmatrix, "scenario", "new", "my_pattern", "--dir", "my-scenarios"], work)
    run([bnmatrix, "run", "--scenarios", "my-scenarios", "--scenario", "my_pattern", "--select", CELL, "--backend",
         "venv"], work)
    cell = json.loads((work / "results" / "latest" / "cells" / f"{CELL}.json").read_text())
    mine = cell["scenarios"]["my_pattern"]
    (verdict,) = mine["verdicts"].values()  # bnmatrix.cell/2: the host's verdict on the one layer it judged
    assert (mine["status"], verdict["effective_updates"]) == ("updated", pytest.approx(100, abs=0.01)), mine["reason"]
    run([bnmatrix, "report"], work)
    assert "my_pattern" in (work / "public" / "scenarios" / "my_pattern.html").read_text()


def expression(text: str, contexts: dict[str, str]) -> str:
    """`${{ a.b }}` in a step's environment, as GitHub fills it from these contexts."""
    for name, value in contexts.items():
        text = text.replace("${{ " + name + " }}", value)
    assert "${{" not in text, text
    return text


def test_the_action_runs_a_users_scenario_from_another_repository(tmp_path: Path) -> None:
    """action.yml's own steps (its `run:` ones, in bash as GitHub runs them, with the environment GitHub gives
    them) in another repository's checkout: exit code 0, the job summary written, the report in its folder.
    The `uses:` steps (setup-python, upload-artifact) are GitHub's own; setup-python's output is this Python."""
    require(sys.version_info[:2] >= (3, 10), "the action's bnmatrix needs Python 3.10 or newer")
    require(find_interpreter(CELL_PYTHON)[0] is not None, f"no Python {CELL_PYTHON} for {CELL}")
    action: dict[str, Any] = yaml.safe_load((REPO / "action.yml").read_text())
    theirs = tmp_path / "their-repository"
    theirs.mkdir()
    run([sys.executable, "-m", "bnmatrix", "scenario", "new", "my_pattern", "--dir", "bn-scenarios"], theirs,
        env=os.environ.copy())
    given = {"scenarios": "bn-scenarios", "scenario": "my_pattern", "select": CELL, "backend": "venv"}
    inputs = {name: given.get(name, spec.get("default", "")) for name, spec in action["inputs"].items()}
    contexts = {f"inputs.{name}": value for name, value in inputs.items()}
    contexts.update({"github.action_path": str(REPO), "steps.python.outputs.python-path": sys.executable})
    github = {"RUNNER_TEMP": str(tmp_path / "runner-temp"), "GITHUB_OUTPUT": str(tmp_path / "output"),
              "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    (tmp_path / "runner-temp").mkdir()
    for step in action["runs"]["steps"]:
        if "run" not in step or "if" in step:
            continue
        env = {**outside_env(), **github, **{k: expression(v, contexts) for k, v in step.get("env", {}).items()}}
        run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], theirs, env=env)
        outputs = dict(line.split("=", 1) for line in Path(github["GITHUB_OUTPUT"]).read_text().splitlines()
                       if "=" in line) if Path(github["GITHUB_OUTPUT"]).exists() else {}
        contexts.update({f"steps.{step.get('id')}.outputs.{k}": v for k, v in outputs.items()})
    assert contexts["steps.run.outputs.exit-code"] == "0"
    summary = Path(github["GITHUB_STEP_SUMMARY"]).read_text()
    assert "**At a glance**" in summary and "| `my_pattern` | ✔ updated 2.15.1 |" in summary
    assert (theirs / "bnmatrix-report" / "index.html").is_file()
    assert (theirs / "bnmatrix-results" / "latest" / "cells" / f"{CELL}.json").is_file()

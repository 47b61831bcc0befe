"""The command-line contract: commands, exit codes, one clear message for a user's mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnmatrix.cli import main
from bnmatrix.config import Matrix
from bnmatrix.plan import plan

REPO = Path(__file__).resolve().parents[2]


def test_plan_json_lists_selected_cells(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--matrix", str(REPO / "matrix.yaml"), "--select", "tf-1.15.5-*", "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in cells] == ["tf-1.15.5-cpu", "tf-1.15.5-gpu"]
    assert cells[0]["requirements"][0] == "tensorflow==1.15.5"


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--matrix", str(REPO / "matrix.yaml"), "--select", "tf-2.16*", "--skip", "*gpu*"]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "tf-2.16.2-cpu" in out and "tf-2.16.2-cpu-jax" in out and "tf-2.16.2-cpu-latest" in out


def test_a_variant_runs_only_the_scenarios_it_names() -> None:
    """The jax variant runs the Keras 3 scenarios (matrix.yaml's variants.jax.scenarios); --scenario narrows it, and a
    variant left with none of them is no cell of the plan."""
    matrix = Matrix.from_file(REPO / "matrix.yaml")
    cells = {c.id: c for c in plan(matrix, select=["tf-2.21.0-cpu*"])}
    assert set(cells) == {"tf-2.21.0-cpu", "tf-2.21.0-cpu-tfkeras", "tf-2.21.0-cpu-jax", "tf-2.21.0-cpu-latest"}
    assert cells["tf-2.21.0-cpu"].scenarios == matrix.scenarios == cells["tf-2.21.0-cpu-tfkeras"].scenarios
    jax = cells["tf-2.21.0-cpu-jax"]
    assert set(jax.scenarios) == set(matrix.variants["jax"].scenarios)
    assert "keras_bn_custom_estimator" not in jax.scenarios
    assert jax.env == {"KERAS_BACKEND": "jax"} and "jax" in jax.requirements
    assert "keras_bn_custom_estimator" not in jax.expect
    narrowed = [c.id for c in plan(matrix, select=["tf-2.21.0-cpu*"], scenarios=["keras_bn_custom_estimator"])]
    assert narrowed == ["tf-2.21.0-cpu", "tf-2.21.0-cpu-tfkeras"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--select", "tf-9.*"], "matches no cell"),
        (["run", "--scenario", "nope"], "--scenario nope: unknown scenario"),
        (["plan", "--matrix", "missing.yaml"], "missing.yaml: cannot read the matrix file"),
        (["report", "--results", "nowhere"], "nowhere: no run here"),
        (["run", "--backend", "docker", "--select", "tf-1.15.5-cpu"], "--backend docker: no Docker daemon answered"),
        (["run", "--jobs", "0"], "--jobs 0: expected a whole number of at least 1"),
        (["run", "--image-map", "python:3.7-slim"], "--image-map 'python:3.7-slim': expected FROM=TO"),
    ],
)
def test_user_mistakes_exit_2_with_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], args: list[str],
                                              message: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    if args[0] != "report" and "--matrix" not in args:
        args = [*args, "--matrix", str(REPO / "matrix.yaml"), "--results", str(tmp_path / "results")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_bad_matrix_exits_2_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "matrix.yaml"
    bad.write_text("schema_version: 1\nscenarios: [layers_bn_session]\nversions:\n  - {tf: 1.15.5, python: 3.7}\n")
    assert main(["run", "--matrix", str(bad), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: versions[0].python: found 3.7 (a number), expected a string" in err


def test_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--sellect", "x"]) == 2
    assert "unrecognized arguments: --sellect" in capsys.readouterr().err


def test_an_unknown_scenario_that_scenario_new_wrote_says_which_scenarios_folder_to_add(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["scenario", "new", "my_pattern", "--dir", "my-scenarios"]) == 0
    capsys.readouterr()
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--scenario", "my_pattern", "--select",
                 "tf-2.15.1-cpu"]) == 2
    err = capsys.readouterr().err
    assert "--scenario my_pattern: unknown scenario" in err
    assert "my-scenarios/my_pattern.py is one: add --scenarios my-scenarios" in err
    assert not (tmp_path / "results").exists()


def test_a_test_run_names_what_it_could_not_test_here(tmp_path: Path) -> None:
    """The README's test command ends with one line naming the skipped parts and why (tests/conftest.py)."""
    import subprocess
    import sys

    (tmp_path / "test_parts.py").write_text(
        "import pytest\n\n"
        "def test_docker():\n    pytest.skip('no Docker daemon answered')\n\n"
        "def test_here():\n    assert True\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rs",
                           str(tmp_path / "test_parts.py")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout
    assert "not tested on this host (1 test skipped): " in done.stdout
    assert "test_parts.py (no Docker daemon answered)" in done.stdout


def test_a_misspelt_scenario_name_gets_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--scenario", "keras_fitt", "--select",
                 "tf-2.15.1-cpu"]) == 2
    err = capsys.readouterr().err
    assert "--scenario keras_fitt: unknown scenario" in err and "perhaps you meant 'keras_fit'?" in err

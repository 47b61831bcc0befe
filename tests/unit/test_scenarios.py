"""Scenarios as a public contract: found in folders, checked, with notes beside them; `scenario new`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnmatrix.cli import main
from bnmatrix.config import Matrix, data_path
from bnmatrix.errors import BnMatrixError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = 'import bnmatrix_scenario as bns\n\n\ndef train(tf, cfg, scratch):\n    return {}\n\n\n' \
          'if __name__ == "__main__":\n    bns.main("{name}", train)\n'


def matrix_with(tmp_path: Path, extra: str = "", scenarios: str = "[keras_fit]") -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(f"schema_version: 1\n{extra}scenarios: {scenarios}\nversions:\n"
                    "  - {tf: 2.15.1, python: \"3.11\", devices: [cpu]}\n")
    return path


def write_scenario(folder: Path, name: str, body: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"{name}.py"
    script.write_text(body if body is not None else MINIMAL.replace("{name}", name))
    return script


def error(action: object) -> str:
    with pytest.raises(BnMatrixError) as caught:
        action()  # type: ignore[operator]
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_every_built_in_scenario_is_found_with_its_notes() -> None:
    matrix = Matrix.from_file(REPO / "matrix.yaml")
    assert len(matrix.scenarios) == 36 and set(matrix.scenarios) <= set(matrix.catalog)
    for name in matrix.scenarios:
        scenario = matrix.catalog[name]
        assert scenario.script == data_path("scenarios").resolve() / f"{name}.py"
        assert {"pattern", "why", "fix"} <= set(scenario.notes), name
        assert all(link["url"].startswith("https://") for link in scenario.notes.get("links", [])), name


def test_scenario_paths_in_the_matrix_resolve_against_it(tmp_path: Path) -> None:
    write_scenario(tmp_path / "mine", "my_pattern")
    (tmp_path / "mine" / "my_pattern.yaml").write_text("pattern: mine\nwhy: because\n")
    matrix = Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [mine]\n", "[keras_fit, my_pattern]"))
    assert matrix.scenarios == ("keras_fit", "my_pattern")
    assert matrix.catalog["my_pattern"].root == (tmp_path / "mine").resolve()
    assert matrix.catalog["my_pattern"].notes == {"pattern": "mine", "why": "because"}
    assert matrix.scenario_dirs == (data_path("scenarios").resolve(), (tmp_path / "mine").resolve())


def test_scenarios_option_adds_a_folder_whose_scenarios_every_cell_runs(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    write_scenario(tmp_path / "mine", "my_pattern")
    write_scenario(tmp_path / "mine" / "lib", "not_a_scenario", "HELPER = 1\n")  # subfolders hold helpers
    (tmp_path / "mine" / "_shared.py").write_text("X = 1\n")  # so do modules with a leading _
    assert main(["plan", "--matrix", str(matrix_with(tmp_path)), "--scenarios", str(tmp_path / "mine"),
                 "--json"]) == 0
    (cell,) = json.loads(capsys.readouterr().out)
    assert cell["scenarios"] == ["keras_fit", "my_pattern"]


def test_two_scenarios_with_one_name_name_both_files(tmp_path: Path) -> None:
    write_scenario(tmp_path / "a", "twin")
    write_scenario(tmp_path / "b", "twin")
    matrix = Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [a]\n"))
    message = error(lambda: matrix.with_scenario_dirs([tmp_path / "b"]))
    assert message == (f"two scenarios named 'twin': {(tmp_path / 'a' / 'twin.py').resolve()} and "
                       f"{(tmp_path / 'b' / 'twin.py').resolve()}; expected each scenario name once (rename one)")
    write_scenario(tmp_path / "c", "keras_fit")  # a built-in name is taken too
    assert "two scenarios named 'keras_fit'" in error(lambda: matrix.with_scenario_dirs([tmp_path / "c"]))


def test_a_file_that_is_not_a_scenario_is_refused_with_what_to_do(tmp_path: Path) -> None:
    write_scenario(tmp_path / "mine", "common", "def helper():\n    return 1\n")
    message = error(lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [mine]\n")))
    assert message.startswith(f"{(tmp_path / 'mine' / 'common.py').resolve().parent}/common.py: not a scenario: "
                              "found no main('common', train) call") or "common.py: not a scenario" in message
    assert "leading '_'" in message
    write_scenario(tmp_path / "other", "mislabelled", MINIMAL.replace("{name}", "something_else"))
    assert "main('something_else', ...) names another scenario; expected main('mislabelled', train)" in error(
        lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [other]\n")))
    write_scenario(tmp_path / "broken", "broken", "def train(:\n")
    assert "broken.py:1: not a scenario: Python syntax error" in error(
        lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [broken]\n")))


def test_a_name_that_is_not_a_plain_identifier_is_refused(tmp_path: Path) -> None:
    write_scenario(tmp_path / "mine", "My-Pattern", MINIMAL.replace("{name}", "My-Pattern"))
    message = error(lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [mine]\n")))
    assert "scenario name 'My-Pattern' is not a plain identifier; expected lower case letters" in message


def test_a_missing_folder_names_the_key_and_the_path(tmp_path: Path) -> None:
    message = error(lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [nowhere]\n")))
    assert message.startswith(f"{tmp_path / 'matrix.yaml'}:2: scenario_paths[0]: found 'nowhere'")
    assert "expected a folder of scenario scripts" in message
    matrix = Matrix.from_file(matrix_with(tmp_path))
    assert error(lambda: matrix.with_scenario_dirs([tmp_path / "gone"])) == (
        f"--scenarios {tmp_path / 'gone'}: does not exist; expected a folder of scenario scripts")


def test_bad_notes_name_the_file_and_the_key(tmp_path: Path) -> None:
    write_scenario(tmp_path / "mine", "noted")
    (tmp_path / "mine" / "noted.yaml").write_text("pattern: x\nwhyy: y\n")
    message = error(lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [mine]\n")))
    assert message.endswith("noted.yaml:2: whyy: unknown key 'whyy'; expected one of pattern, why, fix, fix_code, "
                            "links, decides. Perhaps you meant 'why'?")
    (tmp_path / "mine" / "noted.yaml").write_text("decides:\n- ''\n")
    assert "noted.yaml:2: decides[0]: found '', expected a fragment of a code line (text)" in error(
        lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [mine]\n")))
    (tmp_path / "mine" / "noted.yaml").write_text("links: [{title: t, url: 'javascript:alert(1)'}]\n")
    assert "links[0].url: found 'javascript:alert(1)', expected an http:// or https:// address" in error(
        lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [mine]\n")))
    (tmp_path / "mine" / "noted.yaml").write_text("links: [just a string]\n")
    assert "links[0]: found 'just a string', expected {title: ..., url: https://...}" in error(
        lambda: Matrix.from_file(matrix_with(tmp_path, "scenario_paths: [mine]\n")))


def test_scenario_new_writes_a_skeleton_that_passes_the_contract(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "new", "my_fit", "--dir", str(tmp_path / "mine")]) == 0
    assert "bnmatrix run --scenarios" in capsys.readouterr().out
    matrix = Matrix.from_file(matrix_with(tmp_path)).with_scenario_dirs([tmp_path / "mine"])
    assert matrix.catalog["my_fit"].notes["pattern"]
    compiled = subprocess.run([sys.executable, "-m", "py_compile", str(tmp_path / "mine" / "my_fit.py")])
    assert compiled.returncode == 0
    assert main(["scenario", "new", "my_fit", "--dir", str(tmp_path / "mine")]) == 2  # never overwrites
    assert "exists already" in capsys.readouterr().err
    assert main(["scenario", "new", "My Fit", "--dir", str(tmp_path / "mine")]) == 2
    assert main(["scenario", "new", "keras_fit", "--dir", str(tmp_path / "mine")]) == 2  # a built-in name
    assert "a built-in scenario has that name" in capsys.readouterr().err
    assert not (tmp_path / "mine" / "keras_fit.py").exists()
    shutil.rmtree(tmp_path / "mine")

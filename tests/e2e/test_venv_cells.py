"""Real TensorFlow through the venv backend: TF 1.15.5 on Python 3.7 and TF 2.15.1 on Python 3.11,
all four scenarios, verdicts asserted from the numbers (not from "it ran")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.backends.venv import find_interpreter
from bnmatrix.cli import main
from bnmatrix.report import write_report
from bnmatrix.results import load_run
from tests.conftest import require
from tests.e2e.conftest import E2E_CELLS, REPO, check_verdicts

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=sorted(E2E_CELLS))
def cell_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    cell_id = request.param
    python = E2E_CELLS[cell_id][1]
    interpreter, looked = find_interpreter(python)
    require(interpreter is not None, f"no Python {python} for {cell_id} (looked in {', '.join(looked)})")
    results = tmp_path_factory.mktemp("results")
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "venv", "--select", cell_id,
                 "--results", str(results)]) == 0
    (cell,) = load_run(results).cells
    return results, cell


def test_verdicts_from_the_numbers(cell_run: tuple[Path, dict[str, Any]]) -> None:
    _, cell = cell_run
    check_verdicts(cell)
    tf = E2E_CELLS[cell["cell"]["id"]][0]
    assert cell["environment"]["kind"] == "venv"
    assert any(line.startswith("tensorflow==" + tf) for line in cell["environment"]["packages"])
    towers = cell["scenarios"]["layers_bn_session"]["details"]["towers_output1_output2"]
    assert len(towers["train_mode"]) == 2 and len(towers["inference_mode"]) == 2


def test_report_of_the_real_run(cell_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    results, cell = cell_run
    page = write_report(results, tmp_path / "site").read_text()
    statuses = dict(re.findall(r'<td class="cell [^"]*" data-device="cpu" data-scenario="([a-z_]+)"\s+'
                               r'data-status="([a-z-]+)"', page))
    assert statuses == {"keras_bn_custom_estimator": "stale", "layers_bn_custom_estimator": "updated",
                        "keras_bn_model_to_estimator": "updated", "layers_bn_session": "wrong"}
    assert f"{cell['scenarios']['layers_bn_custom_estimator']['moving_mean']:.6g}" in page


def test_second_run_reuses_the_unchanged_cell(cell_run: tuple[Path, dict[str, Any]]) -> None:
    results, cell = cell_run
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "venv", "--select", cell["cell"]["id"],
                 "--results", str(results)]) == 0
    (again,) = load_run(results).cells
    assert again["reused_from"] is not None
    assert again["scenarios"] == cell["scenarios"]

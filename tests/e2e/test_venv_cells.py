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

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
CELLS = {"tf-1.15.5-cpu": ("1.15.5", "3.7"), "tf-2.15.1-cpu": ("2.15.1", "3.11")}
STEPS = 100
MU, MOMENTUM = 1.5, 0.99


@pytest.fixture(scope="module", params=sorted(CELLS))
def cell_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    cell_id = request.param
    python = CELLS[cell_id][1]
    interpreter, looked = find_interpreter(python)
    require(interpreter is not None, f"no Python {python} for {cell_id} (looked in {', '.join(looked)})")
    results = tmp_path_factory.mktemp("results")
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--select", cell_id, "--results", str(results)]) == 0
    run = load_run(results)
    (cell,) = run.cells
    return results, cell


def test_cell_ran_the_requested_tensorflow(cell_run: tuple[Path, dict[str, Any]]) -> None:
    _, cell = cell_run
    tf, python = CELLS[cell["cell"]["id"]]
    assert cell["status"] == "ran", cell["reason"]
    assert set(cell["scenarios"]) == {"keras_bn_custom_estimator", "layers_bn_custom_estimator",
                                      "keras_bn_model_to_estimator", "layers_bn_session"}
    for scenario in cell["scenarios"].values():
        assert scenario["tf_version"] == tf
        assert scenario["python"].startswith(python + ".")
        assert "CPU" in scenario["devices_seen"] and "GPU" not in scenario["devices_seen"]
        assert scenario["steps"] == STEPS
        assert scenario["expected_moving_mean"] == pytest.approx(MU * (1 - MOMENTUM**STEPS))
    assert any(line.startswith("tensorflow==" + tf) for line in cell["environment"]["packages"])


def test_keras_bn_in_a_custom_estimator_never_updates(cell_run: tuple[Path, dict[str, Any]]) -> None:
    s = cell_run[1]["scenarios"]["keras_bn_custom_estimator"]
    assert s["status"] == "stale"
    assert (s["moving_mean"], s["moving_variance"]) == (0.0, 1.0)
    assert s["update_ops"] == 0 and s["effective_updates"] == 0.0
    assert s["train_loss"] is not None and s["eval_loss"] is not None


@pytest.mark.parametrize("name", ["layers_bn_custom_estimator", "keras_bn_model_to_estimator"])
def test_layers_bn_and_model_to_estimator_update_once_per_step(cell_run: tuple[Path, dict[str, Any]],
                                                               name: str) -> None:
    s = cell_run[1]["scenarios"][name]
    assert s["status"] == "updated", s["reason"]
    assert s["moving_mean"] == pytest.approx(MU * (1 - MOMENTUM**STEPS), rel=1e-5)
    assert s["moving_variance"] == pytest.approx(1.25 + (1 - 1.25) * MOMENTUM**STEPS, rel=1e-5)
    assert s["effective_updates"] == pytest.approx(STEPS, abs=0.01)


def test_the_reports_session_code_updates_twice_per_step(cell_run: tuple[Path, dict[str, Any]]) -> None:
    # The report's second tower (reuse=True) adds its own update ops to UPDATE_OPS: 4 per tower.
    s = cell_run[1]["scenarios"]["layers_bn_session"]
    assert s["update_ops"] == 8
    assert s["status"] == "wrong"
    assert s["effective_updates"] == pytest.approx(2 * STEPS, abs=0.5)
    towers = s["details"]["towers_output1_output2"]
    assert len(towers["train_mode"]) == 2 and len(towers["inference_mode"]) == 2


def test_report_of_the_real_run(cell_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    results, cell = cell_run
    page = write_report(results, tmp_path / "site").read_text()
    statuses = dict(re.findall(r'<td class="cell s-[a-z-]+">\s*<a href="#[^"]+--([a-z_]+)"[^>]*>\s*'
                               r'<span aria-hidden="true">[^<]+</span> ([a-z ]+?)\s*</a>', page))
    assert statuses == {"keras_bn_custom_estimator": "stale", "layers_bn_custom_estimator": "updated",
                        "keras_bn_model_to_estimator": "updated", "layers_bn_session": "wrong"}
    assert f"{cell['scenarios']['layers_bn_custom_estimator']['moving_mean']:.6g}" in page


def test_second_run_reuses_the_unchanged_cell(cell_run: tuple[Path, dict[str, Any]]) -> None:
    results, cell = cell_run
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--select", cell["cell"]["id"],
                 "--results", str(results)]) == 0
    (again,) = load_run(results).cells
    assert again["reused_from"] is not None
    assert again["scenarios"] == cell["scenarios"]

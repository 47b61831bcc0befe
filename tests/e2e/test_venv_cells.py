"""Real TensorFlow through the venv backend: TF 1.15.5 on Python 3.7 and TF 2.15.1 on Python 3.11
with every scenario, TF 2.16.2 (Keras 3) with the scenarios Keras 3 changes, and a user's own
scenario from a folder outside the package; verdicts asserted from the numbers (not from "it ran")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bnmatrix.cli import main
from bnmatrix.config import Matrix
from bnmatrix.report import write_report
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import CellResult
from tests.e2e.conftest import (
    E2E_CELLS,
    KERAS3_CELL,
    REPO,
    check_verdicts,
    reproduce_and_compare,
    run_cell,
)

pytestmark = pytest.mark.e2e

USER_SCENARIO = '''"""A user's pattern: keras_fit with the layer built by a helper module in a subfolder."""
import bnmatrix_scenario as bns
from mylib.layers import make_batch_norm


def train(tf, cfg, scratch):
    import numpy as np
    bn = make_batch_norm(tf)
    inputs = tf.keras.Input(shape=(1,))
    model = tf.keras.Model(inputs=inputs, outputs=tf.keras.layers.Dense(1)(bn(inputs)))
    model.compile(optimizer=tf.keras.optimizers.Adam(bns.LEARNING_RATE), loss="mse")
    x = np.array(bns.FEATURES, dtype=np.float32)
    model.fit(x, -x, batch_size=4, epochs=cfg.steps, verbose=0)
    return bns.observations({"bn": bns.layer(bns.read_variable(tf, bn.moving_mean),
                                             bns.read_variable(tf, bn.moving_variance), bns.feature_values())},
                            extra={"made_by": "mylib"})


if __name__ == "__main__":
    bns.main("user_keras_fit", train)
'''


def user_scenarios(folder: Path) -> Path:
    """A folder of the user's own: one scenario, its notes, and a helper package in a subfolder."""
    (folder / "mylib").mkdir(parents=True)
    (folder / "mylib" / "__init__.py").write_text("")
    (folder / "mylib" / "layers.py").write_text(
        "def make_batch_norm(tf):\n    return tf.keras.layers.BatchNormalization(momentum=0.99)\n")
    (folder / "user_keras_fit.py").write_text(USER_SCENARIO)
    (folder / "user_keras_fit.yaml").write_text("pattern: The user's own keras_fit.\nwhy: Because fit runs updates.\n")
    return folder


@pytest.mark.parametrize("cell_id", sorted(E2E_CELLS))
def test_every_scenario_gives_its_verdict_from_the_numbers(venv_runs: dict[str, tuple[Path, CellResult]],
                                                           cell_id: str) -> None:
    _, cell = venv_runs[cell_id]
    assert sorted(cell.scenarios) == sorted(Matrix.from_file(REPO / "matrix.yaml").scenarios)  # all 36
    check_verdicts(cell)
    tf = E2E_CELLS[cell_id][0]
    assert cell.environment is not None and cell.environment["kind"] == "venv"
    assert any(line.startswith("tensorflow==" + tf) for line in cell.environment["packages"])


def test_every_scenario_on_tf_2_16_with_keras_3(tmp_path: Path) -> None:
    cell_id, _, python = KERAS3_CELL
    cell = run_cell(cell_id, python, tmp_path)
    assert sorted(cell.scenarios) == sorted(Matrix.from_file(REPO / "matrix.yaml").scenarios)
    check_verdicts(cell)
    observed = cell.scenarios["keras3_bn_fit"].observed
    assert observed is not None and observed.extra["keras"].startswith("3.")


def test_the_keras_3_scenarios_on_the_jax_backend(tmp_path: Path) -> None:
    """The jax variant of 2.16.2: jax installed, KERAS_BACKEND=jax, its own scenarios only."""
    cell_id, _, python = KERAS3_CELL
    cell = run_cell(cell_id + "-jax", python, tmp_path)
    assert sorted(cell.scenarios) == sorted(Matrix.from_file(REPO / "matrix.yaml").variants["jax"].scenarios)
    check_verdicts(cell)
    assert {s.observed.extra.get("backend") for s in cell.scenarios.values()
            if s.scenario == "keras3_bn_fit" and s.observed} == {"jax"}
    assert any(line.startswith("jax==") for line in (cell.environment or {})["packages"])


def test_report_of_the_real_run(venv_runs: dict[str, tuple[Path, CellResult]], tmp_path: Path) -> None:
    results, cell = venv_runs["tf-1.15.5-cpu"]
    page = write_report(results, tmp_path / "site").read_text()
    statuses = dict(re.findall(r'<td class="cell [^"]*" data-device="cpu" data-scenario="([a-z0-9_]+)"\s+'
                               r'data-status="([a-z-]+)"', page))
    assert statuses == {name: s.status.value for name, s in cell.scenarios.items()}
    assert f"{cell.scenarios['layers_bn_custom_estimator'].numbers()['moving_mean']:.6g}" in page


def test_second_run_reuses_the_unchanged_cell(venv_runs: dict[str, tuple[Path, CellResult]]) -> None:
    results, cell = venv_runs["tf-1.15.5-cpu"]
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "venv", "--select", cell.id,
                 "--results", str(results)]) == 0
    (again,) = load_run(results).cells
    assert again.reused_from is not None
    assert again.scenarios == cell.scenarios


def test_a_users_own_scenario_runs_and_gets_its_page(tmp_path: Path) -> None:
    folder = user_scenarios(tmp_path / "elsewhere" / "my-scenarios")
    cell = run_cell("tf-2.15.1-cpu", "3.11", tmp_path / "r", "--scenarios", str(folder),
                    "--scenario", "user_keras_fit", "--scenario", "keras_bn_custom_estimator")
    mine = cell.scenarios["user_keras_fit"]
    assert mine.status.value == "updated", mine.reason
    numbers = mine.numbers()
    assert numbers["effective_updates"] == pytest.approx(100, abs=0.01) and numbers["variance_correction"] == "biased"
    assert mine.observed is not None and mine.observed.extra == {"made_by": "mylib"}
    site = write_report(tmp_path / "r", tmp_path / "site").parent
    page = (site / "scenarios" / "user_keras_fit.html").read_text()
    assert "The user&#39;s own keras_fit." in page and "Because fit runs updates." in page
    assert "make_batch_norm" in page  # the code as it ran


def test_the_reproduce_commands_of_a_venv_cell_give_its_numbers_without_bnmatrix(
        venv_runs: dict[str, tuple[Path, CellResult]], tmp_path: Path) -> None:
    """results.json's command, for a built-in scenario and for a user's (with its helper package), run from the run's
    folder: a fresh virtualenv of the cell's Python with exactly the cell's packages (pip, from PyPI), then the run's
    own copy of the scenario code. bnmatrix is not on PATH; the cell's Python is, as on a user's host."""
    folder = user_scenarios(tmp_path / "elsewhere" / "my-scenarios")
    cell = run_cell("tf-1.15.5-cpu", "3.7", tmp_path / "r", "--scenarios", str(folder),
                    "--scenario", "user_keras_fit", "--scenario", "keras_bn_custom_estimator")
    assert (cell.environment or {})["kind"] == "venv" and cell.code is not None
    (run,) = (tmp_path / "r").glob("2*")
    assert sorted(p.name for p in (run / "code").iterdir()) == sorted({cell.code["helper"],
                                                                        *cell.code["scenarios"].values()})
    assert (run / "code" / cell.code["scenarios"]["user_keras_fit"] / "mylib" / "layers.py").is_file()
    python = Path(cell.environment["python"]).parent  # type: ignore[index]
    commands = reproduce_and_compare(tmp_path / "r", cell, path=str(python))
    assert all("--no-deps" in command and "tensorflow==1.15.5" in command for command in commands)


def test_a_cell_installs_the_dependencies_of_its_release_and_the_latest_variant_todays(tmp_path: Path) -> None:
    """TF 2.16.2 was uploaded on 2024-06-28: its cell resolves as of a week later (matrix.yaml released: and
    settings.release_grace_days), so it gets the Keras of mid-2024, which has no renorm; its `latest` variant gets
    today's Keras, which has it again."""
    from bnmatrix.host import find_interpreter
    from bnmatrix.store.reader import load_run

    cell_id, _, python = KERAS3_CELL
    interpreter, looked = find_interpreter(python)
    assert interpreter is not None, looked
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "venv", "--select", cell_id,
                 "--select", f"{cell_id}-latest", "--scenario", "keras_bn_renorm", "--results", str(tmp_path)]) == 0
    cells = {cell.id: cell for cell in load_run(tmp_path).cells}
    released, today = cells[cell_id], cells[f"{cell_id}-latest"]

    def keras(cell: CellResult) -> str:
        return next(line.split("==")[1] for line in (cell.environment or {})["packages"] if line.startswith("keras=="))

    assert released.cell.exclude_newer == "2024-07-05T18:50:50Z" and today.cell.exclude_newer is None
    assert keras(released) == "3.4.1"  # uploaded 2024-06-26, the newest Keras before the cutoff
    assert tuple(int(x) for x in keras(today).split(".")[:2]) > (3, 4)
    assert released.scenarios["keras_bn_renorm"].status.value == "unsupported"
    assert today.scenarios["keras_bn_renorm"].status.value != "unsupported"

"""Planning: cells from the matrix, ids, variants, --select/--skip globs (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnmatrix.config import Matrix
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import all_cells, plan

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return Matrix.from_file(REPO / "matrix.yaml")


def test_cell_ids_are_version_device_and_variant(matrix: Matrix) -> None:
    ids = [cell.id for cell in all_cells(matrix)]
    assert "tf-1.15.5-cpu" in ids and "tf-1.15.5-gpu" in ids
    assert "tf-2.16.2-cpu-tfkeras" in ids and "tf-2.15.1-cpu-tfkeras" not in ids
    assert len(ids) == len(set(ids))


def test_a_cell_carries_what_it_installs_and_runs(matrix: Matrix) -> None:
    (cell,) = plan(matrix, select=["tf-2.16.2-cpu-tfkeras"])
    assert cell.requirements == ("tensorflow==2.16.2", "tf_keras~=2.16.0")
    assert cell.env == {"TF_USE_LEGACY_KERAS": "1"}
    assert cell.python == "3.12" and cell.steps == 100
    assert cell.scenarios == matrix.scenarios
    (gpu,) = plan(matrix, select=["tf-1.15.5-gpu"])
    assert gpu.requirements[0] == "tensorflow-gpu==1.15.5"


def test_select_globs_and_skip(matrix: Matrix) -> None:
    assert [c.id for c in plan(matrix, select=["tf-1.15.5-*"])] == ["tf-1.15.5-cpu", "tf-1.15.5-gpu"]
    one_x = plan(matrix, select=["tf-1.*"], skip=["*-gpu*"])
    assert one_x and all(c.id.startswith("tf-1.") and c.device == "cpu" for c in one_x)
    both = plan(matrix, select=["tf-1.15.5-cpu", "tf-2.15*-cpu"])
    assert [c.id for c in both] == ["tf-2.15.1-cpu", "tf-1.15.5-cpu"]  # matrix order, newest first


def test_scenario_selection(matrix: Matrix) -> None:
    (cell,) = plan(matrix, select=["tf-1.15.5-cpu"], scenarios=["layers_bn_session"])
    assert cell.scenarios == ("layers_bn_session",)
    with pytest.raises(BnMatrixError, match="--scenario nope: unknown scenario; expected one of keras_bn_custom"):
        plan(matrix, scenarios=["nope"])


def test_a_select_that_matches_nothing_is_an_error(matrix: Matrix) -> None:
    with pytest.raises(BnMatrixError, match=r"--select 'tf-9\.\*' matches no cell"):
        plan(matrix, select=["tf-9.*"])


def test_inputs_hash_changes_with_the_cell_and_the_code(matrix: Matrix) -> None:
    a, b = plan(matrix, select=["tf-1.15.5-*"])
    sources = {"x.py": "print(1)"}
    assert a.inputs_hash(sources) == a.inputs_hash(dict(sources))
    assert a.inputs_hash(sources) != b.inputs_hash(sources)
    assert a.inputs_hash(sources) != a.inputs_hash({"x.py": "print(2)"})


def test_the_shipped_expectations_match_the_real_run(matrix: Matrix) -> None:
    """matrix.yaml's expect: rules say what the real run in tests/data/run found, cell by cell."""
    from bnmatrix.store.reader import load_run

    run = load_run(REPO / "tests" / "data" / "run")
    cells = {cell.id: cell for cell in all_cells(matrix)}
    checked = 0
    for result in run.cells:
        if result.status.value != "ran":
            continue
        expected = cells[result.id].expect
        for name, scenario in result.scenarios.items():
            assert expected[name] == scenario.status.value, (result.id, name)
            checked += 1
    assert checked == 37 * 36 + 8 * 14  # 37 cells with every scenario, 6 jax and 2 latest cells with the Keras 3 ones


def test_expectations_follow_the_last_matching_rule(matrix: Matrix) -> None:
    (old,) = plan(matrix, select=["tf-1.8.0-cpu"])
    (new,) = plan(matrix, select=["tf-2.16.2-cpu"])
    (legacy,) = plan(matrix, select=["tf-2.16.2-cpu-tfkeras"])
    assert old.expect["keras_bn_custom_estimator"] == "updated"
    assert new.expect["layers_bn_session"] == "unsupported" and legacy.expect["layers_bn_session"] == "wrong"
    a, b = plan(matrix, select=["tf-1.15.5-cpu", "tf-2.15.1-cpu"])
    assert a.inputs_hash({}) != b.inputs_hash({})
    from dataclasses import replace

    assert replace(a, expect={}).inputs_hash({}) == a.inputs_hash({})  # expectations never force a rerun

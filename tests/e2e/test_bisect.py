"""Bisect on real TensorFlow: the default matrix's keras_bn_model_to_estimator goes from stale (1.9.0) to
updated (1.10.1); the index has 1.10.0 between them, and the numbers of each release say which it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnmatrix.cli import main
from bnmatrix.host import find_interpreter
from tests.conftest import require
from tests.e2e.conftest import MOMENTUM, MU, REPO, STEPS

pytestmark = pytest.mark.e2e


def test_bisect_pins_model_to_estimator_to_the_release_from_the_numbers(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    interpreter, looked = find_interpreter("3.6")
    require(interpreter is not None, f"no Python 3.6 for TF 1.9 and 1.10 (looked in {', '.join(looked)})")
    code = main(["bisect", "--matrix", str(REPO / "matrix.yaml"), "--backend", "venv", "--results",
                 str(tmp_path), "--scenario", "keras_bn_model_to_estimator", "--good", "1.9.0", "--bad", "1.10.1"])
    output = capsys.readouterr().out
    assert code == 0, output
    (run,) = [p.parent for p in tmp_path.glob("*/bisect.json")]
    (search,) = json.loads((run / "bisect.json").read_text())["searches"]
    assert search["candidates"] == ["1.9.0", "1.10.0", "1.10.1"]  # every release on PyPI between the two
    probes = {p["version"]: p for p in search["probes"]}
    assert set(probes) == {"1.9.0", "1.10.0", "1.10.1"}
    expected_mean = MU * (1 - MOMENTUM**STEPS)
    assert (probes["1.9.0"]["moving_mean"], probes["1.9.0"]["effective_updates"]) == (0.0, 0.0)
    for version in ("1.10.0", "1.10.1"):
        assert probes[version]["moving_mean"] == pytest.approx(expected_mean, rel=1e-5)
        assert probes[version]["effective_updates"] == pytest.approx(STEPS, abs=0.01)
    assert [probes[v]["status"] for v in search["candidates"]] == ["stale", "updated", "updated"]
    assert (search["outcome"], search["changed_in"], search["last_before"]) == ("narrowed", "1.10.0", "1.9.0")
    assert ("keras_bn_model_to_estimator (cpu) changed from stale to updated in 1.10.0 (last stale: 1.9.0); "
            "3 releases checked of 3") in output
    cells = {json.loads(p.read_text())["cell"]["tf"] for p in (run / "cells").glob("*.json")}
    assert cells == {"1.9.0", "1.10.0", "1.10.1"}  # each a stored cell result, like a run's

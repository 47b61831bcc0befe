"""Fan-out end to end: two shards of a small real selection, run apart and merged, give the
report a single run gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bnmatrix.cli import main
from bnmatrix.host import find_interpreter
from tests.conftest import require
from tests.e2e.conftest import E2E_CELLS, REPO

pytestmark = pytest.mark.e2e
# The two Estimator scenarios with tf.layers and tf.keras: deterministic numbers, quick to run.
SCENARIOS = ["--scenario", "keras_bn_custom_estimator", "--scenario", "layers_bn_custom_estimator"]


def matrix_table(page: str) -> str:
    """The matrix table: every status, icon and the numbers shown on hover and focus."""
    match = re.search(r'<table class="matrix"[^>]*>.*?</table>', page, re.S)
    assert match, "no matrix table on the page"
    return re.sub(r" \[result of run [^\]]*\]", "", match[0])  # which run produced each result differs


def test_two_merged_shards_report_what_one_run_reports(tmp_path: Path) -> None:
    for cell_id, (_, python) in E2E_CELLS.items():
        require(find_interpreter(python)[0] is not None, f"no Python {python} for {cell_id}")
    common = ["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "venv", *SCENARIOS]
    for cell_id in E2E_CELLS:
        common += ["--select", cell_id]
    assert main([*common, "--results", str(tmp_path / "single")]) == 0
    for index in (1, 2):
        assert main([*common, "--shard", f"{index}/2", "--results", str(tmp_path / f"shard{index}")]) == 0
    assert main(["merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out", str(tmp_path / "merged")]) == 0
    for name in ("single", "merged"):
        assert main(["report", "--results", str(tmp_path / name), "--out", str(tmp_path / f"site-{name}")]) == 0
    single = matrix_table((tmp_path / "site-single" / "index.html").read_text())
    merged = matrix_table((tmp_path / "site-merged" / "index.html").read_text())
    assert merged == single
    assert len(re.findall(r'<td class="cell s-stale\b', single)) == 2
    assert len(re.findall(r'<td class="cell s-updated\b', single)) == 2

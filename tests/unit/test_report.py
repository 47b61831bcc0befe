"""Report rendering: what the page says matches the results, and results cannot inject markup."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from bnmatrix.report import render, write_report
from bnmatrix.results import Run


def scenario(name: str, status: str, mean: float | None, updates: float | None, **extra: object) -> dict:
    return {"schema": "bnmatrix.scenario/1", "scenario": name, "status": status, "reason": f"{status} because",
            "tf_version": "1.15.5", "keras_version": "2.2.4-tf", "python": "3.7.16", "device": "cpu", "steps": 100,
            "momentum": 0.99, "moving_mean": mean, "moving_variance": 1.0 if mean == 0 else 1.1584919,
            "expected_moving_mean": 0.95095149, "expected_moving_variance": 1.15849191,
            "effective_updates": updates, "update_ops": 0, "train_loss": 6.9, "eval_loss": 15.3, "duration_s": 3.5,
            "error": None, "log": f"logs/x/{name}.log", "log_tail": "", **extra}


def cell(cell_id: str, tf: str, device: str, status: str, scenarios: dict, reason: str | None = None) -> dict:
    return {"schema": "bnmatrix.cell/1", "status": status, "reason": reason, "backend": "venv", "inputs_hash": "h",
            "reused_from": None, "started": "2026-11-26T00:00:00+00:00", "duration_s": 12.0, "environment": None,
            "setup_log": None, "setup_log_tail": None, "scenarios": scenarios,
            "cell": {"id": cell_id, "tf": tf, "python": "3.7", "device": device, "variant": None,
                     "requirements": [f"tensorflow=={tf}"], "steps": 100,
                     "scenarios": ["keras_bn_custom_estimator", "layers_bn_session"]}}


def sample_run(tmp_path: Path) -> Run:
    cells = [
        cell("tf-1.15.5-cpu", "1.15.5", "cpu", "ran", {
            "keras_bn_custom_estimator": scenario("keras_bn_custom_estimator", "stale", 0.0, 0.0),
            "layers_bn_session": scenario("layers_bn_session", "wrong", 1.2990305, 200.00003)}),
        cell("tf-1.15.5-gpu", "1.15.5", "gpu", "not-run", {}, reason="no GPU on this host"),
        cell("tf-2.15.1-cpu", "2.15.1", "cpu", "ran", {
            "keras_bn_custom_estimator": scenario("keras_bn_custom_estimator", "unsupported", None, None),
            "layers_bn_session": scenario("layers_bn_session", "updated", 0.95095158, 100.000016)}),
    ]
    manifest = {"schema": "bnmatrix.run/1", "run_id": "r1", "status": "complete", "started": "s", "finished": "f",
                "backend": "venv", "host": {"hostname": "h"}, "bnmatrix_version": "t", "matrix": "matrix.yaml",
                "matrix_hash": "0" * 64}
    return Run(tmp_path, manifest, cells)


def table_cells(page: str) -> list[tuple[str, str]]:
    """(anchor, status word) of every matrix cell, in page order."""
    found = re.findall(r'<td class="cell s-([a-z-]+)">\s*<a href="#([^"]+)"', page)
    return [(anchor, status) for status, anchor in found]


def test_rows_newest_first_and_every_cell_shows_its_status(tmp_path: Path) -> None:
    page = render(sample_run(tmp_path))
    assert table_cells(page) == [
        ("tf-2.15.1-cpu--keras_bn_custom_estimator", "unsupported"),
        ("tf-2.15.1-cpu--layers_bn_session", "updated"),
        ("tf-1.15.5-cpu--keras_bn_custom_estimator", "stale"),
        ("tf-1.15.5-cpu--layers_bn_session", "wrong"),
        ("tf-1.15.5-gpu--keras_bn_custom_estimator", "not-run"),
        ("tf-1.15.5-gpu--layers_bn_session", "not-run"),
    ]


def test_hover_text_carries_the_numbers_behind_the_verdict(tmp_path: Path) -> None:
    page = html.unescape(render(sample_run(tmp_path)))
    assert ("moving mean 1.29903 (expected 0.950951), moving variance 1.15849 (expected 1.15849); "
            "effective updates 200 / 100 steps") in page
    assert "not run: no GPU on this host" in page
    assert 'role="tooltip" id="tip-tf-1.15.5-cpu--layers_bn_session"' in page
    assert "stale because" in page and "wrong because" in page


def test_status_is_said_in_words_not_colour_alone(tmp_path: Path) -> None:
    page = render(sample_run(tmp_path))
    for word in ("updated", "stale", "wrong", "unsupported", "not run"):
        assert re.search(rf'<span aria-hidden="true">[^<]+</span> {word}\s*</a>', page), word


def test_results_cannot_inject_markup(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    run.cells[0]["scenarios"]["layers_bn_session"].update(reason=evil, log_tail=evil,
                                                          error={"message": evil, "traceback": evil})
    run.cells[1]["reason"] = evil
    page = render(run)
    assert "<script>" not in page and "<img" not in page
    assert html.escape(evil, quote=True) in page or "&lt;script&gt;" in page


def test_write_report_makes_an_offline_site(tmp_path: Path) -> None:
    run = sample_run(tmp_path / "run")
    (run.directory / "cells").mkdir(parents=True)
    (run.directory / "manifest.json").write_text(json.dumps(run.manifest))
    for c in run.cells:
        (run.directory / "cells" / f"{c['cell']['id']}.json").write_text(json.dumps(c))
    index = write_report(run.directory, tmp_path / "site")
    page = index.read_text()
    assert (tmp_path / "site" / "style.css").exists()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no CDN, no external request
    assert "def train(tf, cfg, scratch)" in page  # each scenario's code is on the page

"""Report rendering (pure): what the pages and exports say matches the results; nothing in a
result can inject markup; every page is valid HTML5 with relative links only."""

from __future__ import annotations

import copy
import html
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import html5lib
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnmatrix.backends.docker import run_flags, run_options
from bnmatrix.config import ContainerSettings, data_path
from bnmatrix.errors import BnMatrixError
from bnmatrix.history import change_points
from bnmatrix.report import glance_text, pattern_code, render_site, write_report
from bnmatrix.store.files import write_json
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import CellResult, Manifest, Run
from bnmatrix.store.searches import Outcome
from bnmatrix.verdict import Status
from bnmatrix.view import ScenarioSource, Site, View, build_view, search_anchor
from tests.conftest import add_candidate

EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def render(run: Run, previous: Run | None = None) -> dict[str, str]:
    """The site of one run (as `bnmatrix report --results RUN_DIR` renders it)."""
    return render_site(Site.of_run(run), previous)


def scenario(name: str, status: str, mean: float | None, updates: float | None, **extra: object) -> dict[str, Any]:
    return {"schema": "bnmatrix.scenario/1", "scenario": name, "status": status, "reason": f"{status} because",
            "tf_version": "1.15.5", "keras_version": "2.2.4-tf", "python": "3.7.16", "device": "cpu", "steps": 100,
            "momentum": 0.99, "batch_mean": 1.5, "moving_mean": mean,
            "moving_variance": 1.0 if mean == 0 else 1.1584919, "expected_moving_mean": 0.95095149,
            "expected_moving_variance": 1.15849191, "effective_updates": updates, "update_ops": 0,
            "train_loss": 6.9, "eval_loss": 15.3, "duration_s": 3.5, "error": None,
            "log": f"logs/x/{name}.log", "log_tail": "",
            "layers": {} if mean is None else {"bn": {"moving_mean": mean, "moving_variance": 1.0 if mean == 0 else
                                                      1.1584919, "data": {"values": [0.0, 1.0, 2.0, 3.0]}}}, **extra}


def cell(cell_id: str, tf: str, device: str, status: str, scenarios: dict[str, Any], reason: str | None = None,
         expect: dict[str, str] | None = None) -> dict[str, Any]:
    return {"schema": "bnmatrix.cell/1", "status": status, "reason": reason, "backend": "venv", "inputs_hash": "h",
            "reused_from": None, "started": "2026-11-26T00:00:00+00:00", "duration_s": 12.0,
            "environment": {"kind": "venv", "venv": "/v", "python": "/p", "python_version": "3.7.16",
                            "packages": ["tensorflow==1.15.5"]} if status == "ran" else None,
            "setup_log": None, "setup_log_tail": None, "scenarios": scenarios,
            "cell": {"id": cell_id, "tf": tf, "python": "3.7", "device": device, "variant": None,
                     "requirements": [f"tensorflow=={tf}", "numpy<1.19"], "env": {}, "steps": 100,
                     "scenarios": ["keras_bn_custom_estimator", "layers_bn_session"], "expect": expect or {}}}


def sample_run(tmp_path: Path) -> Run:
    cells = [
        cell("tf-1.15.5-cpu", "1.15.5", "cpu", "ran", {
            "keras_bn_custom_estimator": scenario("keras_bn_custom_estimator", "stale", 0.0, 0.0),
            "layers_bn_session": scenario("layers_bn_session", "wrong", 1.2990305, 200.00003)},
             expect={"keras_bn_custom_estimator": "stale", "layers_bn_session": "updated"}),
        cell("tf-1.15.5-gpu", "1.15.5", "gpu", "not-run", {}, reason="no GPU on this host"),
        cell("tf-2.15.1-cpu", "2.15.1", "cpu", "ran", {
            "keras_bn_custom_estimator": scenario("keras_bn_custom_estimator", "unsupported", None, None),
            "layers_bn_session": scenario("layers_bn_session", "updated", 0.95095158, 100.000016)}),
    ]
    manifest = {"schema": "bnmatrix.run/1", "run_id": "r1", "status": "complete",
                "started": "2026-11-26T00:00:00+00:00", "finished": "2026-11-26T01:00:00+00:00",
                "backend": "venv", "host": {"hostname": "h"}, "bnmatrix_version": "t", "matrix": "matrix.yaml",
                "matrix_hash": "0" * 64}
    results = [CellResult.from_dict(c) for c in cells]
    for result in results:  # as a run is read back: each verdict judged from its numbers
        result.rejudge()
    return Run(tmp_path, Manifest.from_dict(manifest), results)


def table_cells(page: str) -> list[tuple[str, str]]:
    """(link, status) of every matrix cell, in page order."""
    found = re.findall(r'<td class="cell s-([a-z-]+)[^"]*"[^>]*>\s*<a href="([^"]+)"', page)
    return [(href, status) for status, href in found]


def view_of(run: Run, previous: Run | None = None) -> View:
    """What the pages of one run show (as render() renders it)."""
    return build_view(Site.of_run(run), previous)


def test_rows_newest_first_and_every_cell_shows_its_status(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    view = view_of(run)
    assert [(row.label, {key: e.status for key, e in row.entries.items()}) for row in view.rows] == [
        ("2.15.1", {("cpu", "keras_bn_custom_estimator"): "unsupported", ("cpu", "layers_bn_session"): "updated"}),
        ("1.15.5", {("cpu", "keras_bn_custom_estimator"): "stale", ("cpu", "layers_bn_session"): "wrong",
                    ("gpu", "keras_bn_custom_estimator"): "not-run", ("gpu", "layers_bn_session"): "not-run"})]
    assert list(view.groups) == ["2.x", "1.x"] and view.devices == ["cpu", "gpu"]
    assert view.matrix_devices == ["cpu"] and view.folded == {"gpu": (1, ["no GPU on this host"])}
    page = render(run)["index.html"]
    assert table_cells(page) == [  # the GPU column: its one cell did not run, so it is folded into a line
        ("cells/tf-2.15.1-cpu.html#keras_bn_custom_estimator", "unsupported"),
        ("cells/tf-2.15.1-cpu.html#layers_bn_session", "updated"),
        ("cells/tf-1.15.5-cpu.html#keras_bn_custom_estimator", "stale"),
        ("cells/tf-1.15.5-cpu.html#layers_bn_session", "wrong"),
    ]
    assert ("<strong>GPU</strong>: the\n  1 cell not run on this host, so no columns are shown (no GPU on this "
            "host).") in page
    assert '<tbody id="group-2.x"' in page and '<tbody id="group-1.x"' in page


def test_a_device_column_that_ran_somewhere_is_not_folded(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    gpu = CellResult.from_dict(cell("tf-2.15.1-gpu", "2.15.1", "gpu", "ran", {
        "keras_bn_custom_estimator": scenario("keras_bn_custom_estimator", "unsupported", None, None),
        "layers_bn_session": scenario("layers_bn_session", "updated", 0.95095158, 100.000016)}))
    both = Run(run.directory, run.manifest, [*run.cells, gpu])
    view = view_of(both)
    assert view.matrix_devices == ["cpu", "gpu"] and view.folded == {}
    assert view.entry("tf-1.15.5-gpu", "layers_bn_session").status == "not-run"
    page = render(both)["index.html"]
    assert ("cells/tf-1.15.5-gpu.html#layers_bn_session", "not-run") in table_cells(page)
    assert page.count("not in this run") == 0 and "no columns are shown" not in page


def test_hover_text_summaries_and_transitions_carry_the_numbers(tmp_path: Path) -> None:
    view = view_of(sample_run(tmp_path))
    older, newer = view.entry("tf-1.15.5-cpu", "layers_bn_session"), view.entry("tf-2.15.1-cpu", "layers_bn_session")
    assert older.summary == ("moving mean 1.29903 (expected 0.950951), moving variance 1.15849 (expected 1.15849); "
                             "effective updates 200 (mean), 100 (variance) / 100 steps [result of run r1, 2026-11-26]")
    # the mean updated twice per step, the variance once: both counts are facets of the verdict
    assert older.note == "2.00×, variance 1.00×" and older.boundary and not newer.boundary  # the line: above the older
    assert newer.change == {"text": "layers_bn_session (cpu): wrong (2.00×, variance 1.00×) → updated between 1.15.5 "
                                    "and 2.15.1",
                            "command": "bnmatrix bisect --scenario layers_bn_session --good 1.15.5 --bad 2.15.1 "
                                       "--device cpu"}
    assert older.unexpected and older.expected == "updated" and view.unexpected == [older]
    # no bisect pinned where it became unsupported: somewhere after 1.15.5, by 2.15.1
    assert view.summaries[("cpu", "keras_bn_custom_estimator")] == "stale 1.15.5 · unsupported after 1.15.5, by 2.15.1"
    assert view.summaries[("gpu", "layers_bn_session")] == "not run on this host"
    page = html.unescape(render(sample_run(tmp_path))["index.html"])  # and the page shows it all
    assert ("moving mean 1.29903 (expected 0.950951), moving variance 1.15849 (expected 1.15849); "
            "effective updates 200 (mean), 100 (variance) / 100 steps") in page
    assert 'role="tooltip" id="tip-tf-1.15.5-cpu-layers_bn_session"' in page
    # the change, in the tooltip of the cell under which the boundary line is drawn, with the command that pins it
    assert re.search(r'<td class="cell s-updated changes-here"[^>]*>\s*<a href="cells/tf-2.15.1-cpu.html#layers_bn_'
                     r'session"', page)
    assert re.search(r'<td class="cell s-wrong boundary"[^>]*>\s*<a href="cells/tf-1.15.5-cpu.html#layers_bn_'
                     r'session"', page)  # the line is drawn above the older version's cell
    assert ("layers_bn_session (cpu): wrong (2.00×, variance 1.00×) → updated between 1.15.5 and 2.15.1; pin it: "
            "<code>bnmatrix bisect --scenario layers_bn_session --good 1.15.5 --bad 2.15.1 --device cpu</code>") in page
    assert "(cpu): stale 1.15.5 · unsupported after 1.15.5, by 2.15.1" in page  # the answer as version ranges
    assert "expected updated" in page  # the unexpected verdict is marked where it stands


def test_status_is_said_in_words_not_colour_alone(tmp_path: Path) -> None:
    page = render(sample_run(tmp_path))["index.html"]
    for word in ("updated", "stale", "wrong", "unsupported"):
        assert re.search(rf'<span aria-hidden="true">[^<]+</span> {word}\s*(<span|</a>)', page), word


def test_changes_since_the_previous_run_are_marked(tmp_path: Path) -> None:
    previous = sample_run(tmp_path)
    previous.cells[0].scenarios["keras_bn_custom_estimator"].status = Status.UPDATED
    previous.manifest.run_id = "r0"
    view = view_of(sample_run(tmp_path), previous)
    assert view.changed == 1 and view.previous_run == "r0"
    assert view.entry("tf-1.15.5-cpu", "keras_bn_custom_estimator").previous.status == "updated"
    assert view.entry("tf-1.15.5-cpu", "layers_bn_session").previous is None  # the same verdict as before
    site = render(sample_run(tmp_path), previous)
    page = re.sub(r"\s+", " ", site["index.html"])
    assert 'data-changed="1"' in page and "was updated" in page
    assert "Compared with the previous run <code>r0</code>: <strong>1</strong> result changed." in page
    exported = json.loads(site["results.json"])
    tf115 = next(c for c in exported["cells"] if c["id"] == "tf-1.15.5-cpu")
    assert tf115["scenarios"]["keras_bn_custom_estimator"]["previous_status"] == "updated"


def test_results_cannot_inject_markup(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    session = run.cells[0].scenarios["layers_bn_session"]
    session.reason = session.log_tail = EVIL
    session.error = {"message": EVIL, "traceback": EVIL}
    run.cells[1].reason = EVIL
    assert run.cells[0].environment is not None
    run.cells[0].environment["packages"] = [EVIL]
    for name, text in render(run).items():
        if name.endswith((".html", ".svg", ".xml")):
            assert "<script>" not in text and "<img" not in text, name
    junit = ET.fromstring(render(run)["junit.xml"])
    assert EVIL in "".join(junit.itertext()) or any(EVIL in (e.get("message") or "") for e in junit.iter())


def test_every_page_is_valid_html5_with_relative_links(tmp_path: Path) -> None:
    site = render(sample_run(tmp_path))
    pages = {name: text for name, text in site.items() if name.endswith(".html")}
    assert set(pages) == {"index.html", "cells/tf-1.15.5-cpu.html", "cells/tf-1.15.5-gpu.html",
                          "cells/tf-2.15.1-cpu.html", "scenarios/keras_bn_custom_estimator.html",
                          "scenarios/layers_bn_session.html", "changes.html", "versions/1.15.5.html",
                          "versions/2.15.1.html"}
    parser = html5lib.HTMLParser(strict=True)
    for name, text in pages.items():
        parser.parse(text)  # raises on any parse error
        for url in re.findall(r'(?:src|href)="([^"]+)"', text):
            if url.startswith("https://github.com/tensorflow/tensorflow/issues/"):
                continue  # links to upstream issues on scenario pages: followed by a person, never loaded
            assert not re.match(r"^([a-z]+:|/)", url), (name, url)  # works under a sub-path and from file://
            target = url.split("#")[0]
            if target and not target.startswith("logs/"):
                resolved = os.path.normpath((Path(name).parent / target).as_posix())
                assert resolved in site or resolved in ("style.css", "matrix.js", "back.js"), (name, url)


def test_cell_page_has_numbers_chart_environment_and_reproduce_command(tmp_path: Path) -> None:
    page = html.unescape(render(sample_run(tmp_path))["cells/tf-1.15.5-cpu.html"])
    assert '<section class="scenario" id="layers_bn_session"' in page
    assert "<td>1.2990305</td>" in page and "<td>0.95095149</td>" in page
    assert page.count('<svg class="chart"') == 2 and '<polyline class="expected"' in page
    # a run that kept no code (bnmatrix 0.1): from a checkout, with the packages the cell had
    assert "# from a bnmatrix checkout (this run kept no copy of its scenario code)" in page
    assert "python3.7 -m venv \"$venv\"\n" in page
    assert ('"$venv"/bin/python -m pip install --disable-pip-version-check --index-url https://pypi.org/simple '
            '--no-deps tensorflow==1.15.5\n') in page
    assert ('(scratch=$(mktemp -d) && trap \'rm -rf "$scratch"\' EXIT && cd "$scratch" && CUDA_VISIBLE_DEVICES= '
            'PYTHONPATH="$run"/scenarios "$venv"/bin/python "$run"/scenarios/layers_bn_session.py --steps 100 '
            '--device cpu --tf-version 1.15.5)') in page
    assert "python version" in page and "tensorflow==1.15.5" in page


def kept_code(run: Run, user_folder: str = "1" * 16) -> CellResult:
    """The first cell as a run that kept its code records it: the built-in folder, and a user's for one scenario."""
    cell = run.cells[0]
    cell.code = {"helper": "0" * 16, "scenarios": {"keras_bn_custom_estimator": "0" * 16,
                                                   "layers_bn_session": user_folder}}
    cell.environment = {"kind": "venv", "python": "/usr/bin/python3.7", "python_version": "3.7.17",
                        "packages": ["numpy==1.18.5", "tensorflow==1.15.5"]}
    return cell


def test_a_venv_cell_reproduces_from_the_runs_own_code_with_its_exact_packages(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    cell = kept_code(run)
    site = Site.of_run(run)
    command = site.reproduce(cell, "layers_bn_session")
    folder = f"{tmp_path.parent.name}/{tmp_path.name}"  # as a shell beside the results root sees the run's folder
    assert command.splitlines()[0] == f"# from {folder}, the folder of run r1, which keeps the code it ran in code/"
    assert "--index-url https://pypi.org/simple --no-deps numpy==1.18.5 tensorflow==1.15.5\n" in command
    assert ('PYTHONPATH="$run"/code/0000000000000000 "$venv"/bin/python "$run"/code/1111111111111111/'
            'layers_bn_session.py --steps 100 --device cpu --tf-version 1.15.5)') in command
    # what a run set before it recorded its variables
    assert 'cd "$scratch" && CUDA_VISIBLE_DEVICES= PYTHONPATH=' in command
    # a user's scenario reruns with its own folder, the run's copy of it
    assert command.splitlines()[-1] == (f"# or: bnmatrix run --backend venv --results {tmp_path.parent.name} "
                                        "--select tf-1.15.5-cpu --scenario layers_bn_session "
                                        f"--scenarios {folder}/code/1111111111111111")
    assert site.reproduce(cell, "keras_bn_custom_estimator").splitlines()[-1] == (
        f"# or: bnmatrix run --backend venv --results {tmp_path.parent.name} --select tf-1.15.5-cpu --scenario "
        "keras_bn_custom_estimator")
    exported = json.loads(render(run)["results.json"])
    tf115 = next(c for c in exported["cells"] if c["id"] == "tf-1.15.5-cpu")
    assert tf115["scenarios"]["layers_bn_session"]["reproduce"] == command  # the page's text, in results.json
    page = html.unescape(render(run)["cells/tf-1.15.5-cpu.html"])
    assert command in page
    # a run that recorded its variables reproduces with exactly those (NumPy's BLAS on one thread, since the zygote)
    cell.environment["variables"] = {"OPENBLAS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "BAD NAME": "x"}
    assert 'cd "$scratch" && CUDA_VISIBLE_DEVICES= OPENBLAS_NUM_THREADS=1 PYTHONPATH=' in site.reproduce(
        cell, "layers_bn_session")


def test_docker_cells_reproduce_with_the_options_their_container_ran_with(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    cell = kept_code(run)
    flags = run_flags(run_options(cell.cell, ContainerSettings(network="bridge", user="1000:1000",
                                                                                memory="3g", cpus=1.5), "r1", "v", 60))
    cell.environment = {"kind": "docker", "image": "python:3.7-slim", "cell_image": "bnmatrix-cell:1.15.5-x",
                        "image_id": "sha256:1", "python": "/usr/bin/python3", "python_version": "3.7.16",
                        "packages": [], "run_flags": flags}
    command = Site.of_run(run).reproduce(cell, "layers_bn_session")
    assert command.splitlines()[1] == (
        'docker run --rm -v "$PWD"/code:/scenarios:ro --init --network bridge -w /tmp --read-only '
        "--tmpfs /tmp:rw,exec,size=2g,mode=1777 --user 1000:1000 --memory 3g --memory-swap 3g --cpus 1.5 "
        "--pids-limit 1024 --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --cap-drop ALL "
        "--security-opt no-new-privileges -e CUDA_VISIBLE_DEVICES= -e HOME=/tmp -e OPENBLAS_NUM_THREADS=1 "
        "-e PYTHONDONTWRITEBYTECODE=1 "
        "-e TMPDIR=/tmp -e PYTHONPATH=/scenarios/0000000000000000 bnmatrix-cell:1.15.5-x python3 "
        "/scenarios/1111111111111111/layers_bn_session.py --steps 100 --device cpu --tf-version 1.15.5")
    assert command.splitlines()[-1].startswith("# or: bnmatrix run --backend docker --results ")
    # a run that recorded neither its options nor its code: the defaults of matrix.yaml, from a checkout
    cell.code = None
    del cell.environment["run_flags"]
    command = Site.of_run(run).reproduce(cell, "layers_bn_session")
    assert '-v "$PWD"/scenarios:/scenarios/0:ro --init --network none' in command
    assert "--user 65534:65534 --memory 6g" in command
    assert "-e PYTHONPATH=/scenarios/0 bnmatrix-cell:1.15.5-x python3 /scenarios/0/layers_bn_session.py" in command


def test_scenario_page_has_the_highlighted_code_the_why_and_the_fix(tmp_path: Path) -> None:
    page = render(sample_run(tmp_path))["scenarios/keras_bn_custom_estimator.html"]
    assert '<div class="highlight">' in page and '<span class="k">def</span>' in page  # Pygments
    assert "https://github.com/tensorflow/tensorflow/issues/16102" in page
    assert "The fix" in page and "get_updates_for" in page
    assert table_cells(page.replace('href="../', 'href="')) == [
        ("cells/tf-2.15.1-cpu.html#keras_bn_custom_estimator", "unsupported"),
        ("cells/tf-1.15.5-cpu.html#keras_bn_custom_estimator", "stale"),
        ("cells/tf-1.15.5-gpu.html#keras_bn_custom_estimator", "not-run"),
    ]


def test_results_json_follows_its_published_schema(tmp_path: Path) -> None:
    exported = json.loads(render(sample_run(tmp_path))["results.json"])
    schema = json.loads(data_path("report/results.schema.json").read_text())
    jsonschema.validate(exported, schema)
    assert exported["schema"] == "bnmatrix.results/1"
    tf115 = next(c for c in exported["cells"] if c["id"] == "tf-1.15.5-cpu")
    assert tf115["scenarios"]["layers_bn_session"]["effective_updates"] == pytest.approx(200, abs=1e-4)
    assert tf115["scenarios"]["keras_bn_custom_estimator"]["expected_status"] == "stale"


def test_junit_fails_on_regressions_not_on_known_verdicts(tmp_path: Path) -> None:
    view = view_of(sample_run(tmp_path))
    assert [(s.device, s.tests, s.failure, s.error, s.skipped) for s in view.junit_suites] == [
        ("cpu", 4, 1, 0, 1), ("gpu", 2, 0, 0, 2)]
    assert view.ran == 4 and view.meets_expectations is False
    suites = ET.fromstring(render(sample_run(tmp_path))["junit.xml"])
    cases = {(c.get("classname"), c.get("name")): c for c in suites.iter("testcase")}
    assert len(cases) == 6
    outcome = {key: [child.tag for child in case] for key, case in cases.items()}
    assert outcome[("bnmatrix.tf-1.15.5-cpu", "keras_bn_custom_estimator")] == []  # stale, as expected
    assert outcome[("bnmatrix.tf-1.15.5-cpu", "layers_bn_session")] == ["failure"]  # expected updated
    failure = cases[("bnmatrix.tf-1.15.5-cpu", "layers_bn_session")][0]
    assert failure.get("message").startswith("expected updated, got wrong")
    assert outcome[("bnmatrix.tf-2.15.1-cpu", "layers_bn_session")] == []
    assert outcome[("bnmatrix.tf-2.15.1-cpu", "keras_bn_custom_estimator")] == ["skipped"]
    assert outcome[("bnmatrix.tf-1.15.5-gpu", "layers_bn_session")] == ["skipped"]


def test_badge_and_markdown_summary(tmp_path: Path) -> None:
    view = view_of(sample_run(tmp_path))
    assert {k: v for k, v in view.counts.items() if v} == {"updated": 1, "stale": 1, "wrong": 1, "unsupported": 1,
                                                          "not-run": 2}
    site = render(sample_run(tmp_path))
    badge = ET.fromstring(site["badge.svg"])
    assert badge.get("aria-label") == "BN stats: updated 1 of 4 run, 1 unexpected"  # the 2 GPU entries did not run
    assert badge.find("{http://www.w3.org/2000/svg}rect[2]").get("fill") == "#b4261a"  # an expectation failed
    summary = site["summary.md"]
    assert "| TensorFlow | Python | keras_bn_custom_estimator (cpu) |" in summary
    assert "| 1.15.5 | 3.7 | ✘ stale (0/100) | ≠ wrong (200/100) |" in summary
    assert "- tf-1.15.5-cpu layers\\_bn\\_session: expected updated, got wrong" in summary


def test_write_report_replaces_an_old_site_but_not_other_files(tmp_path: Path) -> None:
    run = sample_run(tmp_path / "run")
    write_json(run.directory / "manifest.json", run.manifest.to_dict())
    for c in run.cells:
        write_json(run.directory / "cells" / f"{c.id}.json", c.to_dict())
    log = run.directory / "logs" / "tf-1.15.5-cpu" / "layers_bn_session.log"
    log.parent.mkdir(parents=True)
    log.write_text("the whole log")
    index = write_report(run.directory, tmp_path / "site")
    assert (tmp_path / "site" / "cells" / "logs" / "tf-1.15.5-cpu" / "layers_bn_session.log").read_text() == \
        "the whole log"
    assert write_report(run.directory, tmp_path / "site") == index  # an earlier report is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(BnMatrixError, match=r"holds files and no .bnmatrix-site.json, so bnmatrix did not write it"):
        write_report(run.directory, mine)
    assert (mine / "notes.txt").read_text() == "keep"


def written_run(tmp_path: Path) -> Run:
    run = sample_run(tmp_path / "run")
    write_json(run.directory / "manifest.json", run.manifest.to_dict())
    for c in run.cells:
        write_json(run.directory / "cells" / f"{c.id}.json", c.to_dict())
    return run


def test_a_folder_bnmatrix_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    run = written_run(tmp_path)
    copied = tmp_path / "copied"  # someone's folder that happens to hold a results.json
    copied.mkdir()
    (copied / "results.json").write_text((tmp_path / "run" / "manifest.json").read_text())
    (copied / "analysis.py").write_text("print('mine')")
    with pytest.raises(BnMatrixError, match="nothing was changed"):
        write_report(run.directory, copied)
    assert sorted(p.name for p in copied.iterdir()) == ["analysis.py", "results.json"]


def test_files_a_user_added_to_a_site_are_kept(tmp_path: Path) -> None:
    run = written_run(tmp_path)
    site = tmp_path / "site"
    write_report(run.directory, site)
    (site / "CNAME").write_text("bn.example.org\n")
    (site / "notes").mkdir()
    (site / "notes" / "why.md").write_text("ours")
    write_report(run.directory, site)
    assert (site / "CNAME").read_text() == "bn.example.org\n" and (site / "notes" / "why.md").read_text() == "ours"
    assert (site / "index.html").is_file() and not list(tmp_path.glob(".site.*"))


@pytest.mark.parametrize("kind", ["file", "symlink", "unwritable"])
def test_a_bad_out_is_one_clear_error_and_leaves_nothing(tmp_path: Path, kind: str) -> None:
    run = written_run(tmp_path)
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
        expected = "is a file; expected a folder for the site"
    elif kind == "symlink":
        (tmp_path / "real").mkdir()
        out.symlink_to(tmp_path / "real")
        expected = "is a symbolic link; expected a folder for the site"
    else:
        if os.geteuid() == 0:
            out = Path("/proc/bnmatrix-site")  # even root cannot create folders there
        else:
            (tmp_path / "locked").mkdir(mode=0o500)
            out = tmp_path / "locked" / "site"
        expected = "cannot write there"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BnMatrixError, match=expected):
        write_report(run.directory, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no staging folder left


def test_names_that_leave_the_site_folder_are_refused_at_load(tmp_path: Path) -> None:
    run = written_run(tmp_path)
    path = run.directory / "cells" / "tf-1.15.5-cpu.json"
    data = json.loads(path.read_text())
    data["cell"]["scenarios"].append("../../x")
    data["scenarios"]["../../x"] = data["scenarios"]["layers_bn_session"]
    path.write_text(json.dumps(data))
    with pytest.raises(BnMatrixError, match=r"tf-1.15.5-cpu.json: .*'../../x' does not match"):
        write_report(run.directory, tmp_path / "site")
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "site").exists()


def test_the_site_and_results_follow_the_umask(tmp_path: Path) -> None:
    run = written_run(tmp_path)
    write_report(run.directory, tmp_path / "site")
    assert (tmp_path / "site").stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert (run.directory / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_junit_counts_and_survives_control_characters(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    ansi = "\x1b[31mTraceback\x1b[0m\x07 (most recent call last)\x00"
    session = run.cells[2].scenarios["layers_bn_session"]  # tf-2.15.1-cpu: no expectation
    session.reason = ansi
    session.status = Status.ERROR
    session.error = {"type": "X", "message": ansi, "traceback": ansi}
    suites = ET.fromstring(render(run)["junit.xml"])  # a strict parser: any control character fails
    by_name = {s.get("name"): s for s in suites.iter("testsuite")}
    cpu, gpu = by_name["bnmatrix.cpu"], by_name["bnmatrix.gpu"]
    assert (cpu.get("tests"), cpu.get("failures"), cpu.get("errors"), cpu.get("skipped")) == ("4", "1", "1", "1")
    assert (gpu.get("tests"), gpu.get("failures"), gpu.get("errors"), gpu.get("skipped")) == ("2", "0", "0", "2")
    assert suites.get("tests") == "6" and suites.get("failures") == "1"
    assert "[31mTraceback[0m (most recent call last)" in "".join(suites.itertext())


def test_summary_escapes_what_comes_from_the_data(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    run.manifest.run_id = "r1 | <img src=x> [link](http://evil)"
    run.cells[0].scenarios["layers_bn_session"].reason = "a | b <script>"
    summary = render(run)["summary.md"]
    assert "<img" not in summary and "<script" not in summary and "](http" not in summary
    assert "r1 \\| &lt;img src=x&gt; \\[link\\]\\(http://evil\\)" in summary


def test_results_json_never_holds_nan(tmp_path: Path) -> None:
    run = sample_run(tmp_path)
    run.cells[0].scenarios["layers_bn_session"].train_loss = float("nan")  # as in a run from older bnmatrix
    exported = render(run)["results.json"]
    assert "NaN" not in exported and json.loads(exported)


def test_report_applies_the_matrix_files_current_expectations(tmp_path: Path) -> None:
    from bnmatrix.config import Matrix

    run = written_run(tmp_path)
    matrix = Matrix.from_file(data_path("matrix.yaml"))
    site = write_report(run.directory, tmp_path / "site", matrix=matrix).parent
    exported = json.loads((site / "results.json").read_text())
    tf115 = next(c for c in exported["cells"] if c["id"] == "tf-1.15.5-cpu")
    assert tf115["scenarios"]["layers_bn_session"]["expected_status"] == "wrong"  # today's rule, not the recorded
    assert f"expectations from {matrix.path}" in (site / "index.html").read_text()
    assert f"(sha256 {matrix.digest[:12]})" in (site / "summary.md").read_text()


@pytest.mark.parametrize("kind", ["venv", "docker"])
def test_reproduce_commands_quote_every_word_from_the_data(tmp_path: Path, kind: str) -> None:
    run = sample_run(tmp_path)
    cell = run.cells[0]
    hostile = "$(touch /tmp/pwned)`id`;x"
    cell.cell = replace(cell.cell, tf="1.15.5;id", python="3.7 && id",
                        requirements=("numpy<2; python_version>'3'", hostile),
                        env={"TF_USE_LEGACY_KERAS": hostile, "BAD NAME": "x"})
    cell.environment = {"kind": "venv", "packages": ["numpy<2; python_version>'3'", hostile]}
    if kind == "docker":
        cell.environment = {"kind": "docker", "cell_image": "img;id"}
    run = replace(run, directory=tmp_path / "results\nid #" / "r1")  # a results root whose name would end a comment
    command = Site.of_run(run).reproduce(cell, "layers_bn_session")
    assert "--results 'results?id #'" in command.splitlines()[-1]
    lines = [shlex.split(line) for line in command.splitlines() if not line.startswith("#")]
    words = [word for line in lines for word in line]
    assert "1.15.5;id" in words and hostile in words or f"TF_USE_LEGACY_KERAS={hostile}" in words
    assert not any(word in ("id", ";", "&&id") for word in words)  # no word of the data became a command
    assert "BAD NAME=x" not in command
    if kind == "venv":
        assert "python3.7 && id" in words and "numpy<2; python_version>'3'" in words
        assert f"TF_USE_LEGACY_KERAS={hostile}" in words
    else:
        assert "img;id" in words and f"TF_USE_LEGACY_KERAS={hostile}" in words


def test_an_error_without_a_traceback_renders_everywhere(tmp_path: Path) -> None:
    """The scenario contract makes the traceback optional: a user's scenario may leave it out."""
    run = sample_run(tmp_path)
    session = run.cells[2].scenarios["layers_bn_session"]  # no expectation: JUnit shows it as an error
    session.refuse("RuntimeError: no luck")
    session.observed = None  # an error has no numbers
    session.error = {"type": "RuntimeError", "message": "no luck"}
    site = render(run)
    (case,) = [c for c in ET.fromstring(site["junit.xml"]).iter("testcase")
               if c.get("classname") == "bnmatrix.tf-2.15.1-cpu" and c.get("name") == "layers_bn_session"]
    assert case[0].tag == "error" and "no luck" in case[0].get("message")
    assert "no luck" in site["cells/tf-2.15.1-cpu.html"]


def test_a_cell_that_did_not_run_has_no_result_to_differ_from_its_expectation() -> None:
    files = render(load_run(Path(__file__).resolve().parents[1] / "data" / "run"))  # GPU cells: not run here
    assert "differ from the expectations" not in files["index.html"]
    suites = {s.get("name"): s for s in ET.fromstring(files["junit.xml"])}
    gpu = suites["bnmatrix.gpu"]
    # 37 GPU cells with every scenario, 6 jax and 2 latest ones with the Keras 3 scenarios
    assert gpu.get("failures") == "0" and gpu.get("skipped") == gpu.get("tests") == str(37 * 36 + 8 * 14)


# Machado, Oliveira and Fernandes (2009), severity 1.0: linear-RGB matrices simulating each deficiency.
CVD = {"protanopia": ((0.152286, 1.052583, -0.204868), (0.114503, 0.786281, 0.099216),
                      (-0.003882, -0.048116, 1.051998)),
       "deuteranopia": ((0.367322, 0.860646, -0.227968), (0.280085, 0.672501, 0.047413),
                        (-0.011820, 0.042940, 0.968881)),
       "tritanopia": ((1.255528, -0.076749, -0.178779), (-0.078411, 0.930809, 0.147602),
                      (0.004733, 0.691367, 0.303900)),
       "normal": ((1, 0, 0), (0, 1, 0), (0, 0, 1))}


def _linear(colour: str) -> list[float]:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    return [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]


def _lab(rgb: list[float]) -> tuple[float, float, float]:
    r, g, b = rgb
    x, y, z = 0.4124 * r + 0.3576 * g + 0.1805 * b, 0.2126 * r + 0.7152 * g + 0.0722 * b, \
        0.0193 * r + 0.1192 * g + 0.9505 * b

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116
    fx, fy, fz = f(x / 0.95047), f(y), f(z / 1.08883)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def _seen(colour: str, vision: str) -> tuple[float, float, float]:
    rgb = _linear(colour)
    return _lab([min(1.0, max(0.0, sum(m * c for m, c in zip(row, rgb, strict=True)))) for row in CVD[vision]])


def _contrast(a: str, b: str) -> float:
    la, lb = (sum(w * c for w, c in zip((0.2126, 0.7152, 0.0722), _linear(x), strict=True)) for x in (a, b))
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_status_colours_stay_apart_under_colour_vision_deficiencies(scheme: str) -> None:
    css = (data_path("report") / "style.css").read_text()
    light, dark = css.split("@media (prefers-color-scheme: dark)")[:2]
    block = light if scheme == "light" else dark.split("}")[0]
    colours = dict(re.findall(r"--([a-z-]+): (#[0-9a-fA-F]{6})", block))
    verdicts = ["updated", "stale", "wrong", "unsupported", "error"]
    for vision in CVD:
        for index, a in enumerate(verdicts):
            for b in verdicts[index + 1:]:
                distance = math.dist(_seen(colours[a], vision), _seen(colours[b], vision))
                assert distance >= 15, (scheme, vision, a, b, round(distance, 1))  # CIE76: clearly different
        for rare in ("build-error", "not-run"):
            for other in verdicts:
                distance = math.dist(_seen(colours[rare], vision), _seen(colours[other], vision))
                assert distance >= 5, (scheme, vision, rare, other)
    for status in [*verdicts, "build-error", "not-run"]:
        assert _contrast(colours[status], colours["fg"]) >= 7, (scheme, status)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and (first two) list items of a JSON document, as paths."""
    found: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node[:2]) if isinstance(node, list) else []
    for key, value in items:
        found += [path + (key,), *_paths(value, path + (key,))]
    return found


REAL_DATA = Path(__file__).resolve().parents[1] / "data"
DOCUMENTS = {"cell": REAL_DATA / "run" / "cells" / "tf-1.15.5-cpu.json",
             "manifest": REAL_DATA / "run" / "manifest.json", "bisect": REAL_DATA / "bisect" / "bisect.json"}
ODD_VALUES = [0, -1, 1e308, 10 ** 30, "", "a\nb", None, [], {}, "1.2.3.4.5", True, "<deleted>"]


def test_the_glance_of_the_committed_data_gives_each_verdicts_versions_and_the_bisect_that_pinned_them() -> None:
    view = build_view(Site.load(REAL_DATA))
    assert view.overview.lines == [("cpu", None), ("cpu", "jax"), ("cpu", "latest"), ("cpu", "tfkeras")]
    assert view.overview.not_run == {("gpu", None): 31, ("gpu", "jax"): 6, ("gpu", "latest"): 2,
                                     ("gpu", "tfkeras"): 6}  # counted, not shown
    glance = view.overview.table["keras_bn_custom_estimator"]
    assert [(s.status, s.label, s.count, s.pinned) for s in glance[("cpu", None)].ranges] == [
        ("updated", "1.7.1–1.8.0", 2, None),
        ("stale", "1.9.0–2.15.1", 23, "changes.html#keras_bn_custom_estimator-cpu-1.8.0-1.9.0"),
        ("unsupported", "from 2.16.1", 6, "changes.html#keras_bn_custom_estimator-cpu-2.15.1-2.16.2")]
    marks = glance[("cpu", None)].marks  # one per version, oldest first: 31 rows, but 2.16.1 is bisect evidence
    assert len(marks) == 31 and (marks[0].tf, marks[-1].tf) == ("1.7.1", "2.21.0")
    assert sum(s.count for s in glance[("cpu", None)].ranges) == len(marks)
    assert glance_text(glance[("cpu", "tfkeras")]) == "∅ unsupported 2.16.2–2.21.0"


def test_a_range_start_no_bisect_pinned_is_the_span_it_really_is_and_results_json_says_so() -> None:
    """keras_bn_model_to_estimator updates again somewhere after 1.11.0 (which errs) and by 1.12.3: no bisect looked, so
    the range says exactly that, apart from the pinned ones; results.json holds the same ranges, valid by its schema;
    without the bisect file every start but the oldest is such a span."""
    site = Site.load(REAL_DATA)
    ranges = build_view(site).overview.table["keras_bn_model_to_estimator"][("cpu", None)].ranges
    assert [(s.status, s.label, s.pinned is not None, s.after) for s in ranges] == [
        ("stale", "1.7.1–1.9.0", False, None), ("updated", "1.10.0–1.10.1", True, None),
        ("error", "after 1.10.1, by 1.11.0", False, "1.10.1"),
        ("updated", "after 1.11.0, by 1.12.3, through 2.15.1", False, "1.11.0"),
        ("unsupported", "from 2.16.1", True, None)]
    exported = json.loads(render_site(site)["results.json"])
    jsonschema.validate(exported, json.loads((data_path("report") / "results.schema.json").read_text()))
    line = next(r for r in exported["ranges"] if (r["scenario"], r["device"], r["variant"]) ==
                ("keras_bn_model_to_estimator", "cpu", None))
    assert [r["start"] for r in line["ranges"]] == [
        None,
        {"pinned": True, "release": "1.10.0", "search": "changes.html#keras_bn_model_to_estimator-cpu-1.9.0-1.10.1"},
        {"pinned": False, "after": "1.10.1", "by": "1.11.0", "search": None},
        {"pinned": False, "after": "1.11.0", "by": "1.12.3", "search": None},
        {"pinned": True, "release": "2.16.1", "search": "changes.html#keras_bn_model_to_estimator-cpu-2.15.1-2.16.2"}]
    assert [r["text"] for r in line["ranges"]] == [s.words for s in ranges]
    assert sum(len(r["ranges"]) for r in exported["ranges"]) == sum(
        len(g.ranges) for lines in build_view(site).overview.table.values() for g in lines.values())
    unpinned = build_view(replace(site, searches=[])).overview.table
    for lines in unpinned.values():
        for glance in lines.values():
            assert all(s.after == before.last and s.label.startswith(f"after {before.last}, by {s.first}")
                       for before, s in zip(glance.ranges, glance.ranges[1:], strict=False)), glance.ranges
            assert glance.ranges[0].after is None and not any(s.pinned for s in glance.ranges)


def test_a_bisect_that_narrowed_a_change_to_two_releases_bounds_the_range_start_by_them() -> None:
    """A search that ends in a range (no release between the two gave a verdict) narrows the start without pinning
    it: "after <its last good>, by <its first bad>", linked to the search."""
    site = Site.load(REAL_DATA)
    search = next(s for s in site.searches if s.scenario == "keras_fit_4d_variance" and s.variant is None)
    change = search.changes[-1]
    ranged = replace(search, outcome=Outcome.RANGE, changes=[replace(change, before="2.15.1", after="2.16.1",
                                                                     exact=False)])
    table = build_view(replace(site, searches=[ranged if s is search else s for s in site.searches])).overview.table
    newest = table["keras_fit_4d_variance"][("cpu", None)].ranges[-1]
    assert (newest.after, newest.first, newest.pinned, newest.label) == ("2.15.1", "2.16.1", None,
                                                                        "after 2.15.1, by 2.16.1")
    assert newest.searched == f"changes.html#{search_anchor(search)}"
    assert newest.to_dict()["start"] == {"pinned": False, "after": "2.15.1", "by": "2.16.1",
                                         "search": newest.searched}


def test_a_scenario_page_shows_the_whole_pattern_with_the_lines_that_decide_it_marked() -> None:
    """keras_bn_custom_estimator's script is 18 lines; its page adds the helper functions it calls from the kept folder
    (the model_fn with its UPDATE_OPS dependency among them), lists and highlights the lines its notes' `decides`
    fragments name, and titles its issue links."""
    page = html.unescape(render_site(Site.load(REAL_DATA))["scenarios/keras_bn_custom_estimator.html"])
    assert "# --- bnmatrix_scenario.py: estimator_model_fn ---" in page
    assert "# --- bnmatrix_scenario.py: train_and_evaluate ---" in page
    listed = re.findall(r'<li><a href="#code-(\d+)">line \d+</a>: <code>(.*?)</code></li>', page)
    assert [line for _, line in listed] == ['def train(tf, cfg, scratch, layer="keras.layers.BatchNormalization", '
                                            'fix_updates=False):',
                                            "update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS)",
                                            "with tf.control_dependencies(update_ops):"]
    assert page.count('<span class="hll">') == 3
    assert ">tensorflow/tensorflow#19643: keras.layers.BatchNormalization update_ops not added</a>" in page


def test_a_kept_script_that_does_not_parse_is_shown_alone() -> None:
    """A run's scenario may be no Python this bnmatrix can read (another version's syntax, or garbage): its page shows
    the script as it is, with no helpers and nothing marked, and the report is still written."""
    modules = {"bnmatrix_scenario": "def main(name, train):\n    pass\n"}
    for script in ("def train(:\n", "x = " + "(" * 5000 + ")" * 5000 + "\n"):
        text, marked = pattern_code(ScenarioSource(script, {"decides": ["train"]}, modules))
        assert text == script and marked == ([(1, "def train(:")] if "train" in script else [])
    text, marked = pattern_code(ScenarioSource("import bnmatrix_scenario as c\n\n\ndef train(tf):\n    c.main(1, 2)\n",
                                               {"decides": ["c.main("]}, modules))
    assert "# --- bnmatrix_scenario.py: main ---" in text and marked == [(5, "c.main(1, 2)")]


def test_the_change_line_follows_a_facet_as_it_follows_the_status() -> None:
    """keras_fit_4d_variance stays updated from 2.15.1 to 2.16.2, but its variance correction changes: the matrix draws
    the line between the two rows and the newer cell says what changed, as for a change of status."""
    view = build_view(Site.load(REAL_DATA))
    older, newer = view.entry("tf-2.15.1-cpu", "keras_fit_4d_variance"), view.entry("tf-2.16.2-cpu",
                                                                                  "keras_fit_4d_variance")
    assert older.status == newer.status == "updated" and older.boundary and not newer.boundary
    assert newer.change is not None and "unbiased variance" in newer.change["text"]
    assert "biased variance) in 2.16.1" in newer.change["text"]
    unchanged = view.entry("tf-2.15.1-cpu", "keras_fit")
    assert not unchanged.boundary


def test_every_range_of_a_scenario_whose_variance_varies_says_which_variance_it_follows() -> None:
    """The facets are part of the range text: keras_fit_4d_variance's ranges all name their variance correction,
    the Keras 3 ones (biased, the usual value) included; where it never varies (keras_fit) the usual goes unsaid."""
    table = build_view(Site.load(REAL_DATA)).overview.table
    texts = [s.words for glance in table["keras_fit_4d_variance"].values() for s in glance.ranges]
    assert texts == ["updated (unbiased variance) 1.7.1–2.15.1", "updated (biased variance) from 2.16.1",
                     "updated (biased variance) 2.16.2–2.21.0", "updated (biased variance) 2.16.2–2.21.0",
                     "updated (unbiased variance) 2.16.2–2.21.0"]  # on JAX, with today's Keras, and tf_keras
    assert [s.words for s in table["keras_fit"][("cpu", None)].ranges] == ["updated 1.7.1–2.21.0"]
    assert [s.words for s in table["keras_bn_trainable_false"][("cpu", None)].ranges] == [
        "stale (forward: batch) 1.7.1–1.15.5", "stale (forward: moving) from 2.0.0"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.sampled_from(sorted([*DOCUMENTS, "cell/2"])), data=st.data())
def test_no_stored_data_crashes_the_report(tmp_path: Path, document: str, data: Any) -> None:
    """Any one field of a stored cell (either format), manifest or bisect file set to an odd value (or deleted): the
    report is written, or refused with one BnMatrixError naming the file; never another exception."""
    docs = {name: json.loads(path.read_text()) for name, path in DOCUMENTS.items()}
    docs["manifest"].pop("checked", None)  # what this host checked vouches for nothing changed here
    docs["cell/2"] = CellResult.from_dict(copy.deepcopy(docs["cell"])).to_dict()  # as bnmatrix writes it now
    path = data.draw(st.sampled_from(_paths(docs[document])))
    value = data.draw(st.sampled_from(ODD_VALUES))
    node = docs[document]
    for key in path[:-1]:
        node = node[key]
    if value == "<deleted>":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    run = root / "run"
    write_json(run / "manifest.json", docs["manifest"])
    write_json(run / "bisect.json", docs["bisect"])
    write_json(run / "cells" / "tf-1.15.5-cpu.json", docs["cell/2" if document == "cell/2" else "cell"])
    try:
        render_site(Site.load(root))
    except BnMatrixError as exc:
        assert str(exc).startswith(str(root)), exc


def test_the_readmes_table_is_the_reports_glance_of_the_committed_data() -> None:
    """The README's findings table is not written by hand: it is the glance of summary.md for tests/data, word for
    word (regenerate it from `bnmatrix report --results tests/data` when the data changes)."""
    summary = render_site(Site.load(REAL_DATA))["summary.md"].splitlines()
    start = next(i for i, line in enumerate(summary) if line.startswith("| scenario |"))
    table = summary[start:start + next(i for i, line in enumerate(summary[start:]) if not line.startswith("|"))]
    assert len(table) == 2 + 36
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "\n".join(table) in readme


def test_a_release_candidate_stands_apart_from_the_ranges_and_says_what_the_next_release_changes(
        tmp_path: Path) -> None:
    """The committed run plus a release candidate of 2.22 made of its 2.21.0 cell, where keras_finetune_inference_call
    turns stale (the real numbers of that scenario's stale tfkeras result): no range reaches the candidate, no change
    point ends at it, and every page says what it is and what it changes."""
    run_dir = tmp_path / "run"
    shutil.copytree(REAL_DATA / "run", run_dir)
    add_candidate(run_dir)
    run = load_run(run_dir)
    assert not [p for p in change_points(run) if "2.22.0rc0" in (p[3].cell.tf, p[4].cell.tf)]
    view = build_view(Site.of_run(run))
    glance = view.overview.table["keras_finetune_inference_call"][("cpu", None)]
    assert glance.ranges[-1].last == "2.21.0" and glance.marks[-1].upcoming == "release candidate"
    (ahead,) = glance.ahead
    assert ahead.changes and ahead.words == ("changes in the next release: stale on 2.22.0rc0 (release candidate), "
                                             "updated on 2.21.0")
    (same,) = view.overview.table["keras_fit"][("cpu", None)].ahead
    assert same.same and same.words == "next: updated on 2.22.0rc0 (release candidate), as 2.21.0"
    assert [(name, line) for name, line, _ in view.next_changes] == [("keras_finetune_inference_call", ("cpu", None))]
    files = render(run)
    index = files["index.html"]
    assert index.count('<span class="upcoming">release candidate</span>') == 2  # the picker and the matrix row
    assert re.search(r'id="next-changes".*?stale on 2\.22\.0rc0 \(release candidate\), updated on 2\.21\.0', index,
                     re.S)
    assert "Not released yet." in files["versions/2.22.0rc0.html"]
    assert "**changes in the next release: stale on 2.22.0rc0 (release candidate), updated on 2.21.0**" in \
        files["summary.md"]
    exported = json.loads(files["results.json"])
    jsonschema.validate(exported, json.loads(data_path("report/results.schema.json").read_text()))
    assert all(r["last"] != "2.22.0rc0" for line in exported["ranges"] for r in line["ranges"])
    assert sum(u["changes"] for line in exported["ranges"] for u in line["upcoming"]) == 1

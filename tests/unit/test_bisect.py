"""Bisect's search (which release next, what the answer is), the package index it reads, the change points
of a run, and a results root with history rendered as a site: pure, no TensorFlow."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import html5lib
import jsonschema
import pytest

from bnmatrix.bisect import Search
from bnmatrix.cli import main
from bnmatrix.config import data_path
from bnmatrix.errors import BnMatrixError
from bnmatrix.history import History, change_points, diff, prune
from bnmatrix.index import list_releases
from bnmatrix.report import render_site
from bnmatrix.store.files import write_json
from bnmatrix.store.reader import load_run
from bnmatrix.store.searches import Conclusion, Outcome, Probe
from bnmatrix.verdict import Status
from bnmatrix.view import Site
from tests.conftest import copy_run_started

DATA = Path(__file__).resolve().parents[1] / "data"  # the real default-matrix run, and its real bisect
REAL_RUN = DATA / "run"
RELEASES = [f"1.{i}.0" for i in range(9)]


def search(exhaustive: bool = False) -> Search:
    return Search("s", "cpu", None, list(RELEASES), {}, exhaustive)


def drive(found: Search, verdicts: dict[str, str]) -> list[list[str]]:
    """Feed the search the verdict of each release it asks for; returns what it asked for, round by round."""
    rounds = []
    while wanted := found.wanted():
        rounds.append(wanted)
        for version in wanted:
            found.probes[version] = Probe(version, Status(verdicts[version]), "3.11", "r", f"tf-{version}-cpu")
    return rounds


def test_the_binary_search_asks_for_both_ends_then_one_release_a_round() -> None:
    verdicts = {v: "stale" if i < 6 else "updated" for i, v in enumerate(RELEASES)}
    found = search()
    rounds = drive(found, verdicts)
    assert rounds[0] == ["1.0.0", "1.8.0"]
    assert all(len(r) == 1 for r in rounds[1:]) and len(rounds) - 1 <= 3  # log2(7 inner releases)
    conclusion = found.conclusion()
    assert conclusion.outcome is Outcome.NARROWED and conclusion.first_change is not None
    assert (conclusion.first_change.after, conclusion.first_change.before) == ("1.6.0", "1.5.0")
    assert conclusion.answer.startswith("s (cpu) changed from stale to updated in 1.6.0 (last stale: 1.5.0); ")
    assert "(binary search: assumes each verdict holds over one stretch" in conclusion.answer
    stored = conclusion.to_dict()  # as bisect.json holds it: the first change named for its readers too
    assert (stored["changed_in"], stored["last_before"], stored["from_status"]) == ("1.6.0", "1.5.0", "stale")
    assert Conclusion.from_dict(json.loads(json.dumps(stored))) == conclusion


def test_each_change_is_pinned_when_the_verdict_changes_twice() -> None:
    verdicts = {v: "stale" if i < 3 else "wrong" if i < 5 else "updated" for i, v in enumerate(RELEASES)}
    found = search()
    drive(found, verdicts)
    changes = found.conclusion().changes
    assert [(c.after, c.was.status, c.becomes.status, c.exact) for c in changes] == [
        ("1.3.0", Status.STALE, Status.WRONG, True), ("1.5.0", Status.WRONG, Status.UPDATED, True)]


def test_a_release_without_a_verdict_is_skipped_and_a_range_remains() -> None:
    verdicts = {v: "stale" if i < 4 else "updated" for i, v in enumerate(RELEASES)} | {"1.4.0": "error",
                                                                                      "1.3.0": "build-error"}
    found = search()
    drive(found, verdicts)
    conclusion = found.conclusion()
    assert conclusion.outcome is Outcome.RANGE
    assert [(c.before, c.after, c.unjudged) for c in conclusion.changes] == [("1.2.0", "1.5.0", ["1.3.0", "1.4.0"])]


def test_exhaustive_runs_every_release_at_once_and_shows_a_verdict_that_comes_back() -> None:
    verdicts = {v: "stale" if i in (3, 4) else "updated" for i, v in enumerate(RELEASES)}
    binary = search()
    drive(binary, verdicts)
    assert binary.conclusion().outcome is Outcome.NOTHING_TO_BISECT  # same at both ends
    found = search(exhaustive=True)
    rounds = drive(found, verdicts)
    assert rounds == [["1.0.0", "1.8.0"], RELEASES[1:8]]
    conclusion = found.conclusion()
    assert conclusion.monotonic is False and conclusion.checked == 9
    assert [c.after for c in conclusion.changes] == ["1.3.0", "1.5.0"]
    assert "not monotonic: a verdict comes back" in conclusion.answer


def test_an_end_without_a_verdict_ends_the_search() -> None:
    found = search()
    drive(found, {RELEASES[0]: "error", RELEASES[-1]: "updated"})
    assert found.conclusion().outcome is Outcome.ENDPOINT_ERROR


def test_the_index_gives_releases_with_their_pythons_and_leaves_out_what_cannot_install(tmp_path: Path) -> None:
    project = tmp_path / "tensorflow"
    project.mkdir()
    files = ["tensorflow-1.10.0-cp36-cp36m-manylinux1_x86_64.whl", "tensorflow-1.10.0-cp27-cp27mu-linux_x86_64.whl",
             "tensorflow-1.10.1-cp36-cp36m-macosx_10_11_x86_64.whl", "tensorflow-1.11.0rc0-cp36-cp36m-"
             "manylinux1_x86_64.whl", "tensorflow-1.12.0-cp37-cp37m-manylinux2010_x86_64.whl",
             "tensorflow-1.12.0-cp37-cp37m-musllinux_1_1_x86_64.whl", "tensorflow-1.13.0-py3-none-any.whl"]
    links = "".join(f'<a href="{name}#sha256=00"{" data-yanked" if "1.13" in name else ""}>{name}</a>'
                    for name in files)
    (project / "index.html").write_text(f"<html><body>{links}</body></html>")
    releases, left_out = list_releases(tmp_path.as_uri(), "TensorFlow")
    assert [(r.version, r.pythons) for r in releases] == [("1.10.0", ("3.6",)), ("1.12.0", ("3.7",))]
    assert left_out == {"1.10.1": "no wheel for Linux x86_64", "1.13.0": "yanked from the index"}
    with_pre, _ = list_releases(tmp_path.as_uri(), "tensorflow", pre=True)
    assert "1.11.0rc0" in [r.version for r in with_pre]
    with pytest.raises(BnMatrixError, match="no project keras in this local index"):
        list_releases(tmp_path.as_uri(), "keras")


def test_change_points_of_the_real_run_pass_over_entries_without_a_verdict() -> None:
    points = {(name, older.cell.tf, newer.cell.tf) for name, device, _, older, newer
              in change_points(load_run(REAL_RUN))}
    assert ("keras_bn_model_to_estimator", "1.9.0", "1.10.1") in points
    assert ("keras_bn_custom_estimator", "1.8.0", "1.9.0") in points
    # 1.11.0 timed out (an error, no verdict) between two `updated`: no change point around it
    assert not any(name == "keras_bn_model_to_estimator" and "1.11.0" in (a, b) for name, a, b in points)
    # a facet's change is a change point too: the variance Keras 3 follows, the statistics a frozen layer uses
    assert ("keras_fit_4d_variance", "2.15.1", "2.16.2") in points
    assert ("keras_bn_trainable_false", "1.15.5", "2.0.4") in points
    assert ("keras_bn_mirrored_plain", "2.15.1", "2.16.2") in points  # which data: the replicas' mean -> the first's
    # the Keras of each release's day: nested training stale on 2.16 to 2.18, updated again from 2.19
    assert ("keras_subclass_nested_training", "2.18.1", "2.19.1") in points
    assert len(points) == 46


def history_root(tmp_path: Path) -> Path:
    """A results root: the real run, a later narrow run of one cell where a verdict changed, and a bisect."""
    root = tmp_path / "results"
    copy_run_started(REAL_RUN, root / "20261101T000000Z-aaaaaa", "2026-11-27T14:32:12+00:00")  # before `later`
    later = root / "20261120T000000Z-bbbbbb"
    (later / "cells").mkdir(parents=True)
    cell = json.loads((REAL_RUN / "cells" / "tf-1.9.0-cpu.json").read_text())
    cell["run_id"], cell["started"] = later.name, "2026-11-28T00:00:00+00:00"
    updated = json.loads((REAL_RUN / "cells" / "tf-1.8.0-cpu.json").read_text())["scenarios"][
        "keras_bn_custom_estimator"]
    cell["scenarios"]["keras_bn_custom_estimator"] = {**updated, "tf_version": "1.9.0",
                                                      "log": "logs/tf-1.9.0-cpu/keras_bn_custom_estimator.log"}
    write_json(later / "cells" / "tf-1.9.0-cpu.json", cell)
    manifest = json.loads((REAL_RUN / "manifest.json").read_text())
    write_json(later / "manifest.json", {**manifest, "run_id": later.name, "started": "2026-11-28T00:00:00+00:00",
                                         "cells": ["tf-1.9.0-cpu"], "previous_run": None})
    return root


def test_a_results_root_renders_each_cells_newest_result_with_its_history(tmp_path: Path) -> None:
    root = history_root(tmp_path)
    site = Site.load(root)
    files = render_site(site)
    assert len(site.run.cells) == 90 and site.origins["tf-1.9.0-cpu"].id == "20261120T000000Z-bbbbbb"
    parser = html5lib.HTMLParser(strict=True)
    for name in ("index.html", "runs.html", "changes.html", "cells/tf-1.9.0-cpu.html"):
        parser.parse(files[name])
    page = files["cells/tf-1.9.0-cpu.html"]
    assert 'id="history-title"' in page and 'title="run 20261120T000000Z-bbbbbb: updated"' in page
    assert 'title="run 20261130T061110Z-d708d2: stale"' in page  # the real run's own id, from its cells
    assert "Each cell shows its newest result" in files["index.html"]
    assert 'data-changed="1"' in files["index.html"]  # the one verdict that changed since the cell's last result
    # every result from the older run says so; the newest run's cell does not
    # CPU (GPU folded): 37 cells x 36 scenarios and 6 jax and 2 latest cells x 14, less the newer run's cell
    assert files["index.html"].count('<span class="age-note">from 2026-11-27</span>') == 37 * 36 + 8 * 14 - 36
    assert "[result of run 20261120T000000Z-bbbbbb, 2026-11-28]" in files["index.html"]
    data = json.loads(files["runs.html"].split('id="history-data">')[1].split("</script>")[0])
    assert [r["id"] for r in data["runs"]] == ["20261120T000000Z-bbbbbb", "20261130T061110Z-d708d2"]
    schema = json.loads((data_path("report") / "results.schema.json").read_text())
    exported = json.loads(files["results.json"])
    jsonschema.validate(exported, schema)
    assert exported["cumulative"] is True


def test_diff_and_retention_of_a_results_root(tmp_path: Path) -> None:
    root = history_root(tmp_path)
    history = History.load(root)
    older, newer = history.runs
    found = diff(older, newer)
    assert [(c.cell, c.scenario, c.before.text, c.after.text) for c in found.changes] == [
        ("tf-1.9.0-cpu", "keras_bn_custom_estimator", "stale", "updated (biased variance)")]
    assert found.compared == 36 and len(found.only_before) == 44  # CPU cells; the GPU cells did not run
    assert prune(root, keep=1) == []  # the older run holds the newest result of 73 cells
    shutil.copytree(root / "20261101T000000Z-aaaaaa", root / "20261125T000000Z-cccccc")
    manifest = json.loads((root / "20261125T000000Z-cccccc" / "manifest.json").read_text())
    write_json(root / "20261125T000000Z-cccccc" / "manifest.json", {**manifest, "started": "2026-11-29T00:00:00+00:00"})
    assert prune(root, keep=1) == ["20261101T000000Z-aaaaaa", "20261120T000000Z-bbbbbb"]  # the newest holds all
    assert prune(root, keep=1) == []


def test_diff_names_the_dependencies_a_cell_installed_differently_beside_its_changed_verdicts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same cell later, its TF the same but Keras newer (as a new cutoff, or TF 2.22.0rc0, brings a newer Keras):
    the diff, the matrix entry's numbers and the cell's history give the verdict that changed and the packages that
    did."""
    root = tmp_path / "results"
    copy_run_started(REAL_RUN, root / "a", "2026-11-27T14:32:12+00:00")
    later = root / "20261130T013000Z-bbbbbb"
    cell = json.loads((REAL_RUN / "cells" / "tf-2.21.0-cpu.json").read_text())
    cell["run_id"], cell["started"] = later.name, "2026-11-30T01:30:00+00:00"
    stale = json.loads((REAL_RUN / "cells" / "tf-2.21.0-cpu-tfkeras.json").read_text())["scenarios"][
        "keras_finetune_inference_call"]
    cell["scenarios"]["keras_finetune_inference_call"] = stale
    packages = cell["environment"]["packages"]
    assert "keras==3.13.2" in packages and any(p.startswith("namex==") for p in packages)  # of 2.21.0's day
    cell["environment"]["packages"] = [p.replace("keras==3.13.2", "keras==3.16.0") for p in packages
                                       if not p.startswith("namex==")] + ["keras-hub==0.21.0"]
    write_json(later / "cells" / "tf-2.21.0-cpu.json", cell)
    manifest = json.loads((REAL_RUN / "manifest.json").read_text())
    write_json(later / "manifest.json", {**manifest, "run_id": later.name, "started": "2026-11-30T01:30:00+00:00",
                                         "cells": ["tf-2.21.0-cpu"], "previous_run": None})
    assert main(["diff", str(root / "a"), str(later)]) == 1
    out = capsys.readouterr().out
    assert "1 of 36 verdicts changed" in out
    assert "tf-2.21.0-cpu keras_finetune_inference_call: ✔ updated -> ✘ stale" in out
    moved = f"keras 3.13.2 -> 3.16.0, + keras-hub 0.21.0, - namex {next(p for p in packages if 'namex' in p)[7:]}"
    assert f"tf-2.21.0-cpu installed other dependencies (3): {moved}" in out
    found = diff(load_run(root / "a"), load_run(root / "a"))
    assert found.changes == [] and found.packages == {}
    files = render_site(Site.load(root))
    index = html.unescape(files["index.html"])
    assert index.count("installed other dependencies") == 1  # the one entry that changed
    assert f"with the same TensorFlow, the cell installed other dependencies: {moved}." in index
    assert f"the cell installed other dependencies: {moved}." in html.unescape(files["cells/tf-2.21.0-cpu.html"])


def test_the_report_of_the_real_runs_names_each_change_with_its_release() -> None:
    site = Site.load(DATA)
    files = render_site(site)
    index = html.unescape(files["index.html"])
    assert ('<a href="changes.html#keras_bn_model_to_estimator-cpu-1.9.0-1.10.1">keras_bn_model_to_estimator '
            "(cpu): stale → updated in 1.10.0 (rows 1.9.0 → 1.10.1)</a>") in index
    assert ("keras_bn_model_to_estimator_tf_optimizer (cpu): stale (50/100 steps ran) → wrong (0.50×, 50/100 steps "
            "ran) in 1.10.0 (rows 1.9.0 → 1.10.1)" in index)  # the train op ran 50 times for 100 steps: both say so
    assert index.count(" boundary") == index.count(" changes-here") == 46  # a line per change, a facet's too
    assert "keras_bn_model_to_estimator (cpu): updated → error" not in index  # an error is no verdict: no change
    assert "keras_bn_model_to_estimator (cpu): error →" not in index
    assert "pin it" not in index  # the real bisect narrowed every change point of the default matrix
    assert len(site.searches) == 46 and {s.outcome for s in site.searches} == {Outcome.NARROWED}
    changes = files["changes.html"]
    assert changes.count('<section class="scenario"') == 46
    assert "keras_bn_trainable_false (cpu) forward_statistics changed from batch to moving in 2.0.0" in changes
    assert "keras_fit_4d_variance (cpu) variance_correction changed from unbiased to biased in 2.16.1" in changes
    for release in ("1.10.0", "1.13.1", "2.2.0", "2.2.1", "2.16.1", "2.0.0"):  # releases between rows: own pages
        assert f'href="cells/tf-{release}-cpu.html#' in changes and f"cells/tf-{release}-cpu.html" in files
    assert 'data-tf="2.16.1"' not in index and 'data-tf="2.16.2"' in index  # evidence cells are no matrix rows


def test_a_probe_installs_the_dependencies_of_its_own_release() -> None:
    """Between the matrix's rows a probe is dated by its release's upload on the index (the rows by released:);
    a `latest` probe is not; a --package probe holds the TF cell and pins the package, everything else as of the
    later of the two releases."""
    from bnmatrix.bisect import Bisector
    from bnmatrix.config import Matrix, data_path
    from bnmatrix.index import Release

    matrix = Matrix.from_file(data_path("matrix.yaml"))
    bisector = Bisector(matrix, lambda python: True)
    bisector.releases[("tensorflow", "2.16.1")] = Release("2.16.1", ("3.12",), uploaded="2024-03-07T20:00:00Z")
    assert bisector.cell("2.16.1", "3.12", "cpu", None, ("keras_fit",)).exclude_newer == "2024-03-14T20:00:00Z"
    assert bisector.cell("2.16.1", "3.12", "cpu", "latest", ("keras_fit",)).exclude_newer is None
    assert bisector.cell("2.16.2", "3.12", "cpu", None, ("keras_fit",)).exclude_newer == "2024-07-05T18:50:50Z"
    keras = Bisector(matrix, lambda python: True, pinned="keras", held="2.16.2")
    keras.releases[("keras", "3.10.0")] = Release("3.10.0", (), True, "2025-05-19T12:00:00Z")
    keras.releases[("keras", "3.0.0")] = Release("3.0.0", (), True, "2023-11-28T12:00:00Z")
    newer, older = (keras.cell(v, "3.12", "cpu", None, ("keras_fit",)) for v in ("3.10.0", "3.0.0"))
    assert newer.id == "tf-2.16.2-cpu+keras-3.10.0" and newer.tf == "2.16.2"
    assert newer.requirements[-1] == "keras==3.10.0" and newer.exclude_newer == "2025-05-26T12:00:00Z"
    assert older.exclude_newer == "2024-07-05T18:50:50Z"  # never before the held TF's own cutoff

"""A version not yet released, for real: fake `tensorflow` and `tf-nightly` releases on a local file index, the
nightly entry `bnmatrix sync --nightly` adds, its cell run like any other, and the report that keeps it out of the
ranges and calls out what it changes."""

from __future__ import annotations

import json

import pytest

from tests.faults.conftest import FAKE_TF, PYTHON, Fault, _wheel, bisect_index, write_index

pytestmark = pytest.mark.faults
TAG = f"cp3{PYTHON.split('.')[1]}"
PLATFORM = f"{TAG}-{TAG}-manylinux_2_17_x86_64"


def test_a_nightly_from_sync_runs_records_its_exact_version_and_the_report_calls_out_its_change(
        fault: Fault) -> None:
    fault.index = bisect_index(fault.dir / "index", {"2.99.0": 100}, PLATFORM)  # the release: statistics update
    root = fault.dir / "index" / "simple"
    (root / "tf-nightly").mkdir()
    nightlies = []
    for version, updates in (("2.99.1.dev20261127", 0), ("2.99.1.dev20261128", 0)):  # TF's own spelling: -dev
        code = FAKE_TF.format(version=version.replace(".dev", "-dev")) + f"\nBN_UPDATES = {updates}\n"
        wheel = _wheel(root / "tf-nightly", "tf_nightly", version, {"tensorflow/__init__.py": code})
        nightlies.append(wheel.rename(wheel.with_name(wheel.name.replace("py3-none-any", PLATFORM))))
    write_index(root, {"tensorflow": sorted((root / "tensorflow").glob("*.whl")), "tf-nightly": nightlies})
    matrix = fault.matrix(["versioned"], versions=("2.99.0",))

    code, output = fault.bnmatrix("sync", "--check")  # behind: no wheels: recorded; but no nightly unless asked for
    assert code == 1 and "~ wheels: the Python range of 1 minor release, from the index" in output, output
    assert "tf-nightly" not in output and "dev2026" not in output
    code, output = fault.bnmatrix("sync", "--nightly", "--write")
    assert code == 0, output
    assert f"+ 2.99.1.dev20261128 on Python {PYTHON}: tf-nightly's newest nightly (CPU), set up as 2.99.0" in output
    assert f'  - {{tf: 2.99.1.dev20261128, python: "{PYTHON}", devices: ["cpu"], package: {{cpu: ' \
           '"tf-nightly=={tf}"}, nightly: true}' in matrix.read_text().splitlines()

    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results")
    assert code == 0, output
    run = fault.runs()[-1]
    cell = fault.cell(run, "tf-2.99.1.dev20261128-cpu")
    assert cell["cell"]["requirements"][0] == "tf-nightly==2.99.1.dev20261128"
    result = cell["scenarios"]["versioned"]
    assert result["tf_version"] == "2.99.1-dev20261128" and result["status"] == "stale"  # the exact build, judged
    assert fault.cell(run, "tf-2.99.0-cpu")["scenarios"]["versioned"]["status"] == "updated"

    code, output = fault.bnmatrix("report", "--results", "results", "--out", "site")
    assert code == 0, output
    site = fault.dir / "site"
    exported = json.loads((site / "results.json").read_text())
    (line,) = [r for r in exported["ranges"] if r["scenario"] == "versioned"]
    assert [(r["status"], r["first"], r["last"]) for r in line["ranges"]] == [("updated", "2.99.0", "2.99.0")]
    assert line["upcoming"] == [{
        "version": "2.99.1.dev20261128", "kind": "nightly", "status": "stale", "facets": {},
        "newest_release": "2.99.0", "changes": True,
        "text": "changes in the next release: stale on 2.99.1.dev20261128 (nightly), updated on 2.99.0"}]
    assert "changes in the next release: stale on 2.99.1.dev20261128 (nightly), updated on 2.99.0" in \
        (site / "summary.md").read_text()
    index = (site / "index.html").read_text()
    assert 'id="next-changes"' in index and '<span class="upcoming">nightly</span>' in index
    assert "Not released yet." in (site / "versions" / "2.99.1.dev20261128.html").read_text()

    # the next night's build: sync moves the entry to it
    nightly = nightlies[-1].with_name(nightlies[-1].name.replace("20261128", "20261129"))
    nightly.write_bytes(nightlies[-1].read_bytes())
    write_index(root, {"tensorflow": sorted((root / "tensorflow").glob("*.whl")), "tf-nightly": [*nightlies, nightly]})
    code, output = fault.bnmatrix("sync", "--check")
    assert code == 1 and "~ 2.99.1.dev20261128 -> 2.99.1.dev20261129" in output, output

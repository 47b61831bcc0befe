"""The intake of a results root (intake.py) and the verdicts judged again from stored numbers: what a hostile or
damaged file gets, field by field, without running anything."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.errors import BnMatrixError
from bnmatrix.host import TOKEN_VARIABLE, sweep_dead_run, tagged_processes
from bnmatrix.intake import (
    MAX_DEPTH,
    RUN_FOLDER,
    check,
    parse_json,
    replace_folder,
    run_folders,
    staging_name,
    sweep_staging,
)
from bnmatrix.store.reader import read_cell
from bnmatrix.store.records import CellResult
from bnmatrix.verdict import Status

REAL_CELL = Path(__file__).resolve().parents[1] / "data" / "run" / "cells" / "tf-1.15.5-cpu.json"


def real_cell() -> dict[str, Any]:
    return json.loads(REAL_CELL.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("text", "expected"), [
    (b'{"a": NaN}', "non-finite number NaN; expected finite numbers"),
    (b'{"a": [1, 1e400]}', "a.1: the number overflows (inf); expected finite numbers"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than Python can parse; expected at most 64 levels"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep"),
    (b'{"a": 1', "x.json:1: not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_json_that_is_unbounded_or_not_finite_is_refused_with_where(text: bytes, expected: str) -> None:
    with pytest.raises(BnMatrixError, match=None) as caught:
        parse_json(text, "x.json")
    assert expected in str(caught.value) and str(caught.value).startswith("x.json")


def test_a_trailing_newline_does_not_pass_an_id_or_a_name() -> None:
    """JSON Schema's `$` is ECMA-262's, the end of the text; Python's would also pass "name\\n"."""
    for change in (lambda c: c["cell"].update(id="tf-1.15.5-cpu\n"),
                   lambda c: c["cell"]["scenarios"].append("keras_fit\n"),
                   lambda c: c["scenarios"]["keras_fit"].update(log="logs/tf-1.15.5-cpu/keras_fit.log\n")):
        data = real_cell()
        change(data)
        with pytest.raises(BnMatrixError, match=r"\\n' does not match"):
            check(data, "cell", "cell.json")
    check(real_cell(), "cell", "cell.json")  # the real one passes


@pytest.mark.parametrize(("started", "expected"), [
    ("2099-01-01T00:00:00+00:00", "is in the future"),
    ("yesterday", "does not match"),
    ("2026-11-28T10:00:00.123+00:00", None),
    ("2026-11-27T16:36:58+00:00", None),
])
def test_start_times_must_be_times_and_not_in_the_future(started: str, expected: str | None) -> None:
    manifest = {"schema": "bnmatrix.run/1", "run_id": "20261127T163656Z-d63296", "status": "complete",
                "started": started, "backend": "venv", "host": {"hostname": "h"}, "bnmatrix_version": "0.1.0",
                "matrix_hash": "0" * 64}
    if expected is None:
        assert check(manifest, "manifest", "m.json") == manifest
    else:
        with pytest.raises(BnMatrixError, match=expected):
            check(manifest, "manifest", "m.json")


def test_notes_links_are_web_addresses_only() -> None:
    check({"why": "x", "links": [{"title": "t", "url": "https://github.com/tensorflow/tensorflow/issues/1"}]},
          "notes", "n")
    for url in ("javascript:alert(1)", "data:text/html,<script>", "https://x\" onmouseover=\"alert(1)"):
        with pytest.raises(BnMatrixError, match="links.0.url"):
            check({"links": [{"title": "t", "url": url}]}, "notes", "n")


def test_bisect_versions_must_be_pep_440() -> None:
    data = json.loads((Path(__file__).resolve().parents[1] / "data" / "bisect" / "bisect.json").read_text())
    check(data, "bisect", "b")
    data["searches"][0]["candidates"][0] = "1.8.x"
    with pytest.raises(BnMatrixError, match="'1.8.x' is no PEP 440 version"):
        check(data, "bisect", "b")


def test_a_results_root_holds_real_run_folders_only(tmp_path: Path) -> None:
    for name in ("20261127T143212Z-e4bdcd", "20261127T143212Z-ci12345", "run", "latest-copy-0a1b2c", "2", "latest",
                 ".bnmatrix-import-1-2-abcdef", "Run"):
        (tmp_path / name).mkdir()
    (tmp_path / "20261127T000000Z-linked").symlink_to(tmp_path / "run")
    (tmp_path / "20261127T000000Z-afile").write_text("")
    assert [p.name for p in run_folders(tmp_path)] == ["20261127T143212Z-ci12345", "20261127T143212Z-e4bdcd",
                                                       "latest-copy-0a1b2c", "run"]
    assert not RUN_FOLDER.fullmatch("run\n")


def test_a_folder_replaced_by_a_killed_command_is_put_back(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("earlier")
    new = tmp_path / staging_name("site")
    new.mkdir()
    (new / "index.html").write_text("new")
    replace_folder(new, site)
    assert (site / "index.html").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    # What a command killed between its two renames leaves: the earlier folder aside, the new one staged.
    dead = f"{2 ** 22 - 3}-1"
    (tmp_path / f".bnmatrix-aside-{dead}-abcdef" / "site").mkdir(parents=True)
    (tmp_path / f".bnmatrix-aside-{dead}-abcdef" / "site" / "index.html").write_text("earlier")
    (tmp_path / f".bnmatrix-site-{dead}-fedcba").mkdir()
    (site / "index.html").unlink()
    site.rmdir()
    live = tmp_path / staging_name("site")  # this process's own: not swept
    live.mkdir()
    removed = sweep_staging(tmp_path)
    assert sorted(removed) == [f".bnmatrix-aside-{dead}-abcdef", f".bnmatrix-site-{dead}-fedcba"]
    assert (site / "index.html").read_text() == "earlier" and live.is_dir()


def test_a_stored_verdict_is_judged_again_from_its_numbers(tmp_path: Path) -> None:
    data = real_cell()
    stale = data["scenarios"]["keras_bn_custom_estimator"]
    assert stale["status"] == "stale"
    stale["status"], stale["reason"] = "updated", "forged"
    path = tmp_path / "tf-1.15.5-cpu.json"
    path.write_text(json.dumps(data))
    result = read_cell(path)
    scenario = result.scenarios["keras_bn_custom_estimator"]
    assert scenario.status is Status.STALE
    assert scenario.reason == ("moving statistics still at their initial values (0, 1) [judged again from the stored "
                               "numbers: the file said updated]")
    assert [s.status for n, s in result.scenarios.items() if n != "keras_bn_custom_estimator"] == \
        [Status(s["status"]) for n, s in real_cell()["scenarios"].items() if n != "keras_bn_custom_estimator"]


@pytest.mark.parametrize(("change", "reason"), [
    (lambda s: s["observed"]["layers"].clear(), "the scenario judged no layer"),
    (lambda s: s["observed"]["layers"]["bn"].update(moving_mean="0.95"),
     "cannot be judged (layers.bn: moving_mean: '0.95' is not of type"),
    (lambda s: s["observed"]["layers"]["bn"]["data"].update(values=[1e200, -1e200]),
     "the observed numbers cannot be judged"),
    (lambda s: s["observed"].update(momentum=None), "momentum: None; expected a number from 0 up to 1"),
])
def test_stored_numbers_no_verdict_comes_from_make_an_error(change: Any, reason: str) -> None:
    data = real_cell()
    scenario = data["scenarios"]["keras_fit"]
    assert scenario["status"] == "updated" and list(scenario["observed"]["layers"]) == ["bn"]
    change(scenario)
    result = CellResult.from_dict(copy.deepcopy(data))
    assert result.rejudge() is False
    assert result.scenarios["keras_fit"].status is Status.ERROR and reason in str(result.scenarios["keras_fit"].reason)
    assert result.scenarios["keras_fit"].judged is None  # no number of a verdict that is not there
    assert result.scenarios["keras_fit"].numbers()["moving_mean"] is None


def test_a_file_this_host_wrote_and_checked_is_read_as_it_is(tmp_path: Path) -> None:
    import hashlib
    import socket

    path = tmp_path / "tf-1.15.5-cpu.json"
    path.write_text(REAL_CELL.read_text())
    recorded = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "status": "ran"}
    assert read_cell(path, recorded).to_dict() == CellResult.from_dict(real_cell()).to_dict()
    assert socket.gethostname()  # the record is bound to this host: see results._recorded


def _tagged(token: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, TOKEN_VARIABLE: token})


def test_processes_are_matched_by_their_whole_run_id_only() -> None:
    """A run's sweep kills the processes of exactly that run id; never those of a run whose id it is a prefix of,
    and nothing at all for an id bnmatrix never gives (an imported folder named `2`)."""
    mine, other = _tagged("20261129T000000Z-abcdef:1"), _tagged("20261129T000000Z-abcdef0:2")
    try:
        time.sleep(0.5)
        assert tagged_processes(run_id="20261129T000000Z-abcdef") == [mine.pid]
        assert tagged_processes(token="20261129T000000Z-abcdef0:2") == [other.pid]
        assert sweep_dead_run("2") == 0 and sweep_dead_run("20261129T000000Z") == 0
        assert other.poll() is None and mine.poll() is None
        assert sweep_dead_run("20261129T000000Z-abcdef") == 1
        assert mine.wait(timeout=10) == -signal.SIGKILL and other.poll() is None
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()

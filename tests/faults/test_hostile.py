"""Hostile and broken input, tried as a careless or hostile user would, against the real `bnmatrix` commands:
archives for `import`, folders for `merge` and `report`, and stored files a run reads. Every case ends in one
clear line and exit 2 (or in a verdict this host judged itself), nothing is written outside the results root,
nothing of another run is touched, and nothing already there is lost."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.faults.conftest import Fault, wait_for

pytestmark = pytest.mark.faults

RUN = "20261101T000000Z-aaaaaa"  # the folder of the run the archives carry


def real_run(fault: Fault) -> Path:
    """A real run of the fake matrix (one cell, the `ok` scenario), made by bnmatrix: what archives start from."""
    fault.matrix(["ok"], versions=("2.15.1",))
    code, output = fault.run()
    assert code == 0, output
    (run,) = fault.runs()
    return fault.results / run["run_id"]


def pack(target: Path, runs: dict[str, Path], hostile: Callable[[tarfile.TarFile], None] | None = None,
         index: dict[str, Any] | None = None, mode: str = "w:gz") -> Path:
    """A bnmatrix.archive/1 archive of these run folders (by folder name), with `hostile` members added last."""
    index = index or {"schema": "bnmatrix.archive/1", "created": "2026-11-01T00:00:00+00:00",
                      "runs": [{"run_id": name, "folder": name} for name in runs]}
    with tarfile.open(target, mode) as archive:
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("archive.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        for name, folder in runs.items():
            archive.add(folder, arcname=name)
        if hostile:
            hostile(archive)
    return target


def member(archive: tarfile.TarFile, name: str, content: bytes = b"", **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    for key, value in fields.items():
        setattr(info, key, value)
    archive.addfile(info, io.BytesIO(content) if info.isreg() else None)


def edited(fault: Fault, source: Path, edit: Callable[[Path], None]) -> Path:
    """A copy of a run folder with `edit` applied to it."""
    copy = fault.dir / f"edited-{len(list(fault.dir.glob('edited-*')))}"
    shutil.copytree(source, copy)
    edit(copy)
    return copy


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def tree(folder: Path) -> dict[str, str]:
    """Every path under `folder` (links not followed) with its kind: what a command may not have changed."""
    if not folder.exists():
        return {}
    found = {}
    for place, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(place) / name
            found[str(path.relative_to(folder))] = "link" if path.is_symlink() else "dir" if path.is_dir() else \
                path.read_bytes().hex()[:64]
    return found


def one_clear_line(code: int, output: str) -> str:
    """The one line a user's mistake gets: exit 2, `bnmatrix: ...`, no traceback."""
    assert code == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("bnmatrix: ")]
    assert len(lines) == 1, output
    return lines[0]


# --- import -------------------------------------------------------------------------------------------

def cve_2025_4517(archive: tarfile.TarFile, staging_length: int) -> None:
    """The symlink chain of CVE-2025-4517 (as in CPython's test_realpath_limit_attack), inside the run folder: each
    link expands within PATH_MAX until the last, which tarfile's data filter then no longer resolves; through it a
    hard link and a file land outside the folder being unpacked, in the results root's parent."""
    steps = "abcdefghijklmnop"
    component = "d" * ((4096 - staging_length - 1) // (len(steps) + 1))
    path = step_path = RUN
    for step in steps:
        member(archive, os.path.join(path, component), type=tarfile.DIRTYPE, mode=0o777)
        member(archive, os.path.join(path, step), type=tarfile.SYMTYPE, linkname=component)
        path = os.path.join(path, component)
        step_path = os.path.join(step_path, step)
    link = os.path.join(RUN, *steps, "l" * 254)
    member(archive, link, type=tarfile.SYMTYPE, linkname=os.path.join(*[".."] * len(steps)))
    member(archive, f"{RUN}/escape", type=tarfile.SYMTYPE, linkname=os.path.join(*steps, "l" * 254, "..", "..", ".."))
    member(archive, f"{RUN}/escape/pwned", b"written outside the results root")


HOSTILE_MEMBERS: dict[str, Callable[[tarfile.TarFile], None]] = {
    "symbolic link out": lambda a: member(a, f"{RUN}/logs/link", type=tarfile.SYMTYPE, linkname="../../../pwned"),
    "absolute name": lambda a: member(a, "/tmp/bnmatrix-pwned", b"x"),
    "dot-dot name": lambda a: member(a, f"{RUN}/../../pwned", b"x"),
    "device": lambda a: member(a, f"{RUN}/logs/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
    "hard link out": lambda a: member(a, f"{RUN}/logs/passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
    "fifo": lambda a: member(a, f"{RUN}/logs/fifo", type=tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("kind", ["CVE-2025-4517", *HOSTILE_MEMBERS])
def test_import_takes_regular_files_and_folders_only_and_writes_nothing_outside(fault: Fault, kind: str) -> None:
    source = real_run(fault)
    root = fault.dir / "imported"
    root.mkdir()
    # The old import unpacked into results/.import-XXXXXXXX (8 random characters); the CVE's links are sized for it.
    staging_length = len(str(root)) + len("/.import-xxxxxxxx/") + len(RUN)
    hostile = (lambda a: cve_2025_4517(a, staging_length)) if kind == "CVE-2025-4517" else HOSTILE_MEMBERS[kind]
    archive = pack(fault.dir / "hostile.tar.gz", {RUN: source}, hostile)
    outside = tree(fault.dir)
    code, output = fault.bnmatrix("import", str(archive), "--results", str(root))
    line = one_clear_line(code, output)
    assert "expected" in line and str(archive) in line
    assert tree(root) == {}  # nothing imported, no staging folder left
    assert tree(fault.dir) == outside  # nothing written beside the root
    assert not Path("/tmp/bnmatrix-pwned").exists()


def test_a_decompression_bomb_is_refused_in_bounded_memory_and_disk(fault: Fault) -> None:
    """A 1 GiB GNU long name (a header that makes tarfile read it whole) and 300 MiB of logs, in 1.3 MB of gzip."""
    source = real_run(fault)
    zeros = bytes(1 << 20)

    def bomb(archive: tarfile.TarFile) -> None:
        long_name = tarfile.TarInfo("././@LongLink")
        long_name.type, long_name.size = tarfile.GNUTYPE_LONGNAME, 1 << 30
        archive.fileobj.write(long_name.tobuf(tarfile.GNU_FORMAT))  # type: ignore[union-attr]
        for _ in range(1024):
            archive.fileobj.write(zeros)  # type: ignore[union-attr]

    archive = pack(fault.dir / "bomb.tar.gz", {RUN: source}, bomb)
    assert archive.stat().st_size < 4 << 20
    root = fault.dir / "imported"
    process = subprocess.Popen([sys.executable, "-m", "bnmatrix", "import", str(archive), "--results", str(root)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=fault.env)
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")))
        except (OSError, StopIteration):
            pass
        time.sleep(0.02)
    output = process.stdout.read() if process.stdout else ""
    line = one_clear_line(process.returncode, output)
    assert "asks to read 1073741824 bytes at once" in line
    assert peak < 300 << 10, f"peak memory {peak >> 10} MiB"
    assert tree(root) == {}


def test_an_archive_that_unpacks_to_too_much_is_refused(fault: Fault) -> None:
    source = real_run(fault)

    def logs(archive: tarfile.TarFile) -> None:
        for index in range(6):  # 6 x 60 MiB of zeros: 360 MiB in about 350 KB
            info = tarfile.TarInfo(f"{RUN}/logs/tf-2.15.1-cpu/big{index}.log")
            info.size = 60 << 20
            archive.addfile(info, io.BytesIO(bytes(info.size)))

    archive = pack(fault.dir / "big.tar.gz", {RUN: source}, logs)
    root = fault.dir / "imported"
    line = one_clear_line(*fault.bnmatrix("import", str(archive), "--results", str(root)))
    assert "unpacks to more than" in line and "times its size" in line
    assert tree(root) == {}


def test_an_unrelated_bnmatrix_run_survives_a_hostile_import_and_the_next_run(fault: Fault) -> None:
    """Archives whose run claims to be still running here with a dead process: one named `2` (a prefix of every
    run id), one named exactly like another run that runs on this host. Neither lets a later run kill anything
    but what its own dead runs left."""
    source = real_run(fault)
    (fault.dir / "other").mkdir()
    other = Fault(fault.dir / "other", fault.index)  # another user's results root on this host
    other.matrix(["hang"], timeout_s=600, versions=("2.15.1",))
    running = other.start()
    try:
        wait_for(lambda: list(other.results.glob("2*/logs/tf-2.15.1-cpu/hang.log")), what="the other run's scenario")
        (victim,) = other.runs()
        wait_for(lambda: other.left_running(victim["run_id"]), what="the scenario process")
        time.sleep(1)
        before = other.left_running(victim["run_id"])

        def claim_running(folder: Path) -> None:
            edit_json(folder / "manifest.json", lambda m: {**m, "run_id": folder.name, "status": "running",
                                                           "process": {**m["process"], "pid": 2 ** 22 - 7}})

        prefix = pack(fault.dir / "prefix.tar.gz", {"2": edited(fault, source, claim_running)})
        line = one_clear_line(*fault.bnmatrix("import", str(prefix), "--results", "results"))
        assert "run folder '2': expected a run id" in line
        twin = edited(fault, source, claim_running)
        named = pack(fault.dir / "named.tar.gz", {victim["run_id"]: twin})
        code, output = fault.bnmatrix("import", str(named), "--results", "results")
        assert code == 0, output
        imported = json.loads((fault.results / victim["run_id"] / "manifest.json").read_text())
        assert imported["status"] == "interrupted"  # a run imported is never one that runs here
        code, output = fault.run("--force")
        assert code == 0, output
        assert "was killed before it finished" not in output
        assert other.left_running(victim["run_id"]) == before  # the other run's scenario still runs
    finally:
        running.send_signal(signal.SIGINT)
        running.communicate(timeout=60)


def test_a_forged_verdict_is_judged_again_from_its_numbers(fault: Fault) -> None:
    """A cell file whose numbers say `updated` but whose status says `stale` (edited, merged or imported): the
    report shows this host's verdict and says what the file claimed; a run does not reuse it."""
    source = real_run(fault)

    def forge(folder: Path) -> None:
        cell = folder / "cells" / "tf-2.15.1-cpu.json"
        edit_json(cell, lambda c: {**c, "scenarios": {"ok": {**c["scenarios"]["ok"], "status": "stale"}}})

    archive = pack(fault.dir / "forged.tar.gz", {RUN: edited(fault, source, forge)})
    root = fault.dir / "imported"
    assert fault.bnmatrix("import", str(archive), "--results", str(root))[0] == 0
    code, output = fault.bnmatrix("report", "--results", str(root), "--out", str(fault.dir / "site"))
    assert code == 0, output
    exported = json.loads((fault.dir / "site" / "results.json").read_text())
    (ok,) = [c["scenarios"]["ok"] for c in exported["cells"] if c["id"] == "tf-2.15.1-cpu"]
    assert ok["status"] == "updated" and "the file said stale" in ok["reason"]
    # In a root of its own: an edited cell file is not reused, the cell runs again, even where the manifest's
    # record of the files the run checked is edited to name it (only this host's key makes a record it takes).
    forge(source)
    edit_json(source / "manifest.json", lambda m: {**m, "checked": {**m["checked"], "cells": {"tf-2.15.1-cpu": {
        "sha256": hashlib.sha256((source / "cells" / "tf-2.15.1-cpu.json").read_bytes()).hexdigest(),
        "status": "ran"}}}})
    code, output = fault.run()
    assert code == 0, output
    last = fault.runs()[-1]
    cell = fault.cell(last, "tf-2.15.1-cpu")
    assert cell["reused_from"] is None and cell["scenarios"]["ok"]["status"] == "updated"


def test_a_run_dated_in_the_future_is_refused(fault: Fault) -> None:
    source = real_run(fault)
    future = edited(fault, source, lambda f: edit_json(f / "manifest.json",
                                                       lambda m: {**m, "started": "2099-01-01T00:00:00+00:00"}))
    root = fault.dir / "imported"
    line = one_clear_line(*fault.bnmatrix("import", str(pack(fault.dir / "f.tar.gz", {RUN: future})), "--results",
                                          str(root)))
    assert "started: 2099-01-01T00:00:00+00:00 is in the future" in line
    assert tree(root) == {}


def test_notes_with_a_script_link_never_reach_a_page(fault: Fault) -> None:
    source = real_run(fault)

    def script_link(folder: Path) -> None:
        (folder / "scenarios" / "ok" / "notes.json").write_text(json.dumps(
            {"why": "see", "links": [{"title": "click", "url": "javascript:alert(document.domain)"}]}))

    hostile = edited(fault, source, script_link)
    root = fault.dir / "imported"
    line = one_clear_line(*fault.bnmatrix("import", str(pack(fault.dir / "n.tar.gz", {RUN: hostile})), "--results",
                                          str(root)))
    assert "notes.json: links.0.url" in line and tree(root) == {}
    line = one_clear_line(*fault.bnmatrix("merge", str(hostile), "--out", str(fault.dir / "merged")))
    assert "notes.json: links.0.url" in line and not (fault.dir / "merged").exists()
    script_link(source)  # a root holding it anyway (copied in by hand): the report refuses to render it
    line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", str(fault.dir / "site")))
    assert "notes.json: links.0.url" in line and not (fault.dir / "site").exists()


def test_merge_and_report_never_follow_a_link(fault: Fault) -> None:
    source = real_run(fault)
    secret = fault.dir / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    log = source / "logs" / "tf-2.15.1-cpu" / "ok.log"
    log.unlink()
    log.symlink_to(secret)
    line = one_clear_line(*fault.bnmatrix("merge", "results", "--out", str(fault.dir / "merged")))
    assert "ok.log: is a symbolic link; expected a file of a run" in line
    line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", str(fault.dir / "site")))
    assert "ok.log: is a symbolic link" in line
    leaked = [p for p in fault.dir.rglob("*") if p.is_file() and not p.is_symlink() and p != secret
              and b"PRIVATE KEY" in p.read_bytes()]
    assert leaked == []


# --- merge ----------------------------------------------------------------------------------------------

def two_runs(fault: Fault) -> tuple[Path, Path]:
    """Two runs of one root, each with a cell of its own."""
    fault.matrix(["ok"])
    assert fault.run("--select", "tf-2.15.1-cpu")[0] == 0
    assert fault.run("--select", "tf-2.14.1-cpu")[0] == 0
    first, second = fault.runs()
    return fault.results / first["run_id"], fault.results / second["run_id"]


def test_merging_into_an_earlier_merge_adds_to_it(fault: Fault) -> None:
    first, second = two_runs(fault)
    out = fault.dir / "merged"
    assert fault.bnmatrix("merge", str(first), "--out", str(out))[0] == 0
    (out / "README.md").write_text("what these shards are")  # something of someone's own, in the merge
    code, output = fault.bnmatrix("merge", str(second), "--out", str(out))
    assert code == 0, output
    assert "merged 2 runs, 2 cells" in output
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == ["tf-2.14.1-cpu", "tf-2.15.1-cpu"]
    assert (out / "README.md").read_text() == "what these shards are"
    for cell in (out / "cells").glob("*.json"):  # the code each cell's reproduce command runs came along
        kept = json.loads(cell.read_text())["code"]
        assert (out / "code" / kept["helper"] / "bnmatrix_scenario.py").is_file()
        assert all((out / "code" / folder / f"{name}.py").is_file() for name, folder in kept["scenarios"].items())


def test_a_killed_merge_loses_nothing_and_the_next_one_goes_on(fault: Fault) -> None:
    """SIGKILL at many moments of a merge into an earlier one (copying 3,000 logs takes a while): afterwards the
    earlier merge is whole or put back by the next command, and merging again gives the union."""
    first, second = two_runs(fault)
    for index in range(1500):  # logs enough that the merge takes a second or so
        (second / "logs" / "tf-2.14.1-cpu" / f"extra{index}.log").write_text("x" * 100)
    out = fault.dir / "merged"
    assert fault.bnmatrix("merge", str(first), "--out", str(out))[0] == 0
    for delay in (0.05, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0):
        process = subprocess.Popen([sys.executable, "-m", "bnmatrix", "merge", str(second), "--out", str(out)],
                                   env=fault.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait()
        code, output = fault.bnmatrix("merge", str(first), "--out", str(out))  # the next command recovers
        assert code == 0, output
        cells = sorted(p.stem for p in (out / "cells").glob("*.json"))
        assert "tf-2.15.1-cpu" in cells, (delay, cells)
        assert not [p for p in fault.dir.iterdir() if p.name.startswith(".")], delay  # no staging left
    code, output = fault.bnmatrix("merge", str(second), "--out", str(out))
    assert code == 0, output
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == ["tf-2.14.1-cpu", "tf-2.15.1-cpu"]


def test_merging_a_root_with_reused_cells_and_a_killed_imports_leftovers(fault: Fault) -> None:
    fault.matrix(["ok"], versions=("2.15.1",))
    assert fault.run()[0] == 0
    assert fault.run()[0] == 0  # reuses the cell: the same result, another `reused_from`
    first, second = fault.runs()
    assert fault.cell(second, "tf-2.15.1-cpu")["reused_from"] == first["run_id"]
    kept = fault.cell(second, "tf-2.15.1-cpu")["code"]  # a reused cell's code is kept in the run that reused it
    assert (fault.results / second["run_id"] / "code" / kept["scenarios"]["ok"] / "ok.py").is_file()
    half = fault.results / ".import-1a2b3c4d" / "20261101T000000Z-bbbbbb"  # what a killed import left
    shutil.copytree(fault.results / first["run_id"], half)
    edit_json(half / "cells" / "tf-2.15.1-cpu.json", lambda c: {**c, "started": "2026-11-02T00:00:00+00:00",
                                                                  "run_id": half.name})
    code, output = fault.bnmatrix("merge", "results", "--out", str(fault.dir / "merged"))
    assert code == 0, output
    merged = json.loads((fault.dir / "merged" / "manifest.json").read_text())
    assert merged["merged_from"] == sorted([first["run_id"], second["run_id"]])


# --- the results root -------------------------------------------------------------------------------------

def test_a_run_folder_that_is_a_link_is_no_run(fault: Fault) -> None:
    elsewhere = real_run(fault).rename(fault.dir / "elsewhere")
    fault.matrix(["ok"], versions=("2.15.1",), extra="  keep_runs: 1\n")
    (fault.results / "20261101T000000Z-cccccc").symlink_to(elsewhere)
    for _ in range(2):
        code, output = fault.run()
        assert code == 0 and "Traceback" not in output, output
    assert (elsewhere / "manifest.json").is_file() and (fault.results / "20261101T000000Z-cccccc").is_symlink()


def test_the_leftovers_of_killed_commands_are_swept_by_the_next(fault: Fault) -> None:
    """Kill -9 an import while it unpacks, and a report while it writes: their staging folders are removed by
    the next command that writes there; one of a live command is left alone."""
    source = real_run(fault)
    for index in range(3000):
        (source / "logs" / "tf-2.15.1-cpu" / f"extra{index}.log").write_text("x" * 1000)
    archive = pack(fault.dir / "big.tar.gz", {RUN: source})
    root = fault.dir / "imported"
    process = subprocess.Popen([sys.executable, "-m", "bnmatrix", "import", str(archive), "--results", str(root)],
                               env=fault.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: list(root.glob(".bnmatrix-import-*/*/logs")), what="the import unpacking")
    process.kill()
    process.wait()
    assert list(root.glob(".bnmatrix-import-*"))
    alive = root / f".bnmatrix-import-{os.getpid()}-0-abcdef"  # a live command's (this test's own pid)
    alive.mkdir()
    code, output = fault.run("--results", str(root))
    assert code == 0, output
    assert [p.name for p in root.glob(".bnmatrix-*")] == [alive.name]
    real = fault.results / RUN  # the committed real run: a report of it takes a second or two
    shutil.copytree(Path(__file__).parents[1] / "data" / "run", real)
    for index in range(3000):
        (real / "logs" / "tf-2.15.1-cpu" / f"extra{index}.log").write_text("x" * 1000)
    site = fault.dir / "site"
    left = []
    # the report renders the run (about 4 s: 86 cells x 36 scenarios), then copies 4,000 logs and packs its archive
    for delay in (0.6, 1.2, 1.8, 2.4, 3.0, 3.6, 4.2, 4.8, 5.4):
        process = subprocess.Popen([sys.executable, "-m", "bnmatrix", "report", "--results", "results", "--out",
                                    str(site)], env=fault.env, cwd=fault.dir, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait()
        left += [p.name for p in fault.dir.glob(".bnmatrix-*")]
        code, output = fault.bnmatrix("report", "--results", "results", "--out", str(site))
        assert code == 0, output
        assert not list(fault.dir.glob(".bnmatrix-*")) and (site / "index.html").is_file()
    assert left  # at least one kill caught the report while it wrote


# --- one clear line for each mistake ---------------------------------------------------------------------

def damaged_root(fault: Fault, where: str, damage: Callable[[Any], Any]) -> None:
    """Damage a file of the root's run (`where`, inside the run folder): `damage` gets its data (or its text, or
    None when it does not exist) and returns new data, or the new text as a string."""
    path = real_run(fault) / where
    old = path.read_text() if path.exists() else None
    try:
        new = damage(json.loads(old) if old is not None else None)
    except ValueError:
        new = damage(old)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new if isinstance(new, str) else json.dumps(new))


def bad_version() -> dict[str, Any]:
    """The committed bisect conclusions, with a release that is no version."""
    data = json.loads((Path(__file__).parents[1] / "data" / "bisect" / "bisect.json").read_text())
    data["searches"][0]["candidates"][0] = "one"
    return data  # type: ignore[no-any-return]


def stray_change() -> dict[str, Any]:
    """The committed bisect conclusions, with a release pinned outside the search's own span."""
    data = json.loads((Path(__file__).parents[1] / "data" / "bisect" / "bisect.json").read_text())
    data["searches"][0]["changed_in"] = "0.1"
    return data  # type: ignore[no-any-return]


REPORT_DAMAGE: dict[str, tuple[str, Callable[[Any], Any], str]] = {
    "steps 0": ("cells/tf-2.15.1-cpu.json", lambda c: {**c, "scenarios": {"ok": {**c["scenarios"]["ok"], "steps": 0}}},
                "scenarios.ok.steps: 0 is less than the minimum of 1"),
    "momentum 2": ("cells/tf-2.15.1-cpu.json",
                   lambda c: {**c, "scenarios": {"ok": {**c["scenarios"]["ok"], "observed": {
                       **c["scenarios"]["ok"]["observed"], "momentum": 2}}}},
                   "scenarios.ok.observed.momentum: 2 is greater than or equal to the maximum of 1"),
    "a name with a newline": ("cells/tf-2.15.1-cpu.json",
                              lambda c: {**c, "cell": {**c["cell"], "scenarios": ["ok\n"]}},
                              "cell.scenarios.0: 'ok\\n' does not match"),
    "damaged notes": ("scenarios/ok/notes.json", lambda _: '{"why": ', "notes.json:1: not valid JSON"),
    "a version that is none": ("bisect.json", lambda _: json.dumps(bad_version()), "'one' is no PEP 440 version"),
    "a deep manifest": ("manifest.json", lambda m: json.dumps(m).replace('"selection": ', '"selection": ' + "[" *
                                                                          5000 + "]" * 5000 + ', "was": ', 1),
                        "expected at most 64 levels"),
    "a cell file that is none": ("cells/tf-2.15.1-cpu.json", lambda c: [c], "(top level): [{"),
    "an expectation that is no status": ("cells/tf-2.15.1-cpu.json",
                                         lambda c: {**c, "cell": {**c["cell"], "expect": {"ok": 0}}},
                                         "cell.expect.ok: 0 is not one of"),
    "packages that are no list": ("cells/tf-2.15.1-cpu.json",
                                  lambda c: {**c, "environment": {**c["environment"], "packages": 0}},
                                  "environment.packages: 0 is not of type 'array'"),
    "a release number that is none": ("cells/tf-2.15.1-cpu.json", lambda c: {**c, "cell": {**c["cell"], "tf": "2."}},
                                      "cell.tf: '2.' is no PEP 440 version"),
    "a lone surrogate": ("cells/tf-2.15.1-cpu.json",
                         lambda c: {**c, "scenarios": {"ok": {**c["scenarios"]["ok"], "reason": "\ud800"}}},
                         "scenarios.ok.reason: a lone surrogate"),
    "a docker environment without its image": ("cells/tf-2.15.1-cpu.json", lambda c: {
        **c, "environment": {**c["environment"], "kind": "docker"}}, "'cell_image' is a required property"),
    "a pid no process has": ("manifest.json", lambda m: {**m, "status": "running",
                                                         "process": {**m["process"], "pid": 2 ** 63}},
                             "process.pid: 9223372036854775808 is greater than the maximum of 4194304"),
    "a result of a scenario the cell does not list": ("cells/tf-2.15.1-cpu.json", lambda c: {
        **c, "cell": {**c["cell"], "scenarios": []}}, "expected one for each of cell.scenarios"),
    "20,000 scenarios": ("cells/tf-2.15.1-cpu.json", lambda c: {
        **c, "cell": {**c["cell"], "scenarios": ["ok", *(f"s{i}" for i in range(20000))]}}, "breaks maxItems 256"),
    "a change outside its own search": ("bisect.json", lambda _: json.dumps(stray_change()),
                                        "'0.1' is not among the search's candidates"),
}


@pytest.mark.parametrize("case", list(REPORT_DAMAGE))
def test_damaged_results_are_one_clear_line_for_report_and_merge(fault: Fault, case: str) -> None:
    where, damage, expected = REPORT_DAMAGE[case]
    damaged_root(fault, where, damage)
    before = tree(fault.dir)
    for command in (["report", "--results", "results", "--out", "site"], ["merge", "results", "--out", "merged"]):
        line = one_clear_line(*fault.bnmatrix(*command))
        assert expected in line, (command, line)
    assert tree(fault.dir) == before  # nothing written


def test_odd_manifests_in_a_merge(fault: Fault) -> None:
    source = real_run(fault)
    manifest = (source / "manifest.json").read_text()
    edit_json(source / "manifest.json", lambda m: {k: v for k, v in m.items() if k != "host"})
    line = one_clear_line(*fault.bnmatrix("merge", "results", "--out", "merged"))
    assert "manifest.json: (top level): 'host' is a required property" in line
    (source / "manifest.json").write_text(manifest.replace('"cells_written": 1', '"cells_written": NaN'))
    line = one_clear_line(*fault.bnmatrix("merge", "results", "--out", "merged"))
    assert "non-finite number NaN; expected finite numbers" in line and not (fault.dir / "merged").exists()


def test_broken_archives_are_one_clear_line(fault: Fault) -> None:
    source = real_run(fault)
    good = pack(fault.dir / "good.tar.gz", {RUN: source})
    cases = {
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "not gzip nor tar": b"PK\x03\x04 a zip file",
        "another format": pack(fault.dir / "other.tar.gz", {RUN: source},
                               index={"schema": "someone.else/1", "runs": []}).read_bytes(),
    }
    root = fault.dir / "imported"
    for name, content in cases.items():
        archive = fault.dir / f"{name}.tar.gz"
        archive.write_bytes(content)
        line = one_clear_line(*fault.bnmatrix("import", str(archive), "--results", str(root)))
        assert str(archive) in line and "expected" in line, (name, line)
    assert tree(root) == {}


@pytest.mark.parametrize("case", ["a file", "a folder without permission"])
def test_an_unusable_cache_folder_is_refused_before_anything_is_written(fault: Fault, case: str) -> None:
    fault.matrix(["ok"], versions=("2.15.1",))
    cache = fault.dir / "cache-file"
    if case == "a file":
        cache.write_text("not a folder")
    else:
        require(os.geteuid() != 0 or Path("/proc/sys").exists(), "needs /proc")
        cache = Path("/proc/sys/bnmatrix-cache")  # not writable, even for root
    line = one_clear_line(*fault.run(BNMATRIX_CACHE=str(cache)))
    assert f"cache folder {cache}" in line and "expected a folder bnmatrix may create files in" in line
    assert not fault.results.exists()


def test_mistakes_on_the_command_line_are_one_clear_line(fault: Fault) -> None:
    fault.matrix(["ok"], versions=("2.15.1",))
    for name in ("json", "numpy", "tensorflow", "bnmatrix_scenario"):
        line = one_clear_line(*fault.bnmatrix("scenario", "new", name, "--dir", "mine"))
        assert "expected another name" in line
    assert not (fault.dir / "mine").exists()
    (fault.dir / "mine").mkdir()
    (fault.dir / "mine" / "json.py").write_text("")  # a module that would hide the standard json
    line = one_clear_line(*fault.run("--scenarios", "mine"))
    assert "json.py: it would hide the module 'json'" in line
    for budget in ("nan", "inf", "-1"):
        line = one_clear_line(*fault.bnmatrix("bisect", "--matrix", "matrix.yaml", "--scenario", "ok", "--good",
                                              "2.14.1", "--bad", "2.15.1", "--budget", budget))
        assert "expected a number of minutes above 0" in line


# --- a full disk ----------------------------------------------------------------------------------------

def small_disk(path: Path, size: str) -> None:
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def test_a_full_disk_during_a_run_or_a_report_is_one_clear_line(fault: Fault) -> None:
    disk = fault.dir / "disk"
    small_disk(disk, "2m")
    try:
        fault.matrix(["flood", "ok"])  # the first cell's log fills the disk
        line = one_clear_line(*fault.run("--results", str(disk / "results")))
        assert "No space left on device" in line
        shutil.rmtree(disk / "results")
        fault.matrix(["ok"])
        assert fault.run()[0] == 0
        site = disk / "site"
        assert fault.bnmatrix("report", "--results", "results", "--out", str(site))[0] == 0
        index = (site / "index.html").read_bytes()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(bytes(max(0, free - (16 << 10))))  # leaves less than a site needs
        line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", str(site)))
        assert "No space left on device" in line and "the earlier site, if any, is kept" in line
        assert (site / "index.html").read_bytes() == index
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "site"]  # no staging left
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_release_candidate_without_pre_says_to_add_it(fault: Fault) -> None:
    from tests.faults.conftest import bisect_index

    fault.index = bisect_index(fault.dir / "index", {"2.99.0": 0, "2.99.1rc0": 100, "2.99.1": 100})
    fault.matrix(["versioned"], versions=("2.99.1", "2.99.0"))
    line = one_clear_line(*fault.bnmatrix("bisect", "--matrix", "matrix.yaml", "--backend", "venv", "--scenario",
                                          "versioned", "--good", "2.99.0", "--bad", "2.99.1rc0", "--results",
                                          "results"))
    assert "--bad 2.99.1rc0: a pre-release" in line and "--pre" in line


@pytest.mark.parametrize("where", ["logs", "cells", "scenarios/ok"])
def test_a_link_anywhere_in_a_run_is_refused_not_followed(fault: Fault, where: str) -> None:
    """A run folder whose logs, cells or kept scenario is a link to a folder elsewhere (a private one): report and
    merge refuse it, and nothing of the folder it points to is copied."""
    source = real_run(fault)
    elsewhere = fault.dir / "private"
    shutil.copytree(source / where, elsewhere)
    for path in elsewhere.rglob("*"):
        if path.suffix == ".json":
            edit_json(path, lambda data: {**data, "private": "PRIVATE"})
        elif path.is_file():
            path.write_text(path.read_text() + "\nPRIVATE")
    shutil.rmtree(source / where)
    (source / where).symlink_to(elsewhere)
    for command in (["report", "--results", "results", "--out", "site"], ["merge", "results", "--out", "merged"]):
        line = one_clear_line(*fault.bnmatrix(*command))
        assert f"{where}: is a symbolic link" in line, line
    written = [p for folder in ("site", "merged") for p in (fault.dir / folder).rglob("*") if p.is_file()]
    assert not [p for p in written if "PRIVATE" in p.read_text(errors="replace")]


def test_files_that_would_never_end_are_refused_before_they_are_read(fault: Fault) -> None:
    """A matrix that is /dev/zero or a FIFO, an archive that is a FIFO, a 20 GB log (sparse), a device in an earlier
    site: one line each, at once, in bounded memory."""
    source = real_run(fault)
    os.mkfifo(fault.dir / "fifo")
    for args, expected in ((["report", "--results", "results", "--out", "site", "--matrix", "/dev/zero"],
                            "/dev/zero: is no regular file; expected a matrix file"),
                           (["report", "--results", "results", "--out", "site", "--matrix", "fifo"],
                            "fifo: is no regular file; expected a matrix file"),
                           (["import", "fifo", "--results", "imported"],
                            "fifo: is a pipe; expected a results archive")):
        line = one_clear_line(*fault.bnmatrix(*args, timeout=30))
        assert expected in line, line
    huge = source / "logs" / "tf-2.15.1-cpu" / "big.log"
    with open(huge, "wb") as handle:
        handle.truncate(20 << 30)
    line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", "site", timeout=60))
    assert "big.log: 21474836480 bytes; expected at most 67108864 for a file of a run" in line
    huge.unlink()
    assert fault.bnmatrix("report", "--results", "results", "--out", "site")[0] == 0
    if os.geteuid() == 0:  # a device among what a user added to an earlier site
        subprocess.run(["mknod", str(fault.dir / "site" / "zero"), "c", "1", "5"], check=True)
        line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", "site", timeout=60))
        assert "site/zero: is a device; expected a file of the earlier site" in line


def test_odd_names_and_places_are_one_clear_line(fault: Fault) -> None:
    source = real_run(fault)
    long = "x" * 300
    for args in (["report", "--results", long], ["report", "--results", "results", "--out", long],
                 ["merge", long, "--out", "m"], ["merge", "results", "--out", long], ["diff", long]):
        line = one_clear_line(*fault.bnmatrix(*args))
        assert "File name too long" in line or "does not exist" in line, (args, line)
    (fault.dir / "m.yaml").write_bytes(b"versions: \xff\n")
    line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", "site", "--matrix", "m.yaml"))
    assert "m.yaml: not UTF-8" in line
    empty = fault.dir / "empty"
    empty.mkdir()
    for args in (["report", "--results", str(fault.results), "--out", "."], ["merge", str(fault.results), "--out",
                                                                             "."]):
        done = subprocess.run([sys.executable, "-m", "bnmatrix", *args], capture_output=True, text=True,
                              env=fault.env, cwd=empty, timeout=120)
        line = one_clear_line(done.returncode, done.stdout + done.stderr)
        assert "is this folder or holds it" in line
    assert list(empty.iterdir()) == []
    # A cell file whose name holds a newline: the message stays one line (no forged "bnmatrix:" line).
    shutil.copy(source / "cells" / "tf-2.15.1-cpu.json", source / "cells" / "x\nbnmatrix: all good.json")
    line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", "site"))
    assert "x\\nbnmatrix: all good.json" in line
    (source / "cells" / "x\nbnmatrix: all good.json").unlink()
    twin = json.loads((source / "cells" / "tf-2.15.1-cpu.json").read_text())
    twin["cell"]["id"] = "tf-2.15.1-cpu-zz"  # a second id for one release, device and variant
    (source / "cells" / "tf-2.15.1-cpu-zz.json").write_text(json.dumps(twin))
    line = one_clear_line(*fault.bnmatrix("report", "--results", "results", "--out", "site"))
    assert "cell.id: found 'tf-2.15.1-cpu-zz'; expected 'tf-2.15.1-cpu', from its tf, device and variant" in line


def test_runs_in_other_time_zones_are_ordered_by_the_moment_they_started(fault: Fault) -> None:
    """Run B started at 08:00+05:00 (03:00 UTC), run A at 04:00 UTC: A is the newer, whatever the text says."""
    source = real_run(fault)
    older = fault.results / "20261102T030000Z-bbbbbb"
    shutil.copytree(source, older)
    cell = older / "cells" / "tf-2.15.1-cpu.json"
    edit_json(cell, lambda c: {**c, "started": "2026-11-02T08:00:00+05:00", "run_id": older.name, "scenarios": {
        "ok": {**c["scenarios"]["ok"], "observed": {**c["scenarios"]["ok"]["observed"], "layers": {"bn": {
            "moving_mean": 0.0, "moving_variance": 1.0, "data": {"values": [0.0, 1.0, 2.0, 3.0]}}}}}}})
    edit_json(older / "manifest.json", lambda m: {**m, "run_id": older.name, "started": "2026-11-02T08:00:00+05:00"})
    edit_json(source / "manifest.json", lambda m: {**m, "started": "2026-11-02T04:00:00+00:00"})
    edit_json(source / "cells" / "tf-2.15.1-cpu.json", lambda c: {**c, "started": "2026-11-02T04:00:00+00:00"})
    assert fault.bnmatrix("report", "--results", "results", "--out", "site")[0] == 0
    exported = json.loads((fault.dir / "site" / "results.json").read_text())
    assert exported["cells"][0]["scenarios"]["ok"]["status"] == "updated"  # A's, not B's stale one
    assert fault.bnmatrix("merge", "results", "--out", "merged")[0] == 0
    merged = json.loads((fault.dir / "merged" / "cells" / "tf-2.15.1-cpu.json").read_text())
    assert merged["run_id"] == source.name


def test_merges_and_imports_at_once_lose_nothing(fault: Fault) -> None:
    first, second = two_runs(fault)
    out = fault.dir / "merged"
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        assert fault.bnmatrix("merge", str(first), "--out", str(out))[0] == 0
        processes = [subprocess.Popen([sys.executable, "-m", "bnmatrix", "merge", str(run), "--out", str(out)],
                                      env=fault.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for run in (first, second)]
        assert [p.wait(timeout=120) for p in processes] == [0, 0], [p.communicate()[0] for p in processes]
        assert sorted(p.stem for p in (out / "cells").glob("*.json")) == ["tf-2.14.1-cpu", "tf-2.15.1-cpu"]
    archive = pack(fault.dir / "a.tar.gz", {first.name: first, second.name: second})
    root = fault.dir / "imported"
    processes = [subprocess.Popen([sys.executable, "-m", "bnmatrix", "import", str(archive), "--results", str(root)],
                                  env=fault.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(3)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0], [p.communicate()[0] for p in processes]
    assert sorted(p.name for p in root.iterdir()) == sorted([first.name, second.name])

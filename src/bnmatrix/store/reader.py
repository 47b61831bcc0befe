"""Reading a results root, without changing it: its runs in order, a run with every file checked, and each
verdict judged again from its numbers unless this host vouches for the file."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from pathlib import Path
from typing import Any

from bnmatrix.errors import BnMatrixError
from bnmatrix.host import process_alive
from bnmatrix.intake import (
    MAX_JSON_BYTES,
    MAX_MEMBER_BYTES,
    check,
    parse_json,
    read_bytes,
    read_json,
    regular_file,
    run_folders,
)
from bnmatrix.store.files import moment, now, schema_digest, vouch
from bnmatrix.store.records import CellResult, Manifest, Run, RunStatus
from bnmatrix.store.searches import read_searches
from bnmatrix.verdict import CellStatus


def resolve_run_dir(path: Path) -> Path:
    """A run directory, given it or a results root holding `latest`."""
    if (path / "manifest.json").is_file():
        return path.resolve()
    if (path / "latest" / "manifest.json").is_file():
        return (path / "latest").resolve()
    if not path.exists():
        raise BnMatrixError(f"{path}: does not exist; expected a run directory or a results root")
    raise BnMatrixError(f"{path}: no run here (expected manifest.json, or latest/manifest.json in a results "
                        "root); run 'bnmatrix run' first")


def load_run(path: Path) -> Run:
    """A run, every file checked (intake.py: regular files and folders only, nothing behind a link, each JSON file
    against its schema) and every verdict judged again from its numbers, but those of cell files this host wrote
    and checked itself (the manifest's `checked` record)."""
    directory = resolve_run_dir(path)
    for folder, subfolders, files in os.walk(directory):  # links are listed, never followed
        for name in [*subfolders, *files]:
            entry = Path(folder) / name
            if (entry.is_symlink() or not entry.is_dir()) and regular_file(entry, "file of a run").st_size > \
                    MAX_MEMBER_BYTES:
                raise BnMatrixError(f"{entry}: {entry.stat().st_size} bytes; expected at most {MAX_MEMBER_BYTES} "
                                    "for a file of a run (a log is at most 8 MiB and a tail)")
    manifest = Manifest.from_dict(read_json(directory / "manifest.json", "manifest"))
    read_searches(directory)
    cells = [read_cell(p, recorded_check(manifest, p.stem)) for p in sorted((directory / "cells").glob("*.json"))]
    return Run(directory, manifest, cells)


def read_cell(path: Path, recorded: dict[str, Any] | None = None) -> CellResult:
    """A stored cell result, its verdicts judged again (see ScenarioResult.rejudge) unless `recorded` (what its
    run recorded of the file it wrote) vouches for these very bytes; BnMatrixError naming the file and the field
    when it is damaged."""
    return _read_cell(path, recorded)[0]


def _read_cell(path: Path, recorded: dict[str, Any] | None) -> tuple[CellResult, bool]:
    """read_cell, and whether every verdict the file holds stands as stored."""
    content = read_bytes(path, MAX_JSON_BYTES, "cell result")
    if recorded is not None and recorded.get("sha256") == hashlib.sha256(content).hexdigest():
        return CellResult.from_dict(json.loads(content)), True
    data = check(parse_json(content, str(path)), "cell", str(path))
    if data["cell"]["id"] != path.stem:
        raise BnMatrixError(f"{path}: cell.id: found {data['cell']['id']!r}; expected {path.stem!r}, the file's name")
    cell = data["cell"]
    named = f"tf-{cell['tf']}-{cell['device']}" + (f"-{cell['variant']}" if cell["variant"] else "")
    if cell["id"] != named:
        raise BnMatrixError(f"{path}: cell.id: found {cell['id']!r}; expected {named!r}, from its tf, device and "
                            "variant")
    listed, held = data["cell"]["scenarios"], sorted(data["scenarios"])
    if held != (sorted(listed) if data["status"] == CellStatus.RAN.value else []):
        raise BnMatrixError(f"{path}: scenarios: found results of {', '.join(held) or 'none'}; expected "
                            + (f"one for each of cell.scenarios ({', '.join(listed)})" if data["status"] == "ran"
                               else f"none for a cell that did not run ({data['status']})"))
    result = CellResult.from_dict(data)
    return result, result.rejudge()


SYSTEM_ROOTS = {Path(p) for p in ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
                                    "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var")}


def check_results_root(root: Path) -> None:
    """Refuse a results root that is a system folder or the home folder itself (a run writes and moves
    things there)."""
    resolved = root.expanduser().resolve()
    if resolved in SYSTEM_ROOTS or resolved == Path.home().resolve():
        raise BnMatrixError(f"--results {root}: {resolved} is a system or home folder; expected a folder of its own "
                            "for results, e.g. --results results")


def _alive(manifest: Manifest) -> bool:
    """Whether the process that wrote a `running` manifest still runs (on this host; elsewhere: assume so)."""
    process = manifest.process
    if not isinstance(process, dict) or not isinstance(process.get("pid"), int):
        return False  # written before runs recorded their process: nobody is finishing it
    if process.get("hostname") != socket.gethostname():
        return True  # another host's run: not ours to judge
    started = process.get("started_ticks")
    return process_alive(process["pid"], started if isinstance(started, int) else None)


DIED = "its process ended without finishing the run"


def runs_in(root: Path, refused: list[str] | None = None) -> list[tuple[Path, Manifest]]:
    """(run directory, manifest) of every run in a results root, oldest first (by start): real folders named like
    a run id whose manifest (and bisect.json) pass their schema; the others are left out, and why is added to
    `refused`. A run whose process died while it ran is shown `interrupted` (the next run that starts closes it
    on disk: RunStore); nothing is written here."""
    found = []
    for directory in run_folders(root):
        manifest_path = directory / "manifest.json"
        if not os.path.lexists(manifest_path):
            continue  # not a run, or one being created
        try:
            manifest = Manifest.from_dict(read_json(manifest_path, "manifest"))
            read_searches(directory)
        except BnMatrixError as exc:
            if refused is not None:
                refused.append(str(exc))
            continue
        if manifest.status is RunStatus.RUNNING and not _alive(manifest):
            manifest.status, manifest.finished, manifest.note = RunStatus.INTERRUPTED, manifest.finished or now(), DIED
        found.append((directory, manifest))
    return sorted(found, key=lambda item: (moment(item[1].started), item[0].name))


def recorded_check(manifest: Manifest, cell_id: str) -> dict[str, Any] | None:
    """What a run's manifest records of a cell file this host wrote and checked (its SHA-256 and status), if it
    was checked under this very schema; None for a file this host did not write (an imported or merged one)."""
    checked = manifest.checked
    if not isinstance(checked, dict) or checked.get("schema") != schema_digest():
        return None
    mac = vouch({k: v for k, v in checked.items() if k != "mac"})
    if mac is None or not isinstance(checked.get("mac"), str) or not hmac.compare_digest(mac, checked["mac"]):
        return None  # written elsewhere, by an older bnmatrix, or forged
    cells = checked.get("cells")
    entry = cells.get(cell_id) if isinstance(cells, dict) else None
    return entry if isinstance(entry, dict) else None


def checked_cell(path: Path, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """An earlier cell file that may be reused: checked and judged again unless its run recorded these very bytes
    as checked here (a rerun of an unchanged matrix then reads its 74 files in milliseconds); None if absent,
    damaged, or holding a verdict its own numbers do not give (it is redone)."""
    try:
        result, stands = _read_cell(path, recorded)  # even a file vouched for must make a result
        return result.to_dict() if stands else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, BnMatrixError):
        return None

"""Runs that enter a results root from elsewhere (merge of CI shards and artifacts): found, checked, merged."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from bnmatrix.errors import BnMatrixError
from bnmatrix.intake import MAX_TEXT_BYTES, copy_tree, read_bytes, read_json, regular_file, staged_folder, sweep_staging
from bnmatrix.store.files import moment, read_json_object, write_json
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import Manifest, Run, RunKind, RunStatus
from bnmatrix.store.searches import BISECT_FILE, BISECT_SCHEMA, Conclusion, read_searches


def runs_under(path: Path) -> list[Path]:
    """Run directories at or below `path` (a run, a results root, or a folder of CI artifacts); folders whose
    name starts with a dot (staging folders, a killed import's) and links are not searched."""
    if (path / "manifest.json").is_file():
        return [path.resolve()]
    if not path.is_dir():
        raise BnMatrixError(f"{path}: not a directory; expected a run directory or a folder holding runs")
    found = []
    for folder, subfolders, files in os.walk(path):  # links to folders are listed, never followed
        if "manifest.json" in files:
            found.append(Path(folder).resolve())
            subfolders.clear()  # a run holds no run
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return sorted(set(found))


def check_run(directory: Path) -> Run:
    """A run that is about to enter a results root (import, merge), every file checked: what load_run checks (regular
    files and folders only, the manifest, cell results and bisect conclusions against their schemas), and its
    scenario notes and kept scripts. BnMatrixError naming the first file that fails."""
    run = load_run(directory)
    for notes in sorted(directory.glob("scenarios/*/notes.json")):
        read_json(notes, "notes")
    for script in sorted(directory.glob("scenarios/*/scenario.py")):
        read_bytes(script, MAX_TEXT_BYTES, "scenario script")
    return run


COPY_FIELDS = ("reused_from", "code")  # what differs between a result and a later run's copy of it


def merge_runs(inputs: list[Path], out: Path) -> Path:
    """Merge runs into one run directory at `out`; idempotent and independent of the inputs' order. An earlier
    merge at `out` is one more input, so that merging into it loses nothing (nor what else it holds).

    A cell found in several runs keeps its newest result; two different results for the same cell
    and the same run are an error naming both files. `out` is replaced by rename (aside, in, delete):
    killed at any point, the earlier merge is still there, or is put back by the next command. Merges beside
    one --out take turns (a lock on its folder), so that two at once both end up in it.
    """
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(parent, os.O_RDONLY)
    except OSError as exc:
        raise BnMatrixError(f"--out {out}: cannot write there: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _merge(inputs, out)
    finally:
        os.close(lock)


def _merge(inputs: list[Path], out: Path) -> Path:
    sweep_staging(out.absolute().parent)  # what a killed merge left (an earlier merge it moved aside goes back)
    earlier = []
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BnMatrixError(f"--out {out}: is a {'link' if out.is_symlink() else 'file'}; expected a folder")
    if out.is_dir() and any(out.iterdir()):
        if "merged_from" not in read_json_object(out / "manifest.json"):
            raise BnMatrixError(f"--out {out}: exists and is not an earlier merge; expected a new or empty directory, "
                                "or an earlier merge to add to (nothing was written)")
        earlier = [out.resolve()]
    runs = sorted({run for path in inputs for run in runs_under(path)} | set(earlier))
    if not runs or runs == earlier:
        raise BnMatrixError(f"no run found in {', '.join(map(str, inputs))} (expected manifest.json files)")
    manifests: list[Manifest] = []
    chosen: dict[str, tuple[dict[str, Any], Path, Path]] = {}
    for directory in runs:
        run = check_run(directory)
        manifests.append(run.manifest)
        for cell in run.cells:
            path = directory / "cells" / f"{cell.id}.json"
            cell.run_id = origin = cell.run_id or run.id
            result = cell.to_dict()
            if cell.id in chosen:
                other, other_path, _ = chosen[cell.id]
                other_origin = other["run_id"]
                if origin == other_origin and _without(result, COPY_FIELDS) != _without(other, COPY_FIELDS):
                    raise BnMatrixError(f"{other_path} and {path}: two different results for cell {cell.id} "
                                        f"of run {origin}; expected one")
                if (moment(result["started"]), origin) <= (moment(other["started"]), other_origin):
                    continue
            chosen[cell.id] = (result, path, directory)
    sources = sorted({source for m in manifests for source in (m.merged_from or [m.run_id])})

    def union(values: list[Any], separator: str) -> str:
        """Joined distinct values of a manifest field; an earlier merge's joined value counts as its parts."""
        return separator.join(sorted({part for value in values if isinstance(value, str)
                                      for part in value.split(separator) if part}))

    merged = Manifest(
        run_id="merged-" + hashlib.sha256(" ".join(sources).encode()).hexdigest()[:12],
        status=RunStatus.COMPLETE if {m.status for m in manifests} == {RunStatus.COMPLETE} else RunStatus.PARTIAL,
        kind=RunKind.BISECT if all(m.kind is RunKind.BISECT for m in manifests) else RunKind.RUN,
        started=min((m.started for m in manifests), key=moment),
        finished=max((m.finished for m in manifests if m.finished), key=moment, default=None),
        backend=union([m.backend for m in manifests], "+"),
        host={"hostname": union([m.host.get("hostname") for m in manifests], ", ")},
        matrix=union([m.matrix for m in manifests], " "),
        matrix_hash=union([m.matrix_hash for m in manifests], " "),
        bnmatrix_version=union([m.bnmatrix_version for m in manifests], " "),
        merged_from=sources, cells=sorted(chosen))
    with staged_folder(out, "merge", "nothing was replaced") as staging:
        for key, (result, _, directory) in sorted(chosen.items()):
            write_json(staging / "cells" / f"{key}.json", result)
            if (directory / "logs" / key).is_dir():
                copy_tree(directory / "logs" / key, staging / "logs" / key)
        for directory in runs:  # the scenarios' code and notes (a later run's copy wins), and the code kept to
            for folder in ("scenarios", "code"):  # reproduce them (by content: a name is always the same files)
                if (directory / folder).is_dir():
                    copy_tree(directory / folder, staging / folder)
        searches: dict[tuple[Any, ...], Conclusion] = {}
        for search in sorted((s for d in runs for s in read_searches(d)), key=lambda s: s.updated):
            searches[search.key] = search  # the newest conclusion of each search
        if searches:
            write_json(staging / BISECT_FILE, {"schema": BISECT_SCHEMA, "run_id": merged.run_id,
                                               "searches": [searches[k].to_dict() for k in sorted(searches, key=str)]})
        write_json(staging / "manifest.json", merged.to_dict())
        if earlier:  # what else the earlier merge holds (a README someone put there) stays
            for place, _, names in os.walk(out):
                for name in names:
                    kept = Path(place) / name
                    if not os.path.lexists(staging / kept.relative_to(out)):
                        regular_file(kept, "file of an earlier merge")
                        (staging / kept.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(kept, staging / kept.relative_to(out))
    return out


def _without(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}

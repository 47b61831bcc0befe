"""Matrix x selection -> the cells a run does (pure: no Docker, no TensorFlow)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bnmatrix.config import DEFAULT_INDEX_URL, Matrix, unknown_scenario
from bnmatrix.errors import BnMatrixError


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One TF version on one device (optionally a variant): one environment, every scenario."""

    id: str
    tf: str
    python: str
    device: str
    variant: str | None
    requirements: tuple[str, ...]
    env: dict[str, str]
    image: str  # the base image the container backend uses (after --image-map / image-map.yaml)
    requested_image: str  # the image matrix.yaml names
    steps: int
    scenarios: tuple[str, ...]
    index_url: str
    expect: dict[str, str] = field(default_factory=dict)  # scenario -> known status (matrix.yaml expect:)
    # its dependencies as they were at this time (uv --exclude-newer): its TF release's upload plus a grace; None
    # for a `latest` variant, a version without a date, and results from before bnmatrix recorded it
    exclude_newer: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Cell:
        """The cell a stored result describes (describe()'s inverse; its schema checked it): what older results did
        not record is left empty."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {"image": "", "requested_image": "", "index_url": DEFAULT_INDEX_URL, "variant": None,
                                  "env": {}, "requirements": (), "scenarios": (), "exclude_newer": None}
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in names})
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """The cell as JSON data (lists, not tuples)."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[no-any-return]

    def inputs_hash(self, scenario_sources: dict[str, str]) -> str:
        return inputs_hash(self.describe(), scenario_sources)


def _defining(definition: dict[str, Any], *left_out: str) -> dict[str, Any]:
    """A cell's definition as its hashes take it: without `left_out`, and without an exclude_newer it does not have
    (so a cell that resolves as of today hashes as cells did before bnmatrix had the key)."""
    return {k: v for k, v in definition.items() if k not in left_out and not (k == "exclude_newer" and v is None)}


def inputs_hash(definition: dict[str, Any], scenario_sources: dict[str, str]) -> str:
    """What decides a cell's outcome: its definition (not its expectations) and its scenarios' code."""
    payload = json.dumps({"cell": _defining(definition, "expect"), "sources": scenario_sources}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def scenario_inputs_hash(definition: dict[str, Any], scenario: str, sources: dict[str, dict[str, str]]) -> str:
    """What decides one scenario's outcome in a cell: the cell's definition (not its scenario list nor its
    expectations), the scenario's name, and the code of the folders it runs from (`sources`, by role: the
    built-in folder, which holds the helper, and its own)."""
    payload = json.dumps({"cell": _defining(definition, "scenarios", "expect"), "scenario": scenario,
                          "sources": sources}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def all_cells(matrix: Matrix, scenarios: Sequence[str] = (), image_map: dict[str, str] | None = None) -> list[Cell]:
    """Every cell of the matrix in file order (newest TF first in the default matrix)."""
    chosen = tuple(scenarios) or matrix.scenarios
    images = {**matrix.image_map, **(image_map or {})}
    cells = []

    def expectations(cell_id: str) -> dict[str, str]:
        found = {}
        for pattern, scenario, status in matrix.expect:
            if fnmatch.fnmatchcase(cell_id, pattern) and scenario in chosen:
                found[scenario] = status
        return found

    for version in matrix.versions:
        for device in version.devices:
            base = (version.packages[device], *version.pins)
            flavours: list[tuple[str | None, tuple[str, ...], dict[str, str]]] = [(None, (), {})]
            flavours += [(name, pins, matrix.variants[name].env) for name, pins in version.variants.items()]
            for variant, extra, env in flavours:
                only = matrix.variants[variant].scenarios if variant else ()
                runs = tuple(name for name in chosen if not only or name in only)
                cell_id = f"tf-{version.tf}-{device}" + (f"-{variant}" if variant else "")
                cells.append(Cell(
                    id=cell_id,
                    tf=version.tf,
                    python=version.python,
                    device=device,
                    variant=variant,
                    requirements=base + extra,
                    env=dict(env),
                    image=images.get(version.images[device], version.images[device]),
                    requested_image=version.images[device],
                    steps=version.steps,
                    scenarios=runs,
                    index_url=matrix.index_url,
                    expect={k: v for k, v in expectations(cell_id).items() if k in runs},
                    exclude_newer=None if variant and matrix.variants[variant].latest else matrix.exclude_newer(
                        version.tf),
                ))
    return cells


def plan(matrix: Matrix, select: Sequence[str] = (), skip: Sequence[str] = (),
         scenarios: Sequence[str] = (), image_map: dict[str, str] | None = None) -> list[Cell]:
    """The cells whose id matches any --select glob (all if none) and no --skip glob."""
    unknown = [name for name in scenarios if name not in matrix.scenarios]
    if unknown:
        raise unknown_scenario(unknown[0], matrix.scenarios, f"from {matrix.path}")
    cells = all_cells(matrix, scenarios, image_map)
    for pattern in select:
        if not any(fnmatch.fnmatchcase(cell.id, pattern) for cell in cells):
            raise BnMatrixError(f"--select {pattern!r} matches no cell of {matrix.path}; "
                                f"cell ids look like {cells[0].id} (see 'bnmatrix plan')")
    return [
        cell for cell in cells
        if (not select or any(fnmatch.fnmatchcase(cell.id, p) for p in select))
        and not any(fnmatch.fnmatchcase(cell.id, p) for p in skip)
        and cell.scenarios  # a variant that runs none of the --scenario asked for has nothing to run
    ]


GITHUB_JOB_LIMIT = 256  # jobs one GitHub Actions matrix may have


def parse_shard(text: str) -> tuple[int, int]:
    """--shard K/N as (K, N), 1 <= K <= N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise BnMatrixError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/5")
    return int(match[1]), int(match[2])


def shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """The index-th of `count` deterministic shards (round robin in plan order; 1-based)."""
    return list(cells[index - 1::count])


def github_jobs(cells: Sequence[Cell], runs_on: Callable[[str, str], str | list[str]],
                max_jobs: int = GITHUB_JOB_LIMIT) -> list[dict[str, Any]]:
    """Jobs for a GitHub Actions matrix: one per cell, or shards when there are more than `max_jobs`.

    Cells of one runner (matrix.yaml settings.runners: per device, and per TF release where it has rules, e.g. a
    T4 for TF 1.x and an H100 for 2.12+) share its jobs, so shards never mix runners.
    """
    groups: dict[tuple[str, str], list[Cell]] = {}  # (device, runner as JSON) -> its cells
    labels: dict[tuple[str, str], str | list[str]] = {}
    for cell in cells:
        runner = runs_on(cell.device, cell.tf)
        key = (cell.device, json.dumps(runner))
        groups.setdefault(key, []).append(cell)
        labels[key] = runner
    if max_jobs < len(groups):
        raise BnMatrixError(f"--max-jobs {max_jobs}: the selection needs at least {len(groups)} jobs "
                            f"(one per runner: {', '.join(f'{d} {r}' for d, r in groups)})")
    if len(cells) <= max_jobs:
        counts = {key: len(group) for key, group in groups.items()}
    else:  # each runner gets its share of the jobs, at least one
        counts = {key: max(1, max_jobs * len(group) // len(cells)) for key, group in groups.items()}
        while sum(counts.values()) > max_jobs:
            counts[max(counts, key=lambda d: counts[d])] -= 1
    devices = [device for device, _ in groups]
    jobs = []
    for key, group in groups.items():
        device = key[0]
        title = device if devices.count(device) == 1 else f"{device} on {_labels(labels[key])}"
        count = counts[key]
        for index in range(1, count + 1):
            part = shard(group, index, count)
            name = part[0].id if len(part) == 1 else f"{title} {index}/{count}"
            jobs.append({"name": name, "cells": " ".join(c.id for c in part), "runs-on": labels[key]})
    return jobs


def _labels(runner: str | list[str]) -> str:
    return runner if isinstance(runner, str) else ", ".join(runner)

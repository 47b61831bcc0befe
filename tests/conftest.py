"""Shared fixtures. In CI (CI=true) an end-to-end test that would skip fails instead."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"


def require(condition: bool, reason: str) -> None:
    """Skip when `condition` is false, except in CI, where a skipped end-to-end test is a failure."""
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def copy_run_started(run: Path, target: Path, started: str) -> None:
    """A copy of a run whose manifest and cells say it started at `started`: the committed run, placed before a
    later run a test writes beside it (a run's results are ordered by when they started)."""
    shutil.copytree(run, target)
    for path in [target / "manifest.json", *(target / "cells").glob("*.json")]:
        path.write_text(json.dumps({**json.loads(path.read_text()), "started": started}))


FAKE_SMI = """#!/bin/sh
# A fake nvidia-smi: an H100 with a 2024 driver (CUDA 12.4), or FAKE_SMI_GPU=t4: a T4 with a 2023 driver (CUDA 12.2);
# FAKE_SMI_DRIVER=470.82.01 gives it an older driver (CUDA 11.4); FAKE_SMI_OLD=1 is a driver whose --query-gpu has
# no compute_cap.
if [ "$FAKE_SMI_GPU" = t4 ]; then
  name="Tesla T4"; capability=7.5; driver=535.183.01; cuda=12.2; memory="15360 MiB"
else
  name="NVIDIA H100 80GB HBM3"; capability=9.0; driver=550.54.15; cuda=12.4; memory="81559 MiB"
fi
if [ -n "$FAKE_SMI_DRIVER" ]; then driver=$FAKE_SMI_DRIVER; cuda=11.4; fi
case "$1" in
  -L) echo "GPU 0: $name (UUID: GPU-4a3c1c2e-0000-0000-0000-000000000000)";;
  --query-gpu=*)
    if [ -n "$FAKE_SMI_OLD" ]; then echo 'Field "compute_cap" is not a valid field to query.' >&2; exit 2; fi
    echo "$name, $capability, $driver, $memory";;
  "") echo "| NVIDIA-SMI $driver             Driver Version: $driver     CUDA Version: $cuda     |";;
  *) exit 1;;
esac
"""


def fake_smi(folder: Path) -> Path:
    """A folder holding the fake nvidia-smi, to put first on PATH: this machine has no GPU."""
    smi = folder / "nvidia-smi"
    folder.mkdir(parents=True, exist_ok=True)
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    return folder


def add_candidate(run: Path, version: str = "2.22.0rc0") -> None:
    """Give a copy of the committed run a release candidate: its tf-2.21.0-cpu cell as `version`, where
    keras_finetune_inference_call turns stale (the real numbers of that scenario's stale tf-2.21.0-cpu-tfkeras
    result), as TF 2.22.0rc0 with Keras 3.16.0.dev really does."""
    cells = run / "cells"
    candidate = json.loads((cells / "tf-2.21.0-cpu.json").read_text())
    stale = json.loads((cells / "tf-2.21.0-cpu-tfkeras.json").read_text())["scenarios"]["keras_finetune_inference_call"]
    cell_id = f"tf-{version}-cpu"
    candidate["cell"].update(id=cell_id, tf=version, expect={})
    candidate["scenarios"]["keras_finetune_inference_call"] = stale
    candidate["setup_log"] = f"logs/{cell_id}/setup.log"
    for name, result in candidate["scenarios"].items():
        result["tf_version"] = version.replace("rc", "-rc")  # as TF itself spells it
        result["log"] = f"logs/{cell_id}/{name}.log"
    (cells / f"{cell_id}.json").write_text(json.dumps(candidate))
    logs = run / "logs" / cell_id  # the logs of the cells it is made of
    shutil.copytree(run / "logs" / "tf-2.21.0-cpu", logs)
    shutil.copy(run / "logs" / "tf-2.21.0-cpu-tfkeras" / "keras_finetune_inference_call.log", logs)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "cells": [*manifest["cells"], cell_id]}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line naming what could not be tested on this host (a skipped end-to-end part and why), so that a
    green run never hides it; pytest -rs lists each skip."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, set[str]] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons.setdefault(report.nodeid.split("::")[0], set()).add(reason.removeprefix("Skipped: "))
    if reasons:
        parts = [f"{path} ({'; '.join(sorted(why))})" for path, why in sorted(reasons.items())]
        count = f"{len(skipped)} test{'s' if len(skipped) != 1 else ''} skipped"
        terminalreporter.write_line(f"not tested on this host ({count}): " + ", ".join(parts), yellow=True, bold=True)

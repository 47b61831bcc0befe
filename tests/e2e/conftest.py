"""What the end-to-end tests share: the verdicts the numbers must give, and a Docker daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
STEPS = 100
MU, MOMENTUM, SIGMA2 = 1.5, 0.99, 1.25
E2E_CELLS = {"tf-1.15.5-cpu": ("1.15.5", "3.7"), "tf-2.15.1-cpu": ("2.15.1", "3.11")}


def check_verdicts(cell: dict[str, Any]) -> None:
    """The four scenarios' verdicts, from their numbers, for TF 1.15.5 and 2.15.1 on the CPU."""
    assert cell["status"] == "ran", cell["reason"]
    tf, python = E2E_CELLS[cell["cell"]["id"]]
    scenarios = cell["scenarios"]
    assert set(scenarios) == {"keras_bn_custom_estimator", "layers_bn_custom_estimator",
                              "keras_bn_model_to_estimator", "layers_bn_session"}
    for s in scenarios.values():
        assert s["tf_version"] == tf and s["python"].startswith(python + ".")
        assert "CPU" in s["devices_seen"] and "GPU" not in s["devices_seen"]
        assert s["steps"] == STEPS
        assert s["expected_moving_mean"] == pytest.approx(MU * (1 - MOMENTUM**STEPS))
    stale = scenarios["keras_bn_custom_estimator"]
    assert stale["status"] == "stale", stale["reason"]
    assert (stale["moving_mean"], stale["moving_variance"], stale["update_ops"]) == (0.0, 1.0, 0)
    for name in ("layers_bn_custom_estimator", "keras_bn_model_to_estimator"):
        s = scenarios[name]
        assert s["status"] == "updated", s["reason"]
        assert s["moving_mean"] == pytest.approx(MU * (1 - MOMENTUM**STEPS), rel=1e-5)
        assert s["moving_variance"] == pytest.approx(SIGMA2 + (1 - SIGMA2) * MOMENTUM**STEPS, rel=1e-5)
        assert s["effective_updates"] == pytest.approx(STEPS, abs=0.01)
    # The report's second tower (reuse=True) adds its own update ops: 8, and two updates per step.
    session = scenarios["layers_bn_session"]
    assert session["update_ops"] == 8 and session["status"] == "wrong"
    assert session["effective_updates"] == pytest.approx(2 * STEPS, abs=0.5)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    from bnmatrix.backends.docker import connect

    client, about = connect()
    require(client is not None, f"no Docker daemon answered: {about}")
    return client


@pytest.fixture(scope="session")
def image_map_args() -> list[str]:
    """--image-map options from the checkout's image-map.yaml (written by docker/base/build.sh)."""
    from bnmatrix.config import load_image_map

    mapping = load_image_map(REPO / "image-map.yaml")
    return [option for source, target in mapping.items() for option in ("--image-map", f"{source}={target}")]

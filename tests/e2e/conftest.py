"""What the end-to-end tests share: the verdicts the numbers must give, real runs, a Docker daemon."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.store.records import CellResult, ScenarioResult
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
STEPS = 100
MU, MOMENTUM, SIGMA2, SIGMA2_UNBIASED = 1.5, 0.99, 1.25, 5 / 3
E2E_CELLS = {"tf-1.15.5-cpu": ("1.15.5", "3.7"), "tf-2.15.1-cpu": ("2.15.1", "3.11")}
# Keras 3 (TF 2.16+): the scenarios whose answer changes with it.
KERAS3_CELL = ("tf-2.16.2-cpu", "2.16.2", "3.12")

# What each scenario must show, per TF (and variant): its status and every facet of its verdict, as measured on
# this project's machine (tests/data/run); check_scenario then checks the numbers against the closed form.
F32 = {"moving_dtype": "float32"}
UPDATED = ("updated", {"variance_correction": "biased", **F32})
UNBIASED = ("updated", {"variance_correction": "unbiased", **F32})
STALE, UNSUPPORTED, ERROR = ("stale", F32), ("unsupported", {}), ("error", {})
EXPECTED: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "1.15.5": {
        "keras_bn_custom_estimator": STALE,
        "layers_bn_custom_estimator": UPDATED,
        "keras_bn_model_to_estimator": UPDATED,
        "layers_bn_session": ("wrong", {"updates": "2.00", "variance_correction": "biased", **F32}),
        "keras_bn_custom_estimator_fixed": UPDATED,
        "layers_bn_session_train_tower": UPDATED,
        "compat_v1_keras_bn_custom_estimator": STALE,
        "keras_bn_model_to_estimator_tf_optimizer": UPDATED,
        "keras_fit": UPDATED,
        "keras_gradient_tape": UPDATED,
        "keras_tf_function": UPDATED,
        "keras_bn_trainable_false": ("stale", {"forward_statistics": "batch", **F32}),
        "keras_fit_4d_variance": UNBIASED,
        "keras_fit_4d_variance_unfused": UPDATED,
        "layers_bn_4d_variance": UNBIASED,
        "layers_bn_4d_variance_unfused": UPDATED,
        "keras_bn_sync_mirrored": UNSUPPORTED,
        "keras3_bn_fit": UNSUPPORTED,
        "keras_finetune_frozen_base": ("stale", {"forward_statistics": "batch", **F32}),
        "keras_finetune_inference_call": STALE,
        "keras_finetune_unfreeze_no_recompile": STALE,
        "keras_finetune_unfreeze_recompile": UPDATED,
        "contrib_batch_norm_updates_none": UNBIASED,
        "contrib_batch_norm_no_dependency": STALE,
        "layers_batch_normalization_placeholder": UPDATED,
        "keras_gradient_tape_no_training": STALE,
        "keras_subclass_nested_training": UPDATED,
        "keras_train_on_batch": UPDATED,
        "keras_fit_mixed_float16": UNSUPPORTED,
        "keras_fit_mixed_bfloat16": UNSUPPORTED,
        "keras_bn_mirrored_plain": UNSUPPORTED,
        "keras_bn_synchronized_true": UNSUPPORTED,
        "keras_bn_renorm": ("wrong", {"updates": "1.00", "variance_updates": "0.95", **F32}),
        "keras_bn_virtual_batch_size": ("wrong", {"follows": "alternate_samples", **F32}),
        "keras_bn_save_reload_fit": UPDATED,
        "keras_bn_momentum_zero": UPDATED,
    },
    "2.15.1": {
        "keras_bn_custom_estimator": STALE,
        "layers_bn_custom_estimator": UPDATED,
        "keras_bn_model_to_estimator": UPDATED,
        "layers_bn_session": ("wrong", {"updates": "2.00", "variance_correction": "biased", **F32}),
        "keras_bn_custom_estimator_fixed": UPDATED,
        "layers_bn_session_train_tower": UPDATED,
        "compat_v1_keras_bn_custom_estimator": STALE,
        "keras_bn_model_to_estimator_tf_optimizer": UPDATED,
        "keras_fit": UPDATED,
        "keras_gradient_tape": UPDATED,
        "keras_tf_function": UPDATED,
        "keras_bn_trainable_false": ("stale", {"forward_statistics": "moving", **F32}),
        "keras_fit_4d_variance": UNBIASED,
        "keras_fit_4d_variance_unfused": UPDATED,
        "layers_bn_4d_variance": UNBIASED,
        "layers_bn_4d_variance_unfused": UPDATED,
        "keras_bn_sync_mirrored": ("updated", {"variance_correction": "biased", "follows": "batch", **F32}),
        "keras3_bn_fit": UNSUPPORTED,
        "keras_finetune_frozen_base": ("stale", {"forward_statistics": "moving", **F32}),
        "keras_finetune_inference_call": STALE,
        "keras_finetune_unfreeze_no_recompile": STALE,
        "keras_finetune_unfreeze_recompile": UPDATED,
        "contrib_batch_norm_updates_none": UNSUPPORTED,
        "contrib_batch_norm_no_dependency": UNSUPPORTED,
        "layers_batch_normalization_placeholder": UPDATED,
        "keras_gradient_tape_no_training": STALE,
        "keras_subclass_nested_training": UPDATED,
        "keras_train_on_batch": UPDATED,
        "keras_fit_mixed_float16": UPDATED,
        "keras_fit_mixed_bfloat16": UPDATED,
        "keras_bn_mirrored_plain": ("wrong", {"follows": "replica_mean", **F32}),
        "keras_bn_synchronized_true": ("updated", {"variance_correction": "biased", "follows": "batch", **F32}),
        "keras_bn_renorm": ("wrong", {"updates": "1.00", "variance_updates": "0.95", **F32}),
        "keras_bn_virtual_batch_size": ("wrong", {"follows": "alternate_samples", **F32}),
        "keras_bn_save_reload_fit": UPDATED,
        "keras_bn_momentum_zero": UPDATED,
    },
    "2.16.2": {
        "keras_bn_custom_estimator": UNSUPPORTED,
        "layers_bn_custom_estimator": UNSUPPORTED,
        "keras_bn_model_to_estimator": UNSUPPORTED,
        "layers_bn_session": UNSUPPORTED,
        "keras_bn_custom_estimator_fixed": UNSUPPORTED,
        "layers_bn_session_train_tower": UNSUPPORTED,
        "compat_v1_keras_bn_custom_estimator": UNSUPPORTED,
        "keras_bn_model_to_estimator_tf_optimizer": UNSUPPORTED,
        "keras_fit": UPDATED,
        "keras_gradient_tape": UPDATED,
        "keras_tf_function": UPDATED,
        "keras_bn_trainable_false": ("stale", {"forward_statistics": "moving", **F32}),
        "keras_fit_4d_variance": UPDATED,
        "keras_fit_4d_variance_unfused": UNSUPPORTED,
        "layers_bn_4d_variance": UNSUPPORTED,
        "layers_bn_4d_variance_unfused": UNSUPPORTED,
        # Keras 3.4.1 (TF 2.16's day): a synchronized BatchNormalization under MirroredStrategy fails to train
        "keras_bn_sync_mirrored": ERROR,
        "keras3_bn_fit": UPDATED,
        "keras_finetune_frozen_base": ("stale", {"forward_statistics": "moving", **F32}),
        "keras_finetune_inference_call": UPDATED,
        "keras_finetune_unfreeze_no_recompile": STALE,
        "keras_finetune_unfreeze_recompile": UPDATED,
        "contrib_batch_norm_updates_none": UNSUPPORTED,
        "contrib_batch_norm_no_dependency": UNSUPPORTED,
        "layers_batch_normalization_placeholder": UNSUPPORTED,
        "keras_gradient_tape_no_training": STALE,
        "keras_subclass_nested_training": STALE,  # Keras 3.4.1: training=True does not reach the nested layer
        "keras_train_on_batch": UPDATED,
        "keras_fit_mixed_float16": UPDATED,
        "keras_fit_mixed_bfloat16": UPDATED,
        "keras_bn_mirrored_plain": ("wrong", {"follows": "first_replica", **F32}),
        "keras_bn_synchronized_true": ERROR,
        "keras_bn_renorm": UNSUPPORTED,  # renorm left Keras 3 and came back after 3.4.1
        "keras_bn_virtual_batch_size": UNSUPPORTED,
        "keras_bn_save_reload_fit": UPDATED,
        "keras_bn_momentum_zero": UPDATED,
    },
    "2.16.2-jax": {
        "keras_fit": UPDATED,
        "keras_bn_trainable_false": ("stale", {"forward_statistics": "moving", **F32}),
        "keras_fit_4d_variance": UPDATED,
        "keras3_bn_fit": UPDATED,
        "keras_finetune_frozen_base": ("stale", {"forward_statistics": "moving", **F32}),
        "keras_finetune_inference_call": UPDATED,
        "keras_finetune_unfreeze_no_recompile": UNSUPPORTED,
        "keras_finetune_unfreeze_recompile": UPDATED,
        "keras_train_on_batch": UPDATED,
        "keras_fit_mixed_float16": UPDATED,
        "keras_fit_mixed_bfloat16": UPDATED,
        "keras_bn_renorm": UNSUPPORTED,
        "keras_bn_save_reload_fit": UPDATED,
        "keras_bn_momentum_zero": UPDATED,
    },
}


def closed_form(values: list[float], momentum: float, updates: float, unbiased: bool) -> tuple[float, float]:
    """The moving statistics after `updates` updates from (0, 1) on a constant batch of `values`, computed here
    again (not with verdict.py)."""
    mu = sum(values) / len(values)
    squares = sum((v - mu) ** 2 for v in values)
    sigma2 = squares / (len(values) - 1 if unbiased else len(values))
    decay = momentum ** updates
    return mu * (1 - decay), sigma2 + (1 - sigma2) * decay


def data_values(data: dict[str, Any]) -> list[float]:
    """A layer's data as values: given as values, or as {n, mean, variance_biased}: n values with those statistics."""
    if "values" in data:
        return [float(v) for v in data["values"]]
    n, mean, spread = int(data["n"]), float(data["mean"]), float(data["variance_biased"]) ** 0.5
    return [mean - spread, mean + spread] * (n // 2)  # n even: that mean, that biased variance


def check_scenario(tf: str, s: ScenarioResult) -> None:
    """One scenario's verdict and facets as EXPECTED says, and its numbers against the closed form, from its own
    reported data (or the alternative its statistics follow)."""
    status, facets = EXPECTED[tf][s.scenario]
    # forked from the cell's zygote, which imported TensorFlow once (a real import takes a second or more), as the
    # scenario's own timings show
    assert s.launch == "zygote", (s.scenario, s.launch)
    assert set(s.timings) == {"startup_s", "import_s", "train_s", "teardown_s"} and s.timings["import_s"] < 0.3, \
        (s.scenario, s.timings)
    assert (s.status.value, dict(s.finding.facets)) == (status, facets), (s.scenario, s.reason)
    if status == "unsupported":
        assert s.unsupported and s.unsupported["api"] in str(s.reason) and not s.verdicts, s.scenario
        return
    if status == "error":  # no verdict: what failed is said
        assert s.reason and not s.verdicts, s.scenario
        return
    assert s.observed is not None and s.judged is not None
    assert s.tf_version == tf.split("-")[0] and s.steps == STEPS
    layer, n = s.observed.layers[s.judged.name], s.numbers()
    momentum = s.observed.momentum
    if status == "stale":
        assert (n["moving_mean"], n["moving_variance"], n["effective_updates"]) == (0.0, 1.0, 0.0)
        return
    follows = facets.get("follows", "batch")
    data = layer["data"] if follows == "batch" else layer["alternatives"][follows]
    unbiased = facets.get("variance_correction") == "unbiased"
    assert momentum in (MOMENTUM, 0.0), s.scenario  # 0: each update replaced the statistics with the batch's
    if "updates" in facets:  # per step to the nearest 0.05 (two update ops racing give 200.07 to 200.58)
        assert n["effective_updates"] == pytest.approx(STEPS * float(facets["updates"]), abs=0.025 * STEPS)
    else:
        expected = closed_form(data_values(data), momentum, STEPS, unbiased)
        assert n["moving_mean"] == pytest.approx(expected[0], rel=1e-4), s.scenario
        if facets.get("variance_correction") or facets.get("follows", "batch") != "batch":
            assert n["moving_variance"] == pytest.approx(expected[1], rel=1e-4), s.scenario
    if s.scenario == "layers_bn_session":  # the report's second tower adds its own update ops
        # Its two update ops per step race on the shared variables: about 2.00x, not exactly (200.07 to 200.58).
        assert n["update_ops"] == 8 and n["effective_updates"] == pytest.approx(2 * STEPS, rel=0.01)
        assert set(s.observed.layers) == {"bn1", "bn2"} and list(s.verdicts) == ["bn1"]  # bn2 names no data
    if s.scenario == "layers_bn_session_train_tower":
        assert n["update_ops"] == 4
    if s.scenario in ("keras_bn_custom_estimator", "compat_v1_keras_bn_custom_estimator"):
        assert n["update_ops"] == 0
    if s.scenario == "keras_bn_sync_mirrored":
        extra = s.observed.extra
        # one value per replica where the variable is mirrored (Keras 2); Keras 3's variables hold one
        means = extra["moving_mean_per_replica"]
        assert extra["replicas"] == 2 and means and all(m == pytest.approx(means[0], rel=1e-5) for m in means)


def check_verdicts(cell: CellResult) -> None:
    """Every scenario the cell ran, from its numbers."""
    assert cell.status.value == "ran", cell.reason
    tf, python = cell.cell.tf, cell.cell.python
    key = tf + (f"-{cell.cell.variant}" if cell.cell.variant else "")
    assert set(cell.scenarios) <= set(EXPECTED[key]) and cell.scenarios
    for s in cell.scenarios.values():
        assert s.python is not None and s.python.startswith(python + "."), s.scenario
        check_scenario(key, s)


def run_cell(cell_id: str, python: str, results: Path, *options: str) -> CellResult:
    """One cell with the venv backend, as a user runs it."""
    from bnmatrix.cli import main
    from bnmatrix.host import find_interpreter
    from bnmatrix.store.reader import load_run

    interpreter, looked = find_interpreter(python)
    require(interpreter is not None, f"no Python {python} for {cell_id} (looked in {', '.join(looked)})")
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "venv", "--select", cell_id,
                 "--results", str(results), *options]) == 0
    (cell,) = load_run(results).cells
    return cell


@pytest.fixture(scope="session")
def venv_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, CellResult]]:
    """Both e2e cells with every scenario, through the venv backend: (results root, cell)."""
    runs = {}
    for cell_id, (_, python) in sorted(E2E_CELLS.items()):
        results = tmp_path_factory.mktemp("results")
        runs[cell_id] = (results, run_cell(cell_id, python, results))
    return runs


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


def reproduce_and_compare(results: Path, cell: CellResult, path: str = "") -> list[str]:
    """Run the reproduce command of every scenario of `cell` as results.json gives it (from `bnmatrix report` of
    `results`), in the folder of the run that holds the result, without bnmatrix on PATH; each must print the
    stored layers' moving statistics again (to 1e-6). `path`: folders to put first on PATH (the cell's Python).
    Returns the commands."""
    import json
    import subprocess

    from bnmatrix.report import write_report

    site = write_report(results, results.parent / f"{results.name}-site").parent
    exported = next(c for c in json.loads((site / "results.json").read_text())["cells"] if c["id"] == cell.id)
    commands = []
    for name, stored in cell.scenarios.items():
        command = exported["scenarios"][name]["reproduce"]
        assert command.startswith(f"# from {results.name}/{exported['run_id']}, the folder of run "), command
        scratch = results.parent / f"{results.name}-scratch"
        scratch.mkdir(exist_ok=True)
        environment = {"PATH": f"{path}:/usr/local/bin:/usr/bin:/bin" if path else "/usr/local/bin:/usr/bin:/bin",
                       "HOME": os.environ.get("HOME", "/root"), "TMPDIR": str(scratch)}
        done = subprocess.run(["bash", "-e", "-c", command], cwd=results / exported["run_id"], env=environment,
                              capture_output=True, text=True, timeout=1800)
        lines = [line for line in done.stdout.splitlines() if line.startswith("BNMATRIX_RESULT ")]
        assert done.returncode == 0 and lines, f"{name}: exit {done.returncode}\n{command}\n{done.stderr[-3000:]}"
        observed = json.loads(lines[-1].split(" ", 1)[1])["layers"]
        layers = stored.observed.layers if stored.observed else {}
        assert sorted(observed) == sorted(layers), name
        for layer, numbers in layers.items():
            for statistic in ("moving_mean", "moving_variance"):
                assert observed[layer][statistic] == pytest.approx(numbers[statistic], rel=1e-6, abs=1e-6), \
                    (name, layer, statistic)
        commands.append(command)
    return commands

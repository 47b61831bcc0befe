"""The host's verdict (verdict.py): observed statistics -> status and reason, from the numbers only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.config import PACKAGE_DIR, data_path
from bnmatrix.verdict import BatchData, CellStatus, Finding, Status, effective_updates, expected_statistics, judge

BATCH = BatchData.from_observation({"values": [0, 1, 2, 3]})


def observed(mean: float, variance: float, steps: int = 100, **layer: Any) -> dict[str, Any]:
    return {"steps": steps, "momentum": 0.99,
            "layers": {"bn": {"moving_mean": mean, "moving_variance": variance, "data": {"values": [0, 1, 2, 3]},
                              **layer}}}


def after(updates: float, correction: str = "biased") -> tuple[float, float]:
    return expected_statistics(BATCH, 0.99, updates, correction)


def test_the_batch_statistics_and_the_closed_form() -> None:
    assert (BATCH.mean, BATCH.variance_biased) == (1.5, 1.25)
    assert BATCH.variance_unbiased == pytest.approx(5 / 3)
    mean, variance = after(100)
    assert mean == pytest.approx(1.5 * (1 - 0.99**100))
    assert variance == pytest.approx(1.25 + (1 - 1.25) * 0.99**100)
    assert after(0) == (0.0, 1.0)


@pytest.mark.parametrize("steps", [1, 7, 100, 1000])
def test_effective_updates_inverts_the_closed_form(steps: int) -> None:
    assert effective_updates(after(steps)[0], BATCH, 0.99) == pytest.approx(steps, abs=1e-6)


def test_float32_numbers_of_real_tf_are_updated_and_name_the_variance() -> None:
    # TF 1.15.5, tf.layers BN, 100 steps (float32 variables).
    status, reason, layers = judge(observed(0.9509515762329102, 1.158491849899292))
    assert status is Status.UPDATED
    assert reason == ("matches the closed form for 100 updates (within 0.0001); moving variance follows the biased "
                      "batch variance (n)")
    verdict = layers["bn"]
    assert verdict.variance_correction == "biased"
    assert verdict.effective_updates == pytest.approx(100, abs=0.01)
    assert verdict.effective_updates_variance == pytest.approx(100, abs=0.01)


def test_the_unbiased_variance_of_a_fused_kernel_is_recognised() -> None:
    status, reason, layers = judge(observed(*after(100, "unbiased")))
    assert status is Status.UPDATED and layers["bn"].variance_correction == "unbiased"
    assert "follows the unbiased batch variance (n-1)" in reason
    assert layers["bn"].expected_moving_variance == pytest.approx(after(100, "unbiased")[1])


def test_initial_values_are_stale_with_no_variance_claimed() -> None:
    status, reason, layers = judge(observed(0.0, 1.0))
    assert status is Status.STALE and "initial values" in reason
    assert layers["bn"].variance_correction is None and layers["bn"].effective_updates == 0.0


def test_double_updates_are_wrong_and_say_how_many() -> None:
    status, reason, layers = judge(observed(*after(200)))
    assert status is Status.WRONG
    assert reason.startswith("moving mean: 200.00 effective updates for 100 steps (2.00x)")
    assert layers["bn"].variance_correction == "biased"


def test_partial_updates_are_wrong() -> None:
    status, reason, _ = judge(observed(*after(37)))
    assert status is Status.WRONG and "37.00 effective updates for 100 steps (0.37x)" in reason


def test_right_mean_with_a_variance_that_fits_nothing_is_wrong() -> None:
    status, reason, layers = judge(observed(after(100)[0], 1.42))
    assert status is Status.WRONG
    assert "moving mean fits 100 updates" in reason and "follows neither" in reason
    assert layers["bn"].variance_correction is None


def test_mean_and_variance_updated_a_different_number_of_times_say_both() -> None:
    status, reason, layers = judge(observed(after(100)[0], after(50)[1]))
    assert status is Status.WRONG
    assert layers["bn"].effective_updates == pytest.approx(100, abs=1e-3)
    assert layers["bn"].effective_updates_variance == pytest.approx(50, abs=1e-3)
    assert "50.00 effective updates for 100 steps (0.50x)" in reason


def test_a_mean_beyond_the_batch_mean_has_no_update_count() -> None:
    status, reason, layers = judge(observed(1.6, 1.2))
    assert status is Status.WRONG and "fits no number of updates" in reason
    assert layers["bn"].effective_updates is None


def test_one_update_off_is_not_updated() -> None:
    status, _, layers = judge(observed(*after(99)))
    assert status is Status.WRONG
    assert math.isclose(layers["bn"].effective_updates or 0, 99, abs_tol=1e-6)


def test_statistics_that_follow_another_batch_are_named() -> None:
    """Per-replica BN under MirroredStrategy: the average of the replicas' statistics, not the global batch."""
    replicas = {"n": 4, "mean": 3.5, "variance_biased": 1.25, "variance_unbiased": 5 / 3}
    global_batch = BatchData.from_observation({"values": list(range(8))})
    local = BatchData.from_observation(replicas)
    mean, variance = expected_statistics(local, 0.99, 100)
    layer = {"moving_mean": mean, "moving_variance": variance, "data": {"values": list(range(8))},
             "alternatives": {"the average of the per-replica batch statistics": replicas}}
    status, reason, _ = judge({"steps": 100, "momentum": 0.99, "layers": {"bn": layer}})
    assert status is Status.WRONG
    assert reason.startswith("the moving statistics follow the average of the per-replica batch statistics")
    synced = dict(layer, moving_mean=expected_statistics(global_batch, 0.99, 100)[0],
                  moving_variance=expected_statistics(global_batch, 0.99, 100)[1])
    assert judge({"steps": 100, "momentum": 0.99, "layers": {"bn": synced}})[0] is Status.UPDATED


@pytest.mark.parametrize(("used", "expected"), [("batch", "batch"), ("moving", "moving")])
def test_the_forward_pass_says_which_statistics_it_used(used: str, expected: str) -> None:
    mean, variance = (1.5, 1.25) if used == "batch" else (0.0, 1.0)
    inputs = [0.0, 1.0, 2.0, 3.0]
    outputs = [(x - mean) / math.sqrt(variance + 1e-3) for x in inputs]
    forward = {"inputs": inputs, "outputs": outputs, "epsilon": 1e-3, "gamma": 1.0, "beta": 0.0,
               "moving_mean": 0.0, "moving_variance": 1.0}
    status, reason, layers = judge(observed(0.0, 1.0, forward=forward))
    assert status is Status.STALE and layers["bn"].forward_statistics == expected
    assert reason.endswith(f"in training mode the forward pass used the {expected} statistics")


def test_layers_without_data_are_shown_not_judged_and_disagreeing_layers_are_wrong() -> None:
    observation = observed(*after(100))
    observation["layers"]["bn2"] = {"moving_mean": 0.3, "moving_variance": 0.9}
    assert judge(observation)[0] is Status.UPDATED
    observation["layers"]["bn2"]["data"] = {"values": [0, 1, 2, 3]}
    status, reason, _ = judge(observation)
    assert status is Status.WRONG and reason.startswith("bn: updated (") and "bn2: wrong (" in reason
    observation["layers"] = {"bn": {"moving_mean": 0.1, "moving_variance": 0.9}}
    assert judge(observation)[0] is Status.ERROR


def test_the_schemas_use_the_one_status_vocabulary() -> None:
    """Every schema that names statuses names exactly the enum's."""
    cell_schema = json.loads((PACKAGE_DIR / "result.schema.json").read_text())
    assert cell_schema["properties"]["status"]["enum"] == [s.value for s in CellStatus]
    assert cell_schema["$defs"]["scenario"]["properties"]["status"]["enum"] == Status.scenario_values()
    matrix_schema = json.loads(data_path("matrix.schema.json").read_text())
    assert matrix_schema["properties"]["expect"]["items"]["properties"]["status"]["enum"] == Status.scenario_values()
    export = json.loads((data_path("report") / "results.schema.json").read_text())
    scenario = export["properties"]["cells"]["items"]["properties"]["scenarios"]["additionalProperties"]
    assert scenario["properties"]["status"]["enum"] == [s.value for s in Status]
    assert export["properties"]["cells"]["items"]["properties"]["status"]["enum"] == [s.value for s in CellStatus]
    for status in Status:  # each carries its word, icon, colour and JUnit outcome
        assert status.word and status.icon and status.colour.startswith("#")
        assert status.junit in ("pass", "failure", "error", "skipped")
    assert len({s.icon for s in Status}) == len({s.colour for s in Status}) == len(Status)


def test_the_scenario_contract_schema_is_versioned(tmp_path: Path) -> None:
    schema = json.loads((PACKAGE_DIR / "scenario.schema.json").read_text())
    assert schema["properties"]["schema"]["const"] == "bnmatrix.scenario/2"


def test_numbers_of_another_momentum_say_which_momentum_they_fit() -> None:
    """A scenario whose layer used momentum 0.9 but reported the default 0.99: wrong, and the reason says the
    numbers fit 0.9."""
    mean, variance = 1.5 * (1 - 0.9 ** 100), 1.25 - 0.25 * 0.9 ** 100
    status, reason, layers = judge(observed(mean, variance))
    assert status is Status.WRONG
    assert "the numbers fit 100 updates with momentum 0.9 (biased variance), not the 0.99 the scenario reported" \
        in reason


def test_an_updated_verdict_says_every_step_even_when_momentum_to_the_steps_is_tiny() -> None:
    """With momentum 0.9 and 100 steps, 0.9**100 is 2.7e-5: float32 statistics then pin the count of updates only
    to a tenth or so, but they match the closed form for 100 updates within tolerance, which is what is shown."""
    from bnmatrix.store.records import Observed, ScenarioResult

    mean, variance = 1.5 * (1 - 0.9 ** 99.9), 1.25 - 0.25 * 0.9 ** 99.9  # what float32 arithmetic left
    result = ScenarioResult(scenario="s", status=Status.ERROR, reason=None, device="cpu", steps=100,
                            observed=Observed(momentum=0.9, layers={"bn": {
                                "moving_mean": mean, "moving_variance": variance,
                                "data": {"values": [0.0, 1.0, 2.0, 3.0]}}}))
    result.judge()
    assert result.judged is not None and result.judged.verdict.effective_updates == pytest.approx(99.9, abs=0.01)
    assert result.status is Status.UPDATED
    assert result.updates_text == "100/100"


def test_a_variance_correction_that_is_no_word_of_the_vocabulary_is_refused() -> None:
    assert BATCH.variance("unbiased") > BATCH.variance("biased")
    with pytest.raises(ValueError, match="variance correction 'unbiased '; expected one of biased, unbiased"):
        BATCH.variance("unbiased ")  # type: ignore[arg-type]  # a typo mypy catches; at run time it is refused too


def test_steps_that_did_not_run_are_told_apart_from_updates_that_were_skipped() -> None:
    """The train op ran 50 times for 100 requested steps, each run updating BN once: the verdict stays wrong (half the
    updates asked for), the reason says why; the same numbers without the count read as every other step."""
    half = observed(*after(50))
    counted = judge({**half, "steps_ran": 50})
    assert counted[0] is Status.WRONG
    assert counted[1].startswith("only 50 of the 100 requested training steps ran, and the statistics updated on each")
    assert judge(half)[1].startswith("moving mean: 50.00 effective updates for 100 steps (0.50x)")
    skipped = judge({**observed(*after(25)), "steps_ran": 50})  # 25 updates in 50 steps that ran: every other one
    assert skipped[0] is Status.WRONG and skipped[1].endswith("; 50 of the 100 requested training steps ran")


def finding(layer_observation: dict[str, Any], dtype: str | None = None, steps_ran: int | None = None) -> Finding:
    status, _, layers = judge({**layer_observation, "steps_ran": steps_ran})
    layer = {**layer_observation["layers"]["bn"], **({"dtype": dtype} if dtype else {})}
    return Finding.of(status, layers["bn"], layer_observation["steps"], steps_ran, layer)


def test_a_finding_holds_every_facet_and_a_facet_alone_is_a_change() -> None:
    """A change point compares the status and every facet: two stale verdicts whose forward pass used other
    statistics differ, and the difference is named; the usual values are left out of the short note only."""
    inputs = [0.0, 1.0, 2.0, 3.0]

    def forward(mean: float, variance: float) -> dict[str, Any]:
        return {"inputs": inputs, "outputs": [(x - mean) / math.sqrt(variance + 1e-3) for x in inputs],
                "epsilon": 1e-3, "moving_mean": 0.0, "moving_variance": 1.0}

    batch, moving = finding(observed(0.0, 1.0, forward=forward(1.5, 1.25))), finding(
        observed(0.0, 1.0, forward=forward(0.0, 1.0)))
    assert (batch.status, moving.status) == (Status.STALE, Status.STALE) and batch != moving
    assert batch.differences(moving) == ["forward_statistics changed from batch to moving"]
    assert (batch.text, moving.text) == ("stale (forward: batch)", "stale (forward: moving)")
    updated = finding(observed(*after(100)), dtype="float32")
    assert updated.text == "updated (biased variance)" and updated.note() == ""  # float32: no news, even in full
    unbiased = finding(observed(*after(100, "unbiased")), dtype="float32")
    assert unbiased.note() == "unbiased variance"
    assert updated.differences(unbiased) == ["variance_correction changed from biased to unbiased"]
    assert finding(observed(*after(100)), dtype="float16").differences(updated) == [
        "moving_dtype changed from float16 to float32"]
    double = finding(observed(*after(200)))
    assert double.text == "wrong (2.00×, biased variance)" and updated.versus(double) == ("updated", "wrong (2.00×)")
    assert updated.differences(double) == ["status changed from updated to wrong"]  # facets only one side shows: none
    ran = finding(observed(*after(50)), steps_ran=50)
    assert dict(ran.facets)["steps_ran"] == "50/100" and Finding.from_dict(ran.to_dict()) == ran
    # a result that did not observe a facet (no dtype reported, as before dtypes were) differs in no facet by it
    assert finding(observed(*after(100))) == updated and not finding(observed(*after(100))).differences(updated)
    assert finding(observed(*after(100)), dtype="float16") != updated
    with pytest.raises(ValueError, match="unknown facets colour"):
        Finding.from_dict({"status": "updated", "colour": "red"})


def test_which_data_the_statistics_follow_is_a_facet() -> None:
    replicas = {"n": 4, "mean": 3.5, "variance_biased": 1.25, "variance_unbiased": 5 / 3}
    layer = {"data": {"values": list(range(8))}, "alternatives": {"replica_mean": replicas}}
    local = expected_statistics(BatchData.from_observation(replicas), 0.99, 100)
    synced = expected_statistics(BatchData.from_observation({"values": list(range(8))}), 0.99, 100)
    follows = {}
    for name, (mean, variance) in (("local", local), ("synced", synced)):
        status, _, layers = judge({"steps": 100, "momentum": 0.99,
                                   "layers": {"bn": {**layer, "moving_mean": mean, "moving_variance": variance}}})
        follows[name] = Finding.of(status, layers["bn"], 100)
    assert dict(follows["local"].facets)["follows"] == "replica_mean" and follows["local"].status is Status.WRONG
    assert dict(follows["synced"].facets)["follows"] == "batch" and follows["synced"].note() == ""
    assert follows["local"].versus(follows["synced"]) == ("wrong (follows replica_mean)", "updated")


def test_momentum_zero_replaces_the_statistics_with_the_batchs() -> None:
    """With momentum 0 each update replaces the statistics: the batch's own (biased or unbiased variance) is updated,
    however many updates ran; (0, 1) is stale; anything else is wrong. No update count is claimed."""
    zero = {"steps": 100, "momentum": 0.0}
    layer = {"data": {"values": [0, 1, 2, 3]}}
    status, reason, layers = judge({**zero, "layers": {"bn": {**layer, "moving_mean": 1.5, "moving_variance": 1.25}}})
    assert status is Status.UPDATED and layers["bn"].variance_correction == "biased"
    assert layers["bn"].effective_updates is None and "cannot be told" in reason
    assert judge({**zero, "layers": {"bn": {**layer, "moving_mean": 1.5, "moving_variance": 5 / 3}}})[2][
        "bn"].variance_correction == "unbiased"
    assert judge({**zero, "layers": {"bn": {**layer, "moving_mean": 0.0, "moving_variance": 1.0}}})[0] is Status.STALE
    assert judge({**zero, "layers": {"bn": {**layer, "moving_mean": 0.75, "moving_variance": 1.1}}})[0] is Status.WRONG

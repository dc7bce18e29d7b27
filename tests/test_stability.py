"""Tests of lplr_tf.stability: progressive sharpening and catapults on synthetic rows."""

import pytest

from lplr_tf import analysis, stability

ETA = 0.5  # 2/η = 4


def rows_with(losses, sharpness):
    """Rows every 10 steps; `sharpness` maps step → β at the probes."""
    rows = []
    for index, loss in enumerate(losses):
        row = {"step": 10 * index, "loss": loss}
        if 10 * index in sharpness:
            row["sharpness"] = sharpness[10 * index]
        rows.append(row)
    return rows


def test_progressive_sharpening_start_and_reach():
    betas = [(0, 2.0), (10, 1.8), (20, 2.5), (30, 3.3), (40, 3.7), (50, 3.95)]
    result = stability.progressive_sharpening(betas, ETA)
    # Rises from its minimum 1.8 (step 10) and first reaches 0.9·2/η = 3.6 at step 40.
    assert result["detected"] is True
    assert (result["start_step"], result["reached_step"]) == (10, 40)
    assert (result["sharpness_start"], result["sharpness_reached"]) == (1.8, 3.7)
    assert result["threshold"] == pytest.approx(4.0)
    flat = stability.progressive_sharpening([(0, 3.7), (10, 3.75), (20, 3.8)], ETA)
    assert flat["detected"] is False  # near 2/η from the start: no rise
    low = stability.progressive_sharpening([(0, 1.0), (10, 2.0), (20, 3.0)], ETA)
    assert low["detected"] is False  # rising, but still below 0.9·2/η
    assert stability.progressive_sharpening([], ETA)["detected"] is None


def test_catapult_is_a_spike_that_returns_with_a_sharpness_drop():
    losses = [1.0, 0.5, 0.3, 2.0, 5.0, 1.0, 0.4, 0.2, 0.1]
    sharpness = {0: 5.0, 20: 5.5, 40: 4.6, 60: 3.0, 80: 2.9}
    spikes = stability.loss_spikes(
        [(10 * i, v) for i, v in enumerate(losses)], sorted(sharpness.items()), ETA
    )
    assert len(spikes) == 1
    spike = spikes[0]
    # Above 2 × 0.3 from step 30 to 50; back at or below 0.6 at step 60.
    assert (spike["spike_step"], spike["peak_step"], spike["return_step"]) == (30, 40, 60)
    assert spike["peak_loss"] == 5.0 and spike["level"] == pytest.approx(0.6)
    assert spike["sharpness_before"] == 5.5 and spike["sharpness_after"] == 3.0
    assert spike["sharpness_after_step"] == 60
    assert spike["catapult"] is True
    summary = analysis.summarize(rows_with(losses, sharpness), learning_rate=ETA)
    assert summary["sharpness"]["catapult_steps"] == [30]
    assert "catapult(s) at step 30" in summary["verdict"]


def test_spikes_that_are_not_catapults():
    losses = [1.0, 0.5, 0.3, 2.0, 1.0, 0.4, 0.2]
    # The sharpness does not drop after the spike: a loss spike, not a catapult.
    kept = stability.loss_spikes(
        [(10 * i, v) for i, v in enumerate(losses)], [(20, 3.0), (50, 2.9)], ETA
    )
    assert [s["catapult"] for s in kept] == [False]
    # A 5 % drop from above 2/η = 4 to below it is a catapult; the same drop below 2/η is not.
    crossing = stability.loss_spikes(
        [(10 * i, v) for i, v in enumerate(losses)], [(20, 4.1), (50, 3.9)], ETA
    )
    assert [s["catapult"] for s in crossing] == [True]
    below = stability.loss_spikes(
        [(10 * i, v) for i, v in enumerate(losses)], [(20, 3.9), (50, 3.7)], ETA
    )
    assert [s["catapult"] for s in below] == [False]
    # No probe before the spike: undecided.
    unknown = stability.loss_spikes([(10 * i, v) for i, v in enumerate(losses)], [(50, 1.0)], ETA)
    assert [s["catapult"] for s in unknown] == [None]
    # A spike that never comes back is a divergence, not a catapult.
    rising = stability.loss_spikes(
        [(10 * i, v) for i, v in enumerate([1.0, 0.5, 3.0, 9.0])], [(0, 5.0), (30, 1.0)], ETA
    )
    assert rising[0]["return_step"] is None and rising[0]["catapult"] is False
    # Small wiggles below twice the running minimum are no spike.
    assert stability.loss_spikes([(0, 1.0), (10, 0.5), (20, 0.9), (30, 0.4)], [], ETA) == []


def test_sharpness_section_flags_and_verdict():
    losses = [1.0 * 0.8**i for i in range(8)]
    sharpness = {0: 2.0, 20: 1.9, 40: 3.0, 60: 3.8}
    summary = analysis.summarize(rows_with(losses, sharpness), learning_rate=ETA)
    sharp = summary["sharpness"]
    assert sharp["max"] == 3.8 and sharp["eta_times_max"] == pytest.approx(1.9)
    assert sharp["step_size_ok"] is False and sharp["edge_of_stability"] is False
    assert sharp["progressive_sharpening"]["reached_step"] == 60
    assert sharp["kind"] == "measured" and sharp["loss_spikes"] == []
    assert "progressive sharpening from step 20 to 60" in summary["verdict"]

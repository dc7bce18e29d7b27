"""The shipped edge-of-stability config shows progressive sharpening and a catapult."""

import os
import re

from lplr_tf import gin_config, train

NAME = "digits_fc_edge_of_stability.gin"


def test_header_states_command_what_and_runtime():
    path = os.path.join(gin_config.shipped_configs_dir(), NAME)
    header = "\n".join(
        line for line in open(path, encoding="utf-8").read().splitlines() if line.startswith("#")
    )
    assert header.startswith("# Command")
    assert "# Shows:" in header and "Expected runtime" in header
    assert re.search(r"lplr-train --gin_file=" + re.escape(NAME), header)


def test_run_flags_progressive_sharpening_then_a_catapult(tmp_path):
    # The first 300 of the 1500 steps hold both events (the header gives the full story).
    summary = train.launch([NAME], ["protocol.gd.num_steps = 300"], str(tmp_path / "run"))
    sharp = summary["sharpness"]
    rise = sharp["progressive_sharpening"]
    assert rise["detected"] is True
    assert rise["sharpness_start"] < 0.9 * rise["threshold"] <= rise["sharpness_reached"]
    assert rise["threshold"] == 8.0  # 2/η with η = 0.25
    assert rise["start_step"] < rise["reached_step"] <= 200
    assert len(sharp["catapult_steps"]) == 1
    (spike,) = [s for s in sharp["loss_spikes"] if s["catapult"]]
    assert rise["reached_step"] < spike["spike_step"] < spike["return_step"] <= 300
    assert spike["sharpness_after"] < spike["sharpness_before"]
    assert sharp["edge_of_stability"] is True and sharp["step_size_ok"] is False
    assert "progressive sharpening from step" in summary["verdict"]
    assert f"catapult(s) at step {spike['spike_step']}" in summary["verdict"]

"""Protocols: schedules and validation messages."""

import pytest

from lplr_tf import protocol
from lplr_tf.rundir import RunDirectory


def test_gd_logs_step_zero_interval_and_last():
    plan = protocol.gd(num_steps=25, log_every=10)
    schedule = plan.schedule()
    assert [s for s in range(26) if schedule.is_log_step(s)] == [0, 10, 20, 25]
    assert plan.full_batch and plan.probe_every == 10
    # Steps reported several at a time: the first step at or past each due step logs.
    assert [schedule.next_log_step(s) for s in (0, 9, 10, 23)] == [10, 10, 20, 25]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: protocol.gd(log_every=0), r"protocol.gd.log_every = 0; expected an integer >= 1"),
        (
            lambda: protocol.gd(learning_rate=-1.0),
            r"protocol.gd.learning_rate = -1.0; expected a finite positive number",
        ),
        (
            lambda: protocol.gd(learning_rate="fast"),
            r"learning_rate = 'fast'; expected a finite positive number",
        ),
        (lambda: protocol.gd(num_steps=0), r"protocol.gd.num_steps = 0"),
        (
            lambda: protocol.sgd(batch_size=2.5),
            r"protocol.sgd.batch_size = 2.5; expected an integer",
        ),
    ],
)
def test_bad_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_impossible_combinations_are_named():
    with pytest.raises(ValueError, match=r"batch_size = 500; expected 1 <= batch_size <= n = 100"):
        protocol.sgd(batch_size=500).validate(100)
    with pytest.raises(ValueError, match=r"protocol.gd.probe_every = 15; expected a positive mul"):
        protocol.gd(log_every=10, probe_every=15)


def test_sgd_learning_rate_schedule_is_applied(tmp_path):
    from lplr_tf import train

    # Step 0 uses 0.5, every later step 0: the weights move once, then never again.
    train.launch(
        ["digits_fc_gd.gin", "smoke.gin"],
        [
            "experiment.run.protocol = @protocol.sgd",
            "protocol.sgd.learning_rate_schedule = @keras.schedules.PiecewiseConstantDecay()",
            "keras.schedules.PiecewiseConstantDecay.boundaries = [0]",
            "keras.schedules.PiecewiseConstantDecay.values = [0.5, 0.0]",
        ],
        str(tmp_path),
    )
    drifts = [row["drift"] for row in RunDirectory(tmp_path).read_metrics()]
    assert drifts[0] == 0.0 and drifts[1] > 0.0
    assert drifts[1] == drifts[2] == drifts[3]

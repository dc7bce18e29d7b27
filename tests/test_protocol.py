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


def test_geometric_probes_are_dense_early_and_sparse_late():
    schedule = protocol.gd(
        num_steps=10_000, log_every=10, probe_every=50, probe_growth=1.5
    ).schedule()
    probes = [step for step in range(0, 10_001, 10) if schedule.is_probe_step(step)]
    # After a probe at p the next is at p + max(50, 0.5·p), rounded up to a logged step.
    expected = [0]
    while expected[-1] < 10_000:
        gap = max(50, 0.5 * expected[-1])
        expected.append(min(10_000, int(-(-(expected[-1] + gap) // 10) * 10)))
    assert probes == expected
    assert len(probes) == 15  # O(log T) probes instead of 10_000 / 50 = 200
    # Steps reported several at a time: the next probe after any step is the sequence's.
    assert schedule.next_probe_step(240) == 350 and schedule.next_probe_step(230) == 350
    with pytest.raises(ValueError, match="protocol.gd.probe_growth = 1.0"):
        protocol.gd(probe_growth=1.0)

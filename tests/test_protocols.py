"""Protocols: schedules and validation messages."""

import pytest

from lplr_tf import protocols


def test_gd_logs_step_zero_interval_and_last():
    protocol = protocols.gd(num_steps=25, log_every=10)
    assert [s for s in range(26) if protocol.is_log_step(s)] == [0, 10, 20, 25]
    assert protocol.full_batch and protocol.probe_every == 10


@pytest.mark.parametrize(
    "protocol, message",
    [
        (protocols.sgd(batch_size=500), r"batch_size = 500; expected 1 <= batch_size <= n = 100"),
        (protocols.gd(log_every=0), r"log_every = 0; expected >= 1"),
        (protocols.gd(log_every=10, probe_every=15), r"probe_every = 15; expected a positive multiple"),
        (protocols.gd(learning_rate=-1.0), r"learning_rate = -1.0"),
        (protocols.gd(num_steps=0), r"num_steps = 0"),
    ],
)
def test_impossible_settings_are_named(protocol, message):
    with pytest.raises(ValueError, match=message):
        protocol.validate(100)

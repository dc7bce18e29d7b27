"""Bad input gets one clear message, a diverging run ends with a status, nothing breaks a resume."""

import os

import pytest
from absl import flags

from lplr_tf import errors, experiment, protocol, train
from lplr_tf.data import digits
from lplr_tf.models.fc import build_model
from lplr_tf.rundir import RunDirectory


@pytest.mark.parametrize(
    "bindings, message",
    [
        (["fc.build_model.width = 'wide'"], r"fc.build_model.width = 'wide'; expected an integer"),
        (["protocol.gd.log_every = 0"], r"protocol.gd.log_every = 0; expected an integer >= 1"),
        (
            [
                "experiment.run.protocol = @protocol.sgd",
                "protocol.sgd.batch_size = 500",
                "data.digits.n = 64",
            ],
            r"protocol.sgd.batch_size = 500; expected 1 <= batch_size <= n = 64",
        ),
        (
            [
                "experiment.run.dataset = @data.mnist",
                "data.mnist.source = 'tfds'",
                "data.mnist.data_dir = '/nonexistent/tfds'",
            ],
            r"(?s)mnist.*/nonexistent/tfds.*download_and_prepare",
        ),
        (
            ["experiment.run.checkpoint_every = 15"],
            r"checkpoint_every = 15; expected a positive multiple",
        ),
    ],
)
def test_bad_settings_fail_with_one_message_and_leave_nothing_to_resume(
    bindings, message, tmp_path
):
    with pytest.raises(ValueError, match=message):
        train.launch(["digits_fc_gd.gin"], bindings, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")
    assert not os.path.exists(tmp_path / "metrics.jsonl")
    # The corrected command then runs on the same workdir.
    summary = train.launch(["digits_fc_gd.gin", "smoke.gin"], [], str(tmp_path))
    assert summary["steps"] == 12


def test_unwritable_workdir_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=rf"--workdir={blocker}/run is not writable"):
        train.launch(["digits_fc_gd.gin"], [], str(blocker / "run"))


def test_model_output_that_does_not_match_the_targets_is_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"model's output dimension is 3 but the data .* dimension 1"
    ):
        experiment.run(
            str(tmp_path),
            dataset=lambda: digits(n=16),
            model=lambda input_shape, output_dim: build_model(input_shape, 3, width=8),
            protocol=lambda: protocol.gd(num_steps=2),
        )


def test_huge_step_ends_diverged_with_summary_plots_and_exit_code_3(tmp_path):
    flags.FLAGS(
        [
            "lplr-train",
            "--gin_file=digits_fc_gd.gin",
            "--gin_file=smoke.gin",
            f"--workdir={tmp_path}",
            "--gin_bindings=protocol.gd.learning_rate = 1000.0",
        ]
    )
    try:
        assert train.main(["lplr-train"]) == errors.EXIT_DIVERGED
    finally:
        flags.FLAGS.unparse_flags()

    summary = RunDirectory(tmp_path).read_summary()
    assert summary["status"] == "diverged"
    assert summary["status_step"] == RunDirectory(tmp_path).read_metrics()[-1]["step"] < 12
    assert summary["final_loss"] is not None  # the last finite loss
    assert os.path.getsize(tmp_path / "plots" / "convergence.png") > 0

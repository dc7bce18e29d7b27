"""Bad input gets one clear message, a diverging run ends with a status, nothing breaks a resume."""

import os
import re

import gin
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


def _main(workdir, bindings, files=("digits_fc_gd.gin", "smoke.gin")):
    flags.FLAGS(
        ["lplr-train", f"--workdir={workdir}"]
        + [f"--gin_file={name}" for name in files]
        + [f"--gin_bindings={binding}" for binding in bindings]
    )
    try:
        return train.main(["lplr-train"])
    finally:
        flags.FLAGS.unparse_flags()


RESNET = ["experiment.run.model = @resnet.build_model", "data.digits.image = True"]
SGD = ["experiment.run.protocol = @protocol.sgd"]


@pytest.mark.parametrize(
    "bindings, message",
    [
        (["analysis.Settings.tolerance = -1"], r"tolerance = -1; expected a finite number >= 0"),
        (["analysis.Settings.tolerance = 10.0"], r"would count as converged before training"),
        (["analysis.Settings.l_star = 10.0"], r"l_star = 10.0 is above the loss at initial"),
        (["analysis.Settings.l_star = 1e999"], r"l_star = inf; expected a finite number"),
        (["analysis.Settings.loss_bound = -1"], r"loss_bound = -1; expected a finite number > 0"),
        (["analysis.Settings.loss_bound = 0.01"], r"loss_bound = 0.01 is not above the loss at"),
        (["analysis.Settings.kernel_drift_bound = 0"], r"kernel_drift_bound = 0; expected a fin"),
        (["analysis.Settings.fit_window = (500, 10)"], r"expected first_step <= last_step"),
        (["analysis.Settings.fit_window = ('a', 3)"], r"fit_window = \('a', 3\); expected \(fir"),
        (["diagnostics.ProbeSettings.measure_ntk = 'no'"], r"measure_ntk = 'no'; expected True"),
        (["diagnostics.ProbeSettings.ntk_output_mode = 'bogus'"], r"'bogus'; expected one of"),
        (["experiment.run.stop_on_convergence = 'yes'"], r"convergence = 'yes'; expected True"),
        (["protocol.gd.learning_rate = 1e999"], r"learning_rate = inf; expected a finite pos"),
        (["fc.build_model.weight_std = 1e999"], r"weight_std = inf; expected a finite number"),
        (["fc.build_model.bias_std = -1.0"], r"bias_std = -1.0; expected a finite number >= 0"),
        (["numerics.seed = -1"], r"numerics.seed = -1; expected an integer >= 0"),
        (["numerics.allow_tf32 = 'no'"], r"allow_tf32 = 'no'; expected True or False"),
        (
            ["experiment.run.dataset = @protocol.gd"],
            r"dataset = @lplr_tf.protocol.gd returned a Protocol; expected a lplr_tf.data.Data",
        ),
        (
            ["experiment.run.dataset = @data.digits()"],
            r"dataset = Dataset\(name='digits.{50,}\.\.\. is not callable",
        ),
        (
            ["experiment.run.probe_settings = @diagnostics.ProbeSettings"],
            r"expected a lplr_tf.diagnostics.ProbeSettings instance. Bind it with parentheses",
        ),
        (
            SGD + ["protocol.sgd.learning_rate_schedule = @keras.schedules.CosineDecay"],
            r"learning_rate_schedule = <class .*CosineDecay'>; expected a Keras Learning",
        ),
        (RESNET + ["resnet.build_model.batch_norm_momentum = 1.0"], r"in \[0, 1\)"),
        (RESNET + ["resnet.build_model.weight_std = -1.0"], r"weight_std = -1.0; expected a"),
    ],
)
def test_bad_setting_exits_2_with_one_message_before_anything_is_written(
    bindings, message, tmp_path, caplog
):
    assert _main(tmp_path, bindings) == errors.EXIT_CONFIG_ERROR
    errors_logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors_logged) == 1 and re.search(message, errors_logged[0]), errors_logged
    assert "In call to configurable" not in errors_logged[0]
    assert set(os.listdir(tmp_path)) <= {"config.gin"}  # no metrics, checkpoint, lock


@pytest.mark.parametrize(
    "gin_text, bindings, message",
    [
        ("include 'nope.gin'\n", [], r"Unable to open file: nope.gin"),
        ("import no_such_module_xyz\n", [], r"No module named 'no_such_module_xyz'"),
        (
            "from __gin__ import dynamic_registration\nimport math\n"
            "fc.build_model.weight_std = @mth.sqrt()\n",
            [],
            r"'mth' was not provided by an import statement",
        ),
        (
            "include 'base.gin'\nexperiment.run.model = @fc.build_model\n"
            "experiment.run.protocol = @protocol.gd\n",
            [],
            r"Required bindings for `run` not provided in config: \['dataset'\]",
        ),
        (
            "",
            SGD + ["protocol.sgd.learning_rate_schedule = @keras.schedules.CosineDecay()"],
            r"missing 2 required positional arguments: 'initial_learning_rate' and 'decay_steps"
            r"' \(calling configurable 'CosineDecay'\)",
        ),
        (
            "",
            ["experiment.run.model = @data.digits"],
            r"digits\(\) got an unexpected keyword argument 'input_shape'",
        ),
        (
            "",
            ["experiment.run.model = @bad_input_test.model_with_an_extra_argument"],
            r"missing 1 required positional argument: 'depth_of_field'",
        ),
    ],
    ids=[
        "include",
        "import",
        "name",
        "required",
        "schedule arguments",
        "wrong kind",
        "extra argument",
    ],
)
def test_gin_errors_exit_2_with_one_message(gin_text, bindings, message, tmp_path, caplog):
    files = ["digits_fc_gd.gin", "smoke.gin"]
    if gin_text:
        (tmp_path / "mine.gin").write_text(gin_text)
        files = [str(tmp_path / "mine.gin")]
    assert _main(tmp_path / "run", bindings, files) == errors.EXIT_CONFIG_ERROR
    errors_logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors_logged) == 1 and re.search(message, errors_logged[0]), errors_logged
    assert "Traceback" not in caplog.text


@gin.configurable(module="bad_input_test")
def model_with_an_extra_argument(input_shape, output_dim, depth_of_field):
    return build_model(input_shape, output_dim, width=depth_of_field)


def test_positional_argument_and_unknown_flag_exit_2(capsys, caplog):
    assert train.main(["lplr-train", "digits_fc_gd.gin"]) == errors.EXIT_CONFIG_ERROR
    assert "Did you mean --gin_file=digits_fc_gd.gin?" in caplog.text
    with pytest.raises(SystemExit) as exit_:
        train._parse_flags(["lplr-train", "--gin_fil=digits_fc_gd.gin"])
    assert exit_.value.code == errors.EXIT_CONFIG_ERROR
    assert "Unknown command line flag 'gin_fil'. Did you mean: gin_file" in capsys.readouterr().err

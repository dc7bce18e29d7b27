"""Writes the metric history: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

metrics.jsonl is the source of truth that the analysis reads back and a resume rebuilds the
history from. Every line is flushed as it is written, and `sync` forces it to disk
(`os.fsync`): the launcher syncs before each checkpoint, so a checkpoint is never on disk
without the rows it covers. A crash loses at most the line being written (the reader skips a
truncated last line). Non-finite numbers are written as null: JSON has no NaN.

TensorBoard tags are grouped by what they measure (`TENSORBOARD_TAGS`): `loss/train`,
`loss/probe`, `ntk/lambda_min`, `drift/param`, `drift/kernel`, ...; the NTK spectrum is the
histogram `ntk/spectrum`, the operative gin config the text `config/operative`, and a run's
gin parameters its HParams.
"""

import os

import gin
import numpy as np
import tensorflow as tf

from lplr_tf.rundir import RunDirectory
from lplr_tf.values import json_safe

# Row key -> TensorBoard tag. Keys not listed keep their name.
TENSORBOARD_TAGS = {
    "loss": "loss/train",
    "probe_loss": "loss/probe",
    "loss_linearized": "loss/linearized",
    "grad_norm_sq": "gradient/norm_sq",
    "pl_ratio": "pl/ratio",
    "drift": "drift/param",
    "relative_drift": "drift/param_relative",
    "kernel_drift": "drift/kernel",
    "kernel_drift_op": "drift/kernel_op",
    "linearized_deviation": "drift/linearized_deviation",
    "ntk_lambda_min": "ntk/lambda_min",
    "ntk_lambda_max": "ntk/lambda_max",
    "ntk_trace": "ntk/trace",
    "ntk_condition": "ntk/condition",
    "sharpness": "sharpness/hessian",
    "gn_sharpness": "sharpness/gauss_newton",
    "wall_time": "time/wall_seconds",
}
SPECTRUM_TAG = "ntk/spectrum"
OPERATIVE_CONFIG_TAG = "config/operative"


class MetricWriter:
    """Writes metric rows as JSON lines and as TensorBoard scalars; either sink is optional.

    The launcher writes `workdir/metrics.jsonl` and `workdir/tb/` (`for_run`); the Keras
    callback writes wherever its user asks.

    Args:
      metrics_path: The JSON-lines file, or None. It is first replaced, atomically and
        durably, by exactly `kept_rows`: after a resume, rows logged past the restored
        checkpoint by a crashed process are dropped, so every step appears once.
      logdir: The TensorBoard event directory, or None.
      kept_rows: The rows logged before a resume (up to the restored checkpoint).
    """

    def __init__(self, metrics_path=None, logdir=None, kept_rows=()):
        self.metrics_path = metrics_path
        self._file = None
        self._summary_writer = None
        self._scalar_functions = {}  # {tags: compiled writer of those scalars}
        if metrics_path:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
            temporary = metrics_path + ".tmp"
            with open(temporary, "w", encoding="utf-8") as file:
                file.writelines(RunDirectory.format_row(r) for r in kept_rows)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, metrics_path)
            self._file = open(metrics_path, "a", encoding="utf-8")
        if logdir:
            self._summary_writer = tf.summary.create_file_writer(os.fspath(logdir))

    @classmethod
    def for_run(cls, run_dir, kept_rows=()):
        """The launcher's sinks: the run directory's metrics.jsonl and tb/."""
        return cls(run_dir.metrics, run_dir.tensorboard, kept_rows)

    def write(self, row, eigenvalues=None):
        """Writes one row (a dict with an int `step`), and the NTK eigenvalues if given."""
        row = json_safe(row)
        if self._file is not None:
            self._file.write(RunDirectory.format_row(row))
            self._file.flush()
        if self._summary_writer is None:
            return
        scalars = {
            TENSORBOARD_TAGS.get(key, key): value
            for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        with np.errstate(over="ignore"):  # float32: a finite float64 beyond its range is inf
            values = np.asarray(list(scalars.values()), np.float32)
        self._scalars(tuple(scalars))(tf.constant(values), tf.constant(row["step"], tf.int64))
        if eigenvalues is not None:
            with self._summary_writer.as_default(step=row["step"]):
                tf.summary.histogram(SPECTRUM_TAG, np.asarray(eigenvalues, np.float64))

    def _scalars(self, tags):
        """One compiled function per set of tags writing a row's scalars: ~20 eager
        `tf.summary.scalar` calls cost ~15 ms a probe row on a CPU, one call ~1 ms."""
        if tags not in self._scalar_functions:
            writer = self._summary_writer

            def write(values, step):
                with writer.as_default(step=step):
                    for index, tag in enumerate(tags):
                        tf.summary.scalar(tag, values[index])

            self._scalar_functions[tags] = tf.function(write)
        return self._scalar_functions[tags]

    def sync(self):
        """Forces every row written so far to disk (before a checkpoint that covers them)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._summary_writer is not None:
            self._summary_writer.flush()

    def write_text(self, name, text, step=0):
        """Writes text (e.g. the operative gin config) shown in TensorBoard's Text tab."""
        if self._summary_writer is None:
            return
        with self._summary_writer.as_default(step=step):
            # Markdown: indent by four spaces so gin files render as code.
            tf.summary.text(name, "    " + text.replace("\n", "\n    "))

    def write_hparams(self, hparams, trial_id=None):
        """Writes the run's hyperparameters for TensorBoard's HParams tab.

        Args:
          hparams: {name: value} with bool, int, float or str values (others are shown as
            their str).
          trial_id: The run's name in the HParams table.
        """
        if self._summary_writer is None or not hparams:
            return
        from tensorboard.plugins.hparams import api as hp

        values = {
            name: value if isinstance(value, (bool, int, float, str)) else str(value)
            for name, value in hparams.items()
        }
        with self._summary_writer.as_default(step=0):
            hp.hparams(values, trial_id=trial_id)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._summary_writer is not None:
            self._summary_writer.flush()
            self._summary_writer.close()
            self._summary_writer = None


def gin_hparams(operative_config):
    """A launcher run's HParams: {gin parameter: value} of its operative config's scalars.

    Args:
      operative_config: The text of `gin.operative_config_str()`.

    Returns:
      {"fc.build_model.width": 1024, "protocol.gd.learning_rate": 2.5, ...}: every bool,
      int, float or str parameter (tuples of those as their str), named as it is bound.
    """

    hparams = {}
    parser = gin.config_parser.ConfigParser(
        operative_config, gin.config.ParserDelegate(skip_unknown=True)
    )
    for statement in parser:
        value = getattr(statement, "value", None)
        if not isinstance(statement, gin.config_parser.BindingStatement) or value is None:
            continue
        if isinstance(value, (tuple, list)) and all(
            isinstance(item, (bool, int, float, str)) for item in value
        ):
            value = str(tuple(value))
        if isinstance(value, (bool, int, float, str)):
            scope = f"{statement.scope}/" if statement.scope else ""
            hparams[f"{scope}{_full_selector(statement.selector)}.{statement.arg_name}"] = value
    return hparams


def _full_selector(selector):
    """'gd' -> 'protocol.gd': the operative config names configurables by minimal selectors."""
    try:
        # gin has no public lookup of a registered configurable (pinned gin-config 0.5.0).
        configurable = gin.config._REGISTRY.get_match(selector)
    except KeyError:  # ambiguous
        return selector
    if configurable is None:
        return selector
    if configurable.module == getattr(configurable.wrapped, "__module__", None):
        return configurable.name  # registered without a gin module: bound by its name
    return configurable.selector

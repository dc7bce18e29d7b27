"""The one configurable entry point: wires data, model, protocol, trainer, probes and analysis.

Flow (DESIGN.md §2): numerics -> distribute -> data -> model -> protocol -> trainer ->
probes -> metric writer -> analysis. This is the only module that knows all the parts; the
parts below it know nothing of gin files or of each other's internals.

A run is resumable: the same call on the same workdir restores the newest readable
checkpoint, keeps the metrics logged up to it, and continues; a finished run (summary.json
with a final status) returns its summary without training again.
"""

import signal
import threading
import time

import gin
import numpy as np
import tensorflow as tf
from absl import logging

# Importing configurables, data, models and protocols registers their gin configurables.
from lplr_tf import analysis, configurables, data, models, plots, protocols, validation  # noqa: F401
from lplr_tf.checkpointing import RunCheckpoint, RunLock
from lplr_tf.diagnostics import Diagnostics
from lplr_tf.distribute import is_chief, is_multi_worker, make_strategy
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.models.batch_norm import calibrate_batch_norm
from lplr_tf.numerics import make_numerics
from lplr_tf.rundir import RunDirectory
from lplr_tf.trainer import Interrupted, ProgressReporter, build_trainer, train


def _check_model_matches_data(network, dataset):
    output_dim = network.output_shape[-1]
    if output_dim != dataset.output_dim:
        raise ValueError(
            f"The model's output dimension is {output_dim} but the data {dataset.name} has "
            f"targets of dimension {dataset.output_dim}. Build the model with "
            "output_dim = dataset.output_dim (model builders receive it from the experiment)."
        )


def _probe_subset(dataset, protocol):
    """The probe set: the full training set for GD, a fixed seeded subset for SGD."""
    if protocol.full_batch or protocol.probe_size is None:
        return dataset.x, dataset.y
    size = min(protocol.probe_size, dataset.n)
    index = np.sort(np.random.default_rng(protocol.seed).permutation(dataset.n)[:size])
    return dataset.x[index], dataset.y[index]


def _batches(dataset, protocol):
    """An endless tf.data pipeline of global training batches."""
    if protocol.full_batch:
        pipeline = tf.data.Dataset.from_tensor_slices((dataset.x, dataset.y)).batch(dataset.n)
        return pipeline.cache().repeat()
    return data.batch_pipeline(dataset, protocol.batch_size, seed=protocol.seed).repeat()


def _own_run_dir(workdir, strategy):
    """The chief writes `workdir`; other workers of a cluster write workdir/workers/<task>."""
    run_dir = RunDirectory(workdir)
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    return run_dir.worker(resolver.task_type, resolver.task_id)


class _TerminationFlag:
    """Records SIGTERM (preemption) while installed, so the loop can checkpoint and stop.

    With several workers, `agreed()` all-reduces the flag every step so that every worker
    stops (and checkpoints) at the same step when any of them was signalled.
    """

    def __init__(self, strategy):
        self.received = False
        self._previous = None
        self._strategy = strategy
        self._multi_worker = is_multi_worker(strategy)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self):
        """Whether this process, or with several workers any worker, received SIGTERM."""
        if not self._multi_worker:
            return self.received
        local = tf.constant(float(self.received))
        flags = self._strategy.run(lambda: tf.identity(local))
        return bool(self._strategy.reduce("SUM", flags, axis=None) > 0)


@gin.configurable(module="experiment", denylist=["workdir"])
def run(
    workdir,
    dataset=gin.REQUIRED,
    model=gin.REQUIRED,
    protocol=gin.REQUIRED,
    l_star=0.0,
    tolerance=1e-6,
    loss_bound=None,
    stop_on_convergence=True,
    measure_ntk=True,
    ntk_output_mode="full",
    measure_sharpness=True,
    fit_window=None,
    kernel_drift_bound=0.5,
    checkpoint_every=None,
):
    """Trains one configuration and writes the run directory (DESIGN.md §3).

    Args:
      workdir: The run directory; created if needed. Re-running on it resumes.
      dataset: A data loader called with no arguments, e.g. `@data.digits`.
      model: A model builder called as model(input_shape=..., output_dim=...), e.g.
        `@fc.build_model`.
      protocol: A protocol factory called with no arguments, `@protocol.gd` or `@protocol.sgd`.
      l_star: L*, the optimal loss the PL ratio and the rate fit refer to (0: interpolation).
      tolerance: The run is `converged` once L - L* <= tolerance.
      loss_bound: A loss above this ends the run as `diverged` (default: the analysis'
        default, a factor 1e6 above the initial loss). NaN/Inf always diverge.
      stop_on_convergence: Stop training at convergence instead of running num_steps.
      measure_ntk: Probe the NTK spectrum and kernel drift (and the linearized prediction).
      ntk_output_mode: "full" (the nO x nO kernel of the PL theory) or "trace".
      measure_sharpness: Probe lambda_max of the loss Hessian.
      fit_window: (first_step, last_step) of the rate fit; None finds it automatically.
      kernel_drift_bound: The largest kernel drift that still counts as the local regime.
      checkpoint_every: Steps between checkpoints, a multiple of the log interval (default:
        the probe interval). A checkpoint is also written at step 0, at the end, and on
        SIGTERM.

    Returns:
      The summary dict also written to workdir/summary.json.

    Raises:
      ValueError: a bad setting (named, with the fix), or the workdir is in use.
      trainer.Interrupted: SIGTERM was received; a checkpoint was written.
    """
    numerics = make_numerics()
    numerics.apply()
    strategy = make_strategy()
    training_set = dataset()
    schedule = protocol()
    schedule.validate(training_set.n)
    checkpoint_every = validation.integer(
        "experiment.run.checkpoint_every", checkpoint_every or schedule.probe_every, 1
    )
    if checkpoint_every % schedule.log_every:
        raise ValueError(
            f"experiment.run.checkpoint_every = {checkpoint_every}; expected a positive multiple "
            f"of the log interval {schedule.log_every}."
        )
    x_probe, y_probe = _probe_subset(training_set, schedule)
    log_steps = [s for s in range(schedule.num_steps + 1) if schedule.is_log_step(s)]
    with strategy.scope():
        network = model(input_shape=training_set.input_shape, output_dim=training_set.output_dim)
        _check_model_matches_data(network, training_set)
        calibrate_batch_norm(network, tf.constant(x_probe))  # a restored checkpoint overrides
        trainer = build_trainer(
            network, schedule.learning_rate, numerics.jit_compile, schedule.learning_rate_schedule
        )
        loss_set = (
            {}
            if x_probe is training_set.x
            else {  # SGD: the loss on the full set
                "x_loss": tf.constant(training_set.x),
                "y_loss": tf.constant(training_set.y),
            }
        )
        diagnostics = Diagnostics(
            network,
            tf.constant(x_probe),
            tf.constant(y_probe),
            **loss_set,
            l_star=l_star,
            measure_ntk=measure_ntk,
            ntk_output_mode=ntk_output_mode,
            measure_sharpness=measure_sharpness,
            linearized_learning_rate=schedule.learning_rate if schedule.full_batch else None,
            linearized_steps=log_steps,
            jit_compile=numerics.jit_compile,
        )
        batches = iter(strategy.experimental_distribute_dataset(_batches(training_set, schedule)))
    logging.info(
        "Data %s: n = %d, input %s, %d output(s). Model %s: %d parameters. %s. %d replica(s).",
        training_set.name,
        training_set.n,
        training_set.input_shape,
        training_set.output_dim,
        network.name,
        network.count_params(),
        schedule,
        strategy.num_replicas_in_sync,
    )

    run_dir = _own_run_dir(workdir, strategy).create()
    settings = analysis.Settings(
        l_star=l_star,
        tolerance=tolerance,
        loss_bound=loss_bound,
        fit_window=fit_window,
        kernel_drift_bound=kernel_drift_bound,
    )
    with RunLock(run_dir):
        finished = run_dir.read_summary()
        if finished and finished.get("status") in analysis.FINAL_STATUSES:
            logging.info(
                "%s already finished (%s); nothing to do.", run_dir.path, finished["status"]
            )
            return finished
        checkpoint = RunCheckpoint(
            run_dir.checkpoints,
            network=network,
            optimizer=trainer.optimizer,
            **({} if schedule.full_batch else {"iterator": batches}),
            **diagnostics.checkpoint_state(),
        )
        start_step = checkpoint.restore()
        rows = []
        if start_step is not None:
            diagnostics.restore_state()
            rows = [r for r in run_dir.read_metrics() if r["step"] <= start_step]
        operative_config = gin.operative_config_str()
        run_dir.write_operative_config(operative_config)
        writer = MetricWriter.for_run(run_dir, rows)
        writer.write_text("operative_config", operative_config)
        progress = ProgressReporter(schedule.num_steps, l_star)
        elapsed_before = (rows[-1].get("wall_time") or 0.0) if rows else 0.0
        start_time = time.monotonic() - elapsed_before

        def on_log(step):
            row = diagnostics.measure(step, probe=schedule.is_probe_step(step))
            row["wall_time"] = time.monotonic() - start_time
            rows.append(row)
            probed = "ntk_lambda_min" in row
            writer.write(row, diagnostics.spectrum.eigenvalues if probed else None)
            stop = _should_stop(row, rows[0]["loss"], l_star, tolerance, loss_bound)
            stop = stop == "diverged" or (stop == "converged" and stop_on_convergence)
            if stop or step % checkpoint_every == 0 or step == schedule.num_steps:
                checkpoint.save(step)
            if row["loss"] is not None:
                progress(step, row["loss"], force=step in (0, schedule.num_steps) or stop)
            return stop

        try:
            with _TerminationFlag(strategy) as termination:
                train(
                    trainer,
                    batches,
                    schedule,
                    on_log,
                    strategy=strategy,
                    start_step=start_step or 0,
                    resumed=start_step is not None,
                    interrupted=termination.agreed,
                    jit_compile=numerics.jit_compile,
                )
        except Interrupted as interruption:
            checkpoint.save(interruption.step)
            logging.warning(
                "SIGTERM at step %d: checkpoint written; rerun to resume.", interruption.step
            )
            raise
        finally:
            writer.close()

        summary = analysis.summarize(
            rows,
            learning_rate=schedule.learning_rate,
            settings=settings,
            num_steps=schedule.num_steps,
        )
        run_dir.write_summary(summary)
        title = f"{network.name} on {training_set.name}, {schedule.name}"
        plots.plot_convergence(rows, summary, run_dir.convergence_plot, title=title)
        return summary


def _should_stop(row, initial_loss, l_star, tolerance, loss_bound):
    """'diverged', 'converged' or None for a freshly logged row (the analysis' own rules)."""
    loss = row["loss"]
    if loss is None:
        logging.warning("Step %d: the loss is not finite; stopping (diverged).", row["step"])
        return "diverged"
    bound = analysis.divergence_bound(initial_loss, tolerance, loss_bound)
    if loss > bound:
        logging.warning(
            "Step %d: loss %.3e > bound %.3e; stopping (diverged).", row["step"], loss, bound
        )
        return "diverged"
    return "converged" if loss - l_star <= tolerance else None

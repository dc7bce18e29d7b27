"""The one configurable entry point: wires data, model, protocol, trainer, probes and analysis.

Flow: numerics → distribute → data → model → protocol → trainer → probes (probing.Recorder
over diagnostics.Diagnostics) → metric writer → analysis. This is the only module that knows
all the parts; the parts below it know nothing of gin files or of each other's internals.

A run is resumable: the same call on the same workdir restores the newest readable
checkpoint, keeps the metrics logged up to it, and continues; a finished run (summary.json
with a final status) returns its summary without training again.
"""

import dataclasses

import gin
import numpy as np
import tensorflow as tf
from absl import logging

# Importing these modules registers their gin configurables.
from lplr_tf import analysis, configurables, data, distribute, models, plots, validation  # noqa: F401
from lplr_tf import protocol as protocol_module  # noqa: F401
from lplr_tf.checkpointing import RunCheckpoint, RunLock
from lplr_tf.diagnostics import Diagnostics, ProbeSettings
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.models.batch_norm import calibrate_batch_norm
from lplr_tf.numerics import make_numerics
from lplr_tf.preemption import Interrupted, TerminationFlag
from lplr_tf.probing import Recorder
from lplr_tf.rundir import RunDirectory
from lplr_tf.trainer import ProgressReporter, build_trainer, train


@gin.configurable(module="experiment", denylist=["workdir"])
def run(
    workdir,
    dataset=gin.REQUIRED,
    model=gin.REQUIRED,
    protocol=gin.REQUIRED,
    strategy=distribute.default,
    probe_settings=None,
    analysis_settings=None,
    stop_on_convergence=True,
    checkpoint_every=None,
):
    """Trains one configuration and writes its run directory.

    Args:
      workdir: The run directory; created if needed. Re-running on it resumes.
      dataset: A data loader called with no arguments, e.g. `@data.digits`.
      model: A model builder called as model(input_shape=..., output_dim=...), e.g.
        `@fc.build_model`.
      protocol: A protocol factory called with no arguments, `@protocol.gd` or `@protocol.sgd`.
      strategy: A tf.distribute strategy factory, e.g. `@distribute.mirrored`.
      probe_settings: What the probes measure, a `diagnostics.ProbeSettings`.
      analysis_settings: L*, the tolerance, the divergence bound, ..., an `analysis.Settings`.
      stop_on_convergence: Stop training at convergence instead of running num_steps.
      checkpoint_every: Steps between checkpoints, a multiple of the log interval (default:
        the probe interval). A checkpoint is also written at step 0, at the end, and on
        SIGTERM.

    Returns:
      The summary dict also written to workdir/summary.json.

    Raises:
      ValueError: a bad setting (named, with the fix).
      errors.RunLockedError: another live process runs on the workdir.
      preemption.Interrupted: SIGTERM was received; a checkpoint was written.
    """
    probe_settings = probe_settings or ProbeSettings()
    analysis_settings = analysis_settings or analysis.Settings()
    validation.boolean("experiment.run.stop_on_convergence", stop_on_convergence)
    numerics = make_numerics()
    numerics.apply()
    strategy = strategy()
    training_set = dataset()
    plan = protocol()
    plan.validate(training_set.n)
    checkpoint_every = _checkpoint_interval(checkpoint_every, plan)
    run_dir = _own_run_dir(workdir, strategy).create()
    with RunLock(run_dir):
        finished = run_dir.read_summary()
        if finished and finished.get("status") in analysis.FINAL_STATUSES:
            logging.info(
                "%s already finished (%s); nothing to do.", run_dir.path, finished["status"]
            )
            return finished
        with strategy.scope():
            parts = _build(
                training_set,
                model,
                plan,
                probe_settings,
                analysis_settings,
                numerics,
                strategy,
                run_dir,
            )
        checkpoint = RunCheckpoint(
            run_dir.checkpoints,
            network=parts.network,
            optimizer=parts.trainer.optimizer,
            theta0=parts.diagnostics.theta0,
            **({} if plan.full_batch else {"iterator": parts.batches}),
        )
        history = _resume(run_dir, checkpoint, parts.diagnostics)
        operative_config = gin.operative_config_str()
        run_dir.write_operative_config(operative_config)
        writer = MetricWriter.for_run(run_dir, history)
        writer.write_text("operative_config", operative_config)
        recorder = Recorder(parts.diagnostics, plan.schedule(), writer, history)
        try:
            _train(
                parts,
                recorder,
                checkpoint,
                plan,
                analysis_settings,
                stop_on_convergence,
                checkpoint_every,
                strategy,
                numerics,
            )
        finally:
            recorder.close()
        return _finish(
            run_dir,
            recorder.history,
            plan,
            analysis_settings,
            title=f"{parts.network.name} on {training_set.name}, {plan.name}",
        )


@dataclasses.dataclass
class _Parts:
    network: object
    trainer: object
    diagnostics: Diagnostics
    batches: object


def _build(
    training_set, model, plan, probe_settings, analysis_settings, numerics, strategy, run_dir
):
    """The network, its trainer, the probe and the batches, under the strategy's scope."""
    network = model(input_shape=training_set.input_shape, output_dim=training_set.output_dim)
    _check_model_matches_data(network, training_set)
    x_probe, y_probe = _probe_subset(training_set, plan)
    calibrate_batch_norm(network, tf.constant(x_probe))  # a restored checkpoint overrides
    trainer = build_trainer(
        network, plan.learning_rate, numerics.jit_compile, plan.learning_rate_schedule
    )
    loss_set = None  # GD: the loss is the probe set's; SGD: the full training set's
    if not plan.full_batch:
        loss_set = (tf.constant(training_set.x), tf.constant(training_set.y))
    diagnostics = Diagnostics(
        network,
        (tf.constant(x_probe), tf.constant(y_probe)),
        loss_set=loss_set,
        settings=probe_settings,
        l_star=analysis_settings.l_star,
        learning_rate=plan.learning_rate if plan.full_batch else None,
        save_reference=run_dir.save_reference,
        jit_compile=numerics.jit_compile,
    )
    batches = iter(strategy.experimental_distribute_dataset(_batches(training_set, plan)))
    logging.info(
        "Data %s: n = %d, input %s, %d output(s). Model %s: %d parameters. %s. %d replica(s).",
        training_set.name,
        training_set.n,
        training_set.input_shape,
        training_set.output_dim,
        network.name,
        network.count_params(),
        plan,
        strategy.num_replicas_in_sync,
    )
    return _Parts(network, trainer, diagnostics, batches)


def _resume(run_dir, checkpoint, diagnostics):
    """Restores the newest readable checkpoint; returns the rows logged up to it ([] if none)."""
    start_step = checkpoint.restore()
    if start_step is None:
        return []
    diagnostics.restore_reference(run_dir.load_reference())
    return [row for row in run_dir.read_metrics() if row["step"] <= start_step]


def _train(
    parts,
    recorder,
    checkpoint,
    plan,
    settings,
    stop_on_convergence,
    checkpoint_every,
    strategy,
    numerics,
):
    """Measures step 0 (unless resumed), then trains, measuring and checkpointing on schedule."""
    progress = ProgressReporter(plan.num_steps, settings.l_star)

    def on_step(step):
        measurement = recorder.record_if_due(step)
        if measurement is None:
            return False
        row = measurement.row
        stop = _stop_reason(row, recorder.history[0]["loss"], settings)
        stop = stop == "diverged" or (stop == "converged" and stop_on_convergence)
        if stop or step % checkpoint_every == 0 or step == plan.num_steps:
            checkpoint.save(step)
        if row["loss"] is not None:
            progress(step, row["loss"], force=step in (0, plan.num_steps) or stop)
        return stop

    last = recorder.last_row
    if last is None:
        if on_step(0):
            return
    else:
        stop = _stop_reason(last, recorder.history[0]["loss"], settings)
        if stop == "diverged" or (stop == "converged" and stop_on_convergence):
            return  # the restored checkpoint is the run's last step
    start_step = 0 if last is None else last["step"]
    try:
        with TerminationFlag(strategy) as termination:
            train(
                parts.trainer,
                parts.batches,
                plan.num_steps,
                on_step,
                strategy=strategy,
                start_step=start_step,
                interrupted=termination.agreed,
                jit_compile=numerics.jit_compile,
            )
    except Interrupted as interruption:
        checkpoint.save(interruption.step)
        logging.warning(
            "SIGTERM at step %d: checkpoint written; rerun to resume.", interruption.step
        )
        raise


def _finish(run_dir, rows, plan, settings, title):
    """Writes summary.json and the convergence plot; returns the summary."""
    summary = analysis.summarize(
        rows, learning_rate=plan.learning_rate, settings=settings, num_steps=plan.num_steps
    )
    run_dir.write_summary(summary)
    plots.plot_convergence(rows, summary, run_dir.convergence_plot, title=title)
    return summary


def _check_model_matches_data(network, dataset):
    output_dim = network.output_shape[-1]
    if output_dim != dataset.output_dim:
        raise ValueError(
            f"The model's output dimension is {output_dim} but the data {dataset.name} has "
            f"targets of dimension {dataset.output_dim}. Build the model with "
            "output_dim = dataset.output_dim (model builders receive it from the experiment)."
        )


def _checkpoint_interval(checkpoint_every, plan):
    every = validation.integer(
        "experiment.run.checkpoint_every", checkpoint_every or plan.probe_every, 1
    )
    if every % plan.log_every:
        raise ValueError(
            f"experiment.run.checkpoint_every = {every}; expected a positive multiple of the "
            f"log interval {plan.log_every}."
        )
    return every


def _probe_subset(dataset, plan):
    """The probe set: the full training set for GD, a fixed seeded subset for SGD."""
    if plan.full_batch or plan.probe_size is None:
        return dataset.x, dataset.y
    size = min(plan.probe_size, dataset.n)
    index = np.sort(np.random.default_rng(plan.seed).permutation(dataset.n)[:size])
    return dataset.x[index], dataset.y[index]


def _batches(dataset, plan):
    """An endless tf.data pipeline of global training batches."""
    if plan.full_batch:
        pipeline = tf.data.Dataset.from_tensor_slices((dataset.x, dataset.y)).batch(dataset.n)
        return pipeline.cache().repeat()
    return data.batch_pipeline(dataset, plan.batch_size, seed=plan.seed).repeat()


def _own_run_dir(workdir, strategy):
    """The chief writes `workdir`; other workers of a cluster write workdir/workers/<task>."""
    run_dir = RunDirectory(workdir)
    if distribute.is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    return run_dir.worker(resolver.task_type, resolver.task_id)


def _stop_reason(row, initial_loss, settings):
    """'diverged', 'converged' or None for a freshly logged row (the analysis' own rules)."""
    loss = row["loss"]
    if loss is None:
        logging.warning("Step %d: the loss is not finite; stopping (diverged).", row["step"])
        return "diverged"
    bound = analysis.divergence_bound(initial_loss, settings.tolerance, settings.loss_bound)
    if loss > bound:
        logging.warning(
            "Step %d: loss %.3e > bound %.3e; stopping (diverged).", row["step"], loss, bound
        )
        return "diverged"
    return "converged" if loss - settings.l_star <= settings.tolerance else None

"""The one configurable entry point: wires data, model, protocol, trainer, probes and analysis.

Flow: numerics → distribute → data → model → protocol → trainer → probes (probing.Recorder
over diagnostics.Diagnostics) → metric writer → analysis. This is the only module that knows
all the parts; the parts below it know nothing of gin files or of each other's internals.

Every argument and setting is checked before anything is written: a bad one is a ValueError
naming it, what was expected and the fix. Nothing is written before the run lock is taken.

A run is resumable: the same call on the same workdir restores the newest readable
checkpoint, checks that metrics.jsonl holds every row logged up to it, keeps those rows, and
continues; a restored step that already met a stop rule is not trained past. Finishing
(TensorBoard flush, plot, then summary.json last) is safe to redo: a run is finished when its
summary.json has a final status and its plot exists, and a rerun of a run cut short while
finishing restores its last checkpoint and finishes it again, identically.
"""

import dataclasses
import os

import gin
import numpy as np
import tensorflow as tf
from absl import logging

# Importing these modules registers their gin configurables.
from lplr_tf import (  # noqa: F401
    analysis,
    configurables,
    data,
    distribute,
    figures,
    initialization,
    models,
    ntk,
    plots,
    preflight,
    validation,
)
from lplr_tf import protocol as protocol_module  # noqa: F401
from lplr_tf.checkpointing import RunCheckpoint, RunLock, rows_to_resume
from lplr_tf.console import ProgressReporter
from lplr_tf.diagnostics import Diagnostics, ProbeSettings
from lplr_tf.errors import ConfigError
from lplr_tf.metric_writer import OPERATIVE_CONFIG_TAG, MetricWriter, gin_hparams
from lplr_tf.models.batch_norm import calibrate_batch_norm
from lplr_tf.numerics import make_numerics
from lplr_tf.preemption import Interrupted, TerminationFlag
from lplr_tf.probing import Recorder
from lplr_tf.rundir import RunDirectory
from lplr_tf.trainer import build_trainer, train


@gin.configurable(module="experiment", denylist=["workdir", "config_text"])
def run(
    workdir,
    dataset=gin.REQUIRED,
    model=gin.REQUIRED,
    protocol=gin.REQUIRED,
    strategy=distribute.default,
    probe_settings=None,
    analysis_settings=None,
    figure_settings=None,
    stop_on_convergence=True,
    checkpoint_every=None,
    config_text=None,
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
      figure_settings: The formats and dpi of plots/convergence.*, a `figures.FigureSettings`
        (None: PNG).
      stop_on_convergence: Stop training at convergence instead of running num_steps.
      checkpoint_every: Steps between checkpoints, a multiple of the log interval (default:
        the probe interval). A checkpoint is also written at step 0, at the end, and on
        SIGTERM.
      config_text: What was asked (the launcher's gin files and bindings), written to
        config.gin once the run lock is held; a workdir with checkpoints of another
        configuration is refused. None: config.gin is neither written nor checked.

    Returns:
      The summary dict also written to workdir/summary.json.

    Raises:
      ValueError: a bad setting, or a run directory that cannot be resumed (named, with
        the fix).
      errors.RunLockedError: another live process runs on the workdir.
      preemption.Interrupted: SIGTERM was received; a checkpoint was written when training
        had started.
    """
    preflight.check_arguments(workdir, probe_settings, analysis_settings, stop_on_convergence)
    probe_settings = probe_settings or ProbeSettings()
    analysis_settings = analysis_settings or analysis.Settings()
    figure_settings = figures.figure_settings(figure_settings, "experiment.run.figure_settings")
    numerics = make_numerics()
    numerics.apply()
    strategy = preflight.make_strategy(strategy)
    training_set = preflight.make_dataset(dataset)
    plan = preflight.make_protocol(protocol, training_set.n)
    checkpoint_every = preflight.checkpoint_interval(checkpoint_every, plan)
    run_dir = _own_run_dir(workdir, strategy).create()
    with RunLock(run_dir):
        _record_config(run_dir, config_text)
        finished = _finished_summary(run_dir, figure_settings.formats)
        if finished is not None:
            return finished
        with strategy.scope():
            network = preflight.make_model(model, training_set)
            x_probe, y_probe = _probe_subset(training_set, plan)
            calibrate_batch_norm(network, tf.constant(x_probe))  # a restore overrides it
        # Outside the scope: the measurements at θ₀ read mirrored variables as plain ones.
        plan, facts = initialization.initial_facts(
            run_dir, plan, probe_settings, network, training_set, x_probe.shape[0]
        )
        with strategy.scope():
            parts = _build(
                network,
                (x_probe, y_probe),
                training_set,
                plan,
                facts,
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
            **parts.diagnostics.checkpoint_state(),
            **({} if plan.full_batch else {"iterator": parts.batches}),
        )
        start_step = checkpoint.restore()
        history = rows_to_resume(run_dir, start_step, plan.schedule())
        if start_step is None:
            preflight.check_initial_loss(parts.diagnostics, analysis_settings)
            run_dir.write_facts(parts.facts)
        else:
            parts.diagnostics.restore_reference(run_dir.load_reference())
        operative_config = gin.operative_config_str()
        run_dir.write_operative_config(operative_config)
        writer = MetricWriter.for_run(run_dir, history)
        writer.write_text(OPERATIVE_CONFIG_TAG, operative_config)
        writer.write_hparams(gin_hparams(operative_config), trial_id=run_dir.name)
        recorder = Recorder(parts.diagnostics, parts.plan.schedule(), writer, history)
        try:
            _train(
                parts,
                recorder,
                checkpoint,
                parts.plan,
                analysis_settings,
                stop_on_convergence,
                checkpoint_every,
                strategy,
                numerics,
                start_step or 0,
            )
        finally:
            recorder.close()  # flushes metrics.jsonl and TensorBoard
        return _finish(
            run_dir,
            recorder.history,
            parts.plan,
            analysis_settings,
            parts.facts,
            figure_settings,
        )


def _record_config(run_dir, config_text):
    """Writes config.gin (under the lock); refuses a resumable workdir of another config."""
    if config_text is None:
        return
    recorded = run_dir.read_config()
    if run_dir.has_checkpoints() and recorded not in (None, config_text):
        raise ConfigError(
            f"--workdir={run_dir.path} holds a run started with another configuration (see "
            f"{run_dir.config}); resuming needs the same --gin_file and --gin_bindings. "
            "Use a new --workdir for a new configuration."
        )
    if recorded != config_text:
        run_dir.write_config(config_text)


def _finished_summary(run_dir, formats):
    """The summary of a finished run (final status, plots written), else None."""
    summary = run_dir.read_summary()
    if not summary or summary.get("status") not in analysis.FINAL_STATUSES:
        return None
    missing = [p for p in run_dir.convergence_plots(formats) if not os.path.isfile(p)]
    if missing:
        logging.info(
            "%s: summary.json is final but %s is missing; finishing the run again.",
            run_dir.path,
            missing[0],
        )
        return None
    logging.info("%s already finished (%s); nothing to do.", run_dir.path, summary["status"])
    return summary


@dataclasses.dataclass
class _Parts:
    network: object
    trainer: object
    diagnostics: Diagnostics
    batches: object
    plan: object  # the protocol, with the step size measured at initialization if asked
    facts: dict  # what initialization.run_facts recorded (run.json)


def _build(
    network,
    probe_set,
    training_set,
    plan,
    facts,
    probe_settings,
    analysis_settings,
    numerics,
    strategy,
    run_dir,
):
    """The trainer, the probe and the batches, under the strategy's scope."""
    x_probe, y_probe = probe_set
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
    facts.update(ntk_path=diagnostics.path, ntk_estimates=list(diagnostics.estimates))
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
    return _Parts(network, trainer, diagnostics, batches, plan, facts)


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
    start_step,
):
    """Measures step 0 (unless resumed), then trains, measuring and checkpointing on schedule.

    Args:
      start_step: The step the weights are at: 0, or the restored checkpoint's step.
    """
    progress = ProgressReporter(
        plan.num_steps, settings.l_star, settings.tolerance if stop_on_convergence else None
    )

    def save(step):
        recorder.writer.sync()  # the rows a checkpoint covers are on disk before it is
        checkpoint.save(step)

    def should_stop(row):
        initial = recorder.history[0]["loss"]
        bound = analysis.divergence_bound(initial, settings.tolerance, settings.loss_bound)
        stop = analysis.loss_status(row["loss"], bound, settings.l_star, settings.tolerance)
        if stop == "diverged":
            logging.warning(
                "Step %d: loss %s (bound %.3e); stopping: diverged.",
                row["step"],
                row["loss"],
                bound,
            )
        return stop == "diverged" or (stop == "converged" and stop_on_convergence)

    def on_step(step):
        try:
            measurement = recorder.record_if_due(step)
        except ntk.ProbeInterrupted as interruption:
            raise Interrupted(step) from interruption  # the probe is redone on resume
        if measurement is None:
            return False
        row = measurement.row
        stop = should_stop(row)
        if stop or step % checkpoint_every == 0 or step == plan.num_steps:
            save(step)
        if row["loss"] is not None:
            progress(step, row["loss"], force=step in (0, plan.num_steps) or stop)
        return stop

    schedule = recorder.schedule
    last = recorder.last_row
    with TerminationFlag(strategy) as termination:
        parts.diagnostics.should_stop = termination.local()
        try:
            if last is None or (last["step"] < start_step and schedule.is_log_step(start_step)):
                # Step 0, or a checkpoint written while its own probe was interrupted.
                if on_step(start_step):
                    return
            elif last["step"] == start_step and should_stop(last):
                return  # the restored checkpoint is the run's last step: finish it
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
            save(interruption.step)  # still under the flag: a second SIGTERM waits for it
            logging.warning(
                "SIGTERM at step %d: checkpoint written; rerun to resume.", interruption.step
            )
            raise


def _finish(run_dir, rows, plan, settings, facts, figure_settings):
    """Writes the convergence plots, then summary.json (last: a final summary means done)."""
    summary = analysis.summarize(
        rows,
        learning_rate=plan.learning_rate,
        settings=settings,
        num_steps=plan.num_steps,
        run=facts,
    )
    # Each file is written whole under a temporary name, then renamed (figures.save_figure).
    plots.plot_convergence(rows, summary, run_dir.convergence_stem, figure_settings)
    run_dir.write_summary(summary)
    return summary


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

"""The one configurable entry point: wires data, model, protocol, trainer, probes and analysis.

Flow (DESIGN.md §2): numerics -> data -> model -> protocol -> trainer -> probes -> metric
writer -> analysis. This is the only module that knows all the parts; the parts below it
know nothing of gin files or of each other's internals.
"""

import itertools
import os
import time

import gin
import numpy as np
import tensorflow as tf
from absl import logging

# Importing configurables, data, models and protocols registers their gin configurables.
from lplr_tf import analysis, configurables, data, models, plots, protocols, report  # noqa: F401
from lplr_tf.diagnostics import Diagnostics
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.numerics import make_numerics
from lplr_tf.trainer import ProgressReporter, build_trainer, train


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
    """An endless iterator of training batches."""
    if protocol.full_batch:
        return itertools.repeat((tf.constant(dataset.x), tf.constant(dataset.y)))
    pipeline = data.batch_pipeline(dataset, protocol.batch_size, seed=protocol.seed)
    return iter(pipeline.repeat())


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
):
    """Trains one configuration and writes the run directory (DESIGN.md §3).

    Args:
      workdir: The run directory; created if needed.
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

    Returns:
      The summary dict also written to workdir/summary.json.
    """
    numerics = make_numerics()
    numerics.apply()
    training_set = dataset()
    schedule = protocol()
    schedule.validate(training_set.n)
    network = model(input_shape=training_set.input_shape, output_dim=training_set.output_dim)
    _check_model_matches_data(network, training_set)
    trainer = build_trainer(network, schedule.learning_rate, numerics.jit_compile)
    logging.info(
        "Data %s: n = %d, input %s, %d output(s). Model %s: %d parameters. Protocol %s.",
        training_set.name,
        training_set.n,
        training_set.input_shape,
        training_set.output_dim,
        network.name,
        network.count_params(),
        schedule,
    )

    x_probe, y_probe = _probe_subset(training_set, schedule)
    log_steps = [s for s in range(schedule.num_steps + 1) if schedule.is_log_step(s)]
    diagnostics = Diagnostics(
        network,
        tf.constant(training_set.x),
        tf.constant(training_set.y),
        tf.constant(x_probe),
        tf.constant(y_probe),
        l_star=l_star,
        measure_ntk=measure_ntk,
        ntk_output_mode=ntk_output_mode,
        measure_sharpness=measure_sharpness,
        linearized_learning_rate=schedule.learning_rate if schedule.full_batch else None,
        linearized_steps=log_steps,
        jit_compile=numerics.jit_compile,
    )

    os.makedirs(workdir, exist_ok=True)
    operative_config = gin.operative_config_str()
    with open(os.path.join(workdir, "operative_config.gin"), "w", encoding="utf-8") as file:
        file.write(operative_config)
    writer = MetricWriter(workdir)
    writer.write_text("operative_config", operative_config)

    rows = []
    progress = ProgressReporter(schedule.num_steps, l_star)
    start_time = time.monotonic()

    def on_log(step):
        row = diagnostics.measure(step, probe=schedule.is_probe_step(step))
        row["wall_time"] = time.monotonic() - start_time
        rows.append(row)
        writer.write(row)
        if "ntk_lambda_min" in row:
            writer.write_histogram("ntk_spectrum", diagnostics.spectrum.eigenvalues, step)
        loss = row["loss"]
        if loss is None:
            logging.warning("Step %d: the loss is not finite; stopping (diverged).", step)
            return True
        progress(step, loss, force=step in (0, schedule.num_steps))
        bound = analysis.divergence_bound(rows[0]["loss"], tolerance, loss_bound)
        if loss > bound:
            logging.warning("Step %d: loss %.3e > bound %.3e; stopping (diverged).", step, loss, bound)
            return True
        return stop_on_convergence and loss - l_star <= tolerance

    try:
        train(trainer, _batches(training_set, schedule), schedule, on_log, jit_compile=numerics.jit_compile)
    finally:
        writer.close()

    summary = analysis.summarize(
        rows,
        learning_rate=schedule.learning_rate,
        l_star=l_star,
        tolerance=tolerance,
        loss_bound=loss_bound,
        window=fit_window,
        kernel_drift_bound=kernel_drift_bound,
        num_steps=schedule.num_steps,
    )
    report.write_summary(workdir, summary)
    title = f"{network.name} on {training_set.name}, {schedule.name}"
    plots.plot_convergence(rows, summary, os.path.join(workdir, "plots", "convergence.png"), title=title)
    return summary

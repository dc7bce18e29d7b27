"""What a run measures at initialization, before its first step, and records once.

Two measurements belong here, both at θ₀:

* the step size from the geometry (`protocol.gd.learning_rate_times_sharpness = c`):
  η = c / β₀ with β₀ = λ_max(∇²L(θ₀)) on the training set, so c = 1 is the theorem's η = 1/β
  and c ≥ 2 is past the edge of stability;
* the a-priori check of the ball B(θ₀, R₀) (`a_priori.check`) for full-batch GD.

With the facts about the data and the protocol they form the run's `facts`, the dict that
`analysis.summarize` reports under `summary["run"]`. The experiment stores them in the run
directory (run.json) when a run starts, and a resumed run reads them back instead of
measuring again, so its summary equals an uninterrupted run's.
"""

import dataclasses
import time

import tensorflow as tf
from absl import logging

from lplr_tf import a_priori, hessian


def calibrated_protocol(plan, network, x, y):
    """The protocol with η = c/β₀ when it asks for it; returns (protocol, calibration).

    Args:
      plan: The `protocol.Protocol`; unchanged when `learning_rate_times_sharpness` is None.
      network: The network at initialization.
      x, y: The training set (n, ...), (n, O): β₀ is the sharpness of its squared loss.

    Returns:
      (plan with the calibrated learning rate, {learning_rate_times_sharpness, sharpness0,
      learning_rate, configured_learning_rate}) or (plan, None).
    """
    factor = plan.learning_rate_times_sharpness
    if factor is None:
        return plan, None
    sharpness0 = float(hessian.sharpness(network, x, y))
    learning_rate = factor / sharpness0
    logging.info(
        "Step size from the sharpness at initialization: η = %g / β₀ = %g / %.6g = %.6g "
        "(protocol.%s.learning_rate = %g is not used).",
        factor,
        factor,
        sharpness0,
        learning_rate,
        plan.name,
        plan.learning_rate,
    )
    calibration = {
        "learning_rate_times_sharpness": factor,
        "sharpness0": sharpness0,
        "learning_rate": learning_rate,
        "configured_learning_rate": plan.learning_rate,
    }
    return dataclasses.replace(plan, learning_rate=learning_rate), calibration


def a_priori_check(plan, probe_settings, network, x, y, sharpness=None):
    """The a-priori check of the ball at θ₀ for full-batch GD, or a dict saying why not.

    `sharpness`: β₀ when the step size was calibrated on it (the check then judges η ≤ 1/β₀
    on the same value); None: the check measures it.
    """
    if not probe_settings.a_priori_check:
        return {"skipped": "diagnostics.ProbeSettings.a_priori_check = False"}
    if not plan.full_batch:
        return {"skipped": "a theorem about full-batch GD: not checked for SGD runs"}
    if not probe_settings.measure_ntk:
        return {"skipped": "the NTK is not measured (diagnostics.ProbeSettings.measure_ntk)"}
    return a_priori.check(
        network,
        x,
        y,
        learning_rate=plan.learning_rate,
        output_mode=probe_settings.ntk_output_mode,
        sharpness=sharpness,
        progress=_every_few_seconds(logging.info),
    )


def _every_few_seconds(log, seconds=5.0):
    """`log` for the first line and then at most once per `seconds` (samples of a small
    kernel take milliseconds; those of a large one minutes)."""
    last = None

    def throttled(line):
        nonlocal last
        now = time.monotonic()
        if last is None or now - last >= seconds:
            last = now
            log(line)

    return throttled


def run_facts(
    plan, probe_settings, training_set, network, probe_size, calibration, a_priori_result
):
    """The facts about a run that its summary reports and lplr-report needs to recompute it."""
    return {
        "protocol": plan.name,
        "batch_size": plan.batch_size,
        "model": network.name,
        "ntk_output_mode": probe_settings.ntk_output_mode,
        "num_outputs": training_set.output_dim,
        "train_size": training_set.n,
        "probe_size": probe_size,
        "dataset": training_set.name,
        "data_source": training_set.source,
        "learning_rate": plan.learning_rate,
        "learning_rate_calibration": calibration,
        "a_priori": a_priori_result,
    }


def initial_facts(run_dir, plan, probe_settings, network, training_set, probe_size):
    """η from β₀ and the a-priori check at θ₀: measured, or read back (run.json) on resume.

    Args:
      run_dir: The `RunDirectory` (its run.json is read when it holds checkpoints).
      plan: The `protocol.Protocol`.
      probe_settings: The `diagnostics.ProbeSettings`.
      network: The network at initialization (outside any strategy scope).
      training_set: The `data.Dataset`.
      probe_size: m, the number of probe examples.

    Returns:
      (plan, with η = c/β₀ when asked, facts).
    """
    facts = run_dir.read_facts() if run_dir.has_checkpoints() else None
    if facts is None:
        x, y = tf.constant(training_set.x), tf.constant(training_set.y)
        plan, calibration = calibrated_protocol(plan, network, x, y)
        sharpness0 = calibration["sharpness0"] if calibration else None
        check = a_priori_check(plan, probe_settings, network, x, y, sharpness0)
        facts = run_facts(
            plan, probe_settings, training_set, network, int(probe_size), calibration, check
        )
    elif plan.learning_rate_times_sharpness is not None:
        plan = dataclasses.replace(plan, learning_rate=facts["learning_rate"])
    return plan, facts

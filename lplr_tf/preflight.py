"""Preflight: every argument and setting of `experiment.run` checked before the first step.

Gin hands `experiment.run` whatever a config says: a reference of the wrong kind
(`experiment.run.dataset = @protocol.gd`), a class where an instance belongs, settings that
contradict the data (L* above the initial loss). Each check here raises a ValueError naming
the binding, what was received, what was expected and the fix, before anything of the run is
written (the initial-loss checks run once the model exists, before the first row).
"""

import os

import keras
import tensorflow as tf

from lplr_tf import analysis, data, validation
from lplr_tf import protocol as protocol_module
from lplr_tf.diagnostics import ProbeSettings


def check_arguments(workdir, probe_settings, analysis_settings, stop_on_convergence):
    """The arguments of experiment.run that are values (the factories are checked when made)."""
    if not isinstance(workdir, (str, os.PathLike)) or not os.fspath(workdir):
        raise ValueError(
            f"experiment.run: workdir = {workdir!r}; expected the run directory's path, e.g. "
            "'runs/demo'."
        )
    for name, value, kind, example in (
        ("probe_settings", probe_settings, ProbeSettings, "@diagnostics.ProbeSettings()"),
        ("analysis_settings", analysis_settings, analysis.Settings, "@analysis.Settings()"),
    ):
        if value is not None and not isinstance(value, kind):
            raise ValueError(
                f"experiment.run.{name} = {_shown(value)}; expected a {kind.__module__}."
                f"{kind.__qualname__} instance. Bind it with parentheses: "
                f"experiment.run.{name} = {example}."
            )
    validation.boolean("experiment.run.stop_on_convergence", stop_on_convergence)


def _shown(value, limit=80):
    """repr(value), cut to `limit` characters (a Dataset's repr holds its arrays)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(factory):
    module = getattr(factory, "__module__", None) or ""
    name = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{module}.{name}" if module else name


def make(role, factory, kind, example, **arguments):
    """Calls the factory bound to experiment.run.<role>; checks what it returns is a `kind`."""
    if not callable(factory):
        raise ValueError(
            f"experiment.run.{role} = {_shown(factory)} is not callable; expected a reference to a "
            f"function without parentheses (experiment.run calls it), e.g. "
            f"experiment.run.{role} = {example}."
        )
    made = factory(**arguments)
    if not isinstance(made, kind):
        raise ValueError(
            f"experiment.run.{role} = @{_describe(factory)} returned a "
            f"{type(made).__name__}; expected a {kind.__module__}.{kind.__qualname__}. Bind "
            f"the right kind of function, e.g. experiment.run.{role} = {example}."
        )
    return made


def check_learning_rate_schedule(plan):
    schedule = plan.learning_rate_schedule
    if schedule is not None and not isinstance(
        schedule, keras.optimizers.schedules.LearningRateSchedule
    ):
        raise ValueError(
            f"protocol.{plan.name}.learning_rate_schedule = {schedule!r}; expected a Keras "
            "LearningRateSchedule instance. Bind it with parentheses, e.g. "
            f"protocol.{plan.name}.learning_rate_schedule = @keras.schedules.CosineDecay()."
        )


def check_initial_loss(diagnostics, settings):
    """Checks L*, the tolerance and the loss bound against the loss at initialization.

    These settings cannot be checked before the model exists; they are checked before the
    first row is written, so a corrected command can still use the same workdir.
    """
    initial = diagnostics.measure(0, probe=False).row["loss"]
    if initial is None:
        return  # not finite at initialization: the run is recorded as diverged at step 0
    name = "analysis.Settings"
    if settings.l_star > initial:
        raise ValueError(
            f"{name}.l_star = {settings.l_star!r} is above the loss at initialization "
            f"L_0 = {initial:.6g}; L* is the optimal (lowest) loss, so L* <= L_0. Lower it, "
            f"e.g. {name}.l_star = 0.0 for a model that can interpolate its data."
        )
    if initial - settings.l_star <= settings.tolerance:
        raise ValueError(
            f"{name}.tolerance = {settings.tolerance!r} >= L_0 - L* = "
            f"{initial - settings.l_star:.6g}: the run would count as converged before "
            f"training. Lower it, e.g. {name}.tolerance = 1e-6."
        )
    if settings.loss_bound is not None and settings.loss_bound <= initial:
        raise ValueError(
            f"{name}.loss_bound = {settings.loss_bound!r} is not above the loss at "
            f"initialization L_0 = {initial:.6g}: the run would count as diverged at step 0. "
            f"Raise it above L_0, or set {name}.loss_bound = None (1e6 × L_0)."
        )


def check_model_matches_data(network, dataset):
    """The model's output dimension against the targets'."""
    output_dim = network.output_shape[-1]
    if output_dim != dataset.output_dim:
        raise ValueError(
            f"The model's output dimension is {output_dim} but the data {dataset.name} has "
            f"targets of dimension {dataset.output_dim}. Build the model with "
            "output_dim = dataset.output_dim (model builders receive it from the experiment)."
        )


def checkpoint_interval(checkpoint_every, plan):
    """experiment.run.checkpoint_every: a multiple of the log interval (default: the probe's)."""
    every = validation.integer(
        "experiment.run.checkpoint_every", checkpoint_every or plan.probe_every, 1
    )
    if every % plan.log_every:
        raise ValueError(
            f"experiment.run.checkpoint_every = {every}; expected a positive multiple of the "
            f"log interval {plan.log_every}."
        )
    return every


def make_strategy(factory):
    """experiment.run.strategy, called: a tf.distribute.Strategy."""
    return make("strategy", factory, tf.distribute.Strategy, "@distribute.default")


def make_dataset(factory):
    """experiment.run.dataset, called: a data.Dataset."""
    return make("dataset", factory, data.Dataset, "@data.digits")


def make_protocol(factory, num_examples):
    """experiment.run.protocol, called and checked against the training-set size."""
    plan = make("protocol", factory, protocol_module.Protocol, "@protocol.gd")
    check_learning_rate_schedule(plan)
    plan.validate(num_examples)
    return plan


def make_model(factory, dataset):
    """experiment.run.model, called for the data's shapes: a keras.Model that fits them."""
    network = make(
        "model",
        factory,
        keras.Model,
        "@fc.build_model",
        input_shape=dataset.input_shape,
        output_dim=dataset.output_dim,
    )
    check_model_matches_data(network, dataset)
    return network

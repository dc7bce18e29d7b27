"""Training protocols as data: full-batch gradient descent and mini-batch SGD.

A protocol says which batches the trainer takes, how far and how fast it goes, and how
often it measures. It holds no tensors and does no work.
"""

import dataclasses
from typing import Any

import gin

from lplr_tf import validation
from lplr_tf.probing import Schedule


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What the trainer runs.

    Attributes:
      name: "gd" or "sgd".
      learning_rate: Step size eta of theta <- theta - eta * grad L_batch.
      num_steps: Number of parameter updates.
      batch_size: None for full-batch GD (every step sees all n examples in order);
        the mini-batch size for SGD.
      seed: Seed of the per-epoch shuffling (SGD) and of the probe subset.
      log_every: Steps between logged diagnostics (step 0 and the last step always log).
      probe_every: Steps between NTK / sharpness probes; a multiple of log_every.
      probe_growth: None, or g > 1 to space the probes geometrically (dense early, sparse
        late; probe_every is then the smallest gap): see `probing.Schedule`.
      probe_size: SGD only: size of the fixed seeded probe subset on which gradients, the
        PL ratio and the NTK are measured (the loss is always measured on the full set).
      learning_rate_times_sharpness: c, when the step size is set from the sharpness at
        initialization: η = c / β₀ (c = 1 is the theorem's η = 1/β; c in (0, 2)). The
        experiment measures β₀ before the first step and replaces `learning_rate`.
      learning_rate_schedule: SGD only: an optional
        `keras.optimizers.schedules.LearningRateSchedule` replacing the constant step size
        (the analysis' GD bound then uses `learning_rate`, the initial step).
    """

    name: str
    learning_rate: float
    num_steps: int
    batch_size: int | None
    seed: int
    log_every: int
    probe_every: int
    probe_size: int | None = None
    probe_growth: float | None = None
    learning_rate_times_sharpness: float | None = None
    learning_rate_schedule: Any = None

    def __post_init__(self):
        self.schedule()  # checks that probe_every is a multiple of log_every

    @property
    def full_batch(self):
        return self.batch_size is None

    def validate(self, num_examples):
        """Checks the settings against the training-set size n.

        (The settings alone are checked when the protocol is made.)

        Raises:
          ValueError: naming the offending setting, what was expected and the fix.
        """
        prefix = f"protocol.{self.name}"
        if self.batch_size is not None and self.batch_size > num_examples:
            raise ValueError(
                f"{prefix}.batch_size = {self.batch_size}; expected 1 <= batch_size <= n = "
                f"{num_examples} (the training-set size). Lower it or raise the data's n."
            )

    def schedule(self):
        """The `probing.Schedule` of logged rows and probes over `num_steps`."""
        return Schedule(
            self.log_every,
            self.probe_every,
            self.num_steps,
            f"protocol.{self.name}",
            self.probe_growth,
        )


@gin.configurable(module="protocol")
def gd(
    learning_rate=0.5,
    num_steps=1000,
    log_every=10,
    probe_every=None,
    probe_growth=None,
    learning_rate_times_sharpness=None,
):
    """Full-batch gradient descent, the setting of the LPLR theorems.

    `probe_every` defaults to `log_every`; `probe_growth = 1.2` spaces the probes
    geometrically (`probing.Schedule`). `learning_rate_times_sharpness = c` sets the step
    size from the sharpness β₀ at initialization, η = c / β₀, instead of `learning_rate`.
    """
    return Protocol(
        name="gd",
        learning_rate=validation.positive_number("protocol.gd.learning_rate", learning_rate),
        num_steps=validation.integer("protocol.gd.num_steps", num_steps, 1),
        batch_size=None,
        seed=0,
        log_every=validation.integer("protocol.gd.log_every", log_every, 1),
        probe_every=validation.integer("protocol.gd.probe_every", probe_every or log_every, 1),
        probe_growth=probe_growth,
        learning_rate_times_sharpness=_sharpness_factor("gd", learning_rate_times_sharpness),
    )


@gin.configurable(module="protocol")
def sgd(
    learning_rate=0.1,
    num_steps=1000,
    batch_size=64,
    seed=0,
    log_every=50,
    probe_every=None,
    probe_size=256,
    probe_growth=None,
    learning_rate_schedule=None,
    learning_rate_times_sharpness=None,
):
    """Mini-batch SGD with seeded reshuffling every epoch.

    The loss is logged on the full training set; gradient norm, PL ratio and NTK on a fixed
    seeded probe subset of `probe_size` examples (capped at n). An optional schedule, e.g.
    `protocol.sgd.learning_rate_schedule = @keras.schedules.CosineDecay()` with
    `keras.schedules.CosineDecay.initial_learning_rate = 0.1` and `.decay_steps = 2000`,
    replaces the constant step (configurables.py lists the registered schedules).
    `learning_rate_times_sharpness = c` sets the constant step from the sharpness of the full
    training set's loss at initialization, η = c / β₀.
    """
    return Protocol(
        name="sgd",
        learning_rate=validation.positive_number("protocol.sgd.learning_rate", learning_rate),
        num_steps=validation.integer("protocol.sgd.num_steps", num_steps, 1),
        batch_size=validation.integer("protocol.sgd.batch_size", batch_size, 1),
        seed=validation.integer("protocol.sgd.seed", seed, 0),
        log_every=validation.integer("protocol.sgd.log_every", log_every, 1),
        probe_every=validation.integer("protocol.sgd.probe_every", probe_every or log_every, 1),
        probe_size=None
        if probe_size is None
        else validation.integer("protocol.sgd.probe_size", probe_size, 1),
        probe_growth=probe_growth,
        learning_rate_times_sharpness=_sharpness_factor("sgd", learning_rate_times_sharpness),
        learning_rate_schedule=learning_rate_schedule,
    )


def _sharpness_factor(name, factor):
    """c of η = c/β₀, checked to lie in (0, 2) (2/β is the edge of stability), or None."""
    if factor is None:
        return None
    setting = f"protocol.{name}.learning_rate_times_sharpness"
    factor = validation.number(setting, factor, 0.0, strict=True, example=1.0)
    if factor >= 2.0:
        raise ValueError(
            f"{setting} = {factor!r}; expected c in (0, 2): η = c/β₀ with c ≥ 2 is past the "
            f"edge of stability 2/β₀. Use e.g. {setting} = 1.0 (the theorem's η = 1/β), or "
            f"give protocol.{name}.learning_rate directly."
        )
    return factor

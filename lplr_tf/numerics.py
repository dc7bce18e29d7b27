"""Explicit numerics: the seed, the TF32 policy and the XLA choice of a run."""

import dataclasses

import gin
import keras
import tensorflow as tf

from lplr_tf import validation


@dataclasses.dataclass(frozen=True)
class Numerics:
    """Numerical settings of a run.

    Attributes:
      seed: Global seed of Python, NumPy and TensorFlow (model initializers take their own
        seeds from their configs; this one seeds everything else).
      jit_compile: Whether the train step and the probes are XLA-compiled. Pinned explicitly
        because Keras' "auto" means XLA on GPU and no XLA on CPU.
      allow_tf32: TF32 matmuls on Ampere+ GPUs. Off by default: it corrupts small kernel
        eigenvalues (the NTK engine also disables it around kernel work).
    """

    seed: int = 0
    jit_compile: bool = False
    allow_tf32: bool = False

    def apply(self):
        """Seeds every generator and sets the TF32 policy process-wide."""
        keras.utils.set_random_seed(self.seed)
        tf.config.experimental.enable_tensor_float_32_execution(self.allow_tf32)


@gin.configurable("numerics")
def make_numerics(seed=0, jit_compile=False, allow_tf32=False):
    """Gin entry point: `numerics.seed = 1`, `numerics.jit_compile = True`."""
    if not isinstance(jit_compile, bool):
        raise ValueError(
            f"numerics.jit_compile = {jit_compile!r}; expected True or False (not 'auto': "
            "lplr_tf pins the XLA choice)."
        )
    return Numerics(
        seed=validation.integer("numerics.seed", seed, 0),
        jit_compile=jit_compile,
        allow_tf32=validation.boolean("numerics.allow_tf32", allow_tf32),
    )

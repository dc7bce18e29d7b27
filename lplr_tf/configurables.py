"""The only place that registers external (Keras) symbols with gin.

`import gin.tf` is broken on TF >= 2.16, so the Keras symbols a config may reference are
registered here by hand, under the module name `keras`.
"""

import gin
import keras

for _schedule in (
    keras.optimizers.schedules.ExponentialDecay,
    keras.optimizers.schedules.PiecewiseConstantDecay,
    keras.optimizers.schedules.CosineDecay,
):
    gin.external_configurable(_schedule, module="keras.schedules")

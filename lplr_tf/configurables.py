"""The only place that registers with gin the classes gin cannot decorate in their modules.

`import gin.tf` is broken on TF >= 2.16, so the Keras symbols a config may reference are
registered here by hand, under the module name `keras`. The settings dataclasses of the
analysis (kept free of gin: it is a pure library) and of the probes are registered here too,
under their own module names: `analysis.Settings.tolerance = 1e-8`,
`diagnostics.ProbeSettings.measure_sharpness = False`, `figures.FigureSettings.formats = ('pdf',)`.
"""

import gin
import keras

from lplr_tf import analysis, diagnostics, figures

for _schedule in (
    keras.optimizers.schedules.ExponentialDecay,
    keras.optimizers.schedules.PiecewiseConstantDecay,
    keras.optimizers.schedules.CosineDecay,
):
    gin.external_configurable(_schedule, module="keras.schedules")

gin.external_configurable(analysis.Settings, module="analysis")
gin.external_configurable(diagnostics.ProbeSettings, module="diagnostics")
gin.external_configurable(figures.FigureSettings, module="figures")

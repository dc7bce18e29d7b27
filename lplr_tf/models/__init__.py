"""Model builders: fully connected nets and ResNets, standard or NTK parameterization.

Importing this package registers every builder with gin (`fc.build_model`, ...).
"""

from lplr_tf.models import (
    fc,  # noqa: F401
    resnet,  # noqa: F401
)

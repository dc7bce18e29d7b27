"""Metric values as the run directory stores them: finite floats, or None.

JSON has no NaN or infinity, and a non-finite loss is itself information (the run diverged),
so every number a probe reports or a summary states passes through `finite` on its way in
and `json_safe` on its way out.
"""

import math

import numpy as np


def finite(value):
    """Returns `value` as a float when it is a finite real number, else None.

    None, booleans and what `float` cannot read give None, as do NaN and ±inf (a numeric
    string such as "1" reads as its number).
    """
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def json_safe(value):
    """Converts numpy scalars to Python numbers and non-finite floats to None, recursively.

    Summaries and metric rows go through it before they are written (JSON has no NaN).
    """
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite(value)
    return value

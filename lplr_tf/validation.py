"""Checks of user settings that arrive through gin: one clear ValueError per bad value.

Gin passes whatever the user wrote (`fc.build_model.width = 'wide'`); without these checks a
bad type surfaces as an obscure error deep inside Keras or NumPy.
"""

import math
import numbers
from collections.abc import Sequence


def integer(name, value, minimum):
    """Returns `value` as an int, or raises naming the setting, the value and the fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} = {value!r}; expected an integer >= {minimum}. Fix the binding, e.g. "
            f"{name} = {max(minimum, 1)}."
        )
    if value < minimum:
        raise ValueError(f"{name} = {value}; expected an integer >= {minimum}.")
    return int(value)


def integers(name, values, minimum):
    """Returns a non-empty sequence of integers >= `minimum` as a tuple, or raises."""
    if (
        isinstance(values, (int, str))
        or not isinstance(values, Sequence)
        or not values
        or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values)
        or min(values) < minimum
    ):
        shown = tuple(values) if isinstance(values, Sequence) else values
        raise ValueError(
            f"{name} = {shown!r}; expected a non-empty tuple of integers >= {minimum}, e.g. "
            f"{name} = (16, 32)."
        )
    return tuple(int(v) for v in values)


def positive_number(name, value):
    """Returns `value` as a finite float > 0, or raises naming the setting, value and fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(
            f"{name} = {value!r}; expected a finite positive number. Fix the binding, e.g. "
            f"{name} = 0.1."
        )
    return float(value)


def number(name, value, minimum=-math.inf, *, strict=False, example=None):
    """Returns `value` as a finite float >= `minimum` (> when `strict`), or raises.

    Gin reads `1e999` as infinity and passes strings and booleans through unchanged; every
    one of them is refused here with the setting's name, the value and an example fix.
    """
    valid = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not valid:
        bound = "" if minimum == -math.inf else f" {'>' if strict else '>='} {minimum:g}"
        example = example if example is not None else max(minimum, 0.0) + (1.0 if strict else 0)
        raise ValueError(
            f"{name} = {value!r}; expected a finite number{bound}. Fix the binding, e.g. "
            f"{name} = {example!r}."
        )
    return float(value)


def boolean(name, value):
    """Returns `value` when it is True or False, or raises naming the setting and the fix.

    Gin passes strings and numbers through unchanged: `measure_ntk = 'no'` would be truthy.
    """
    if not isinstance(value, bool):
        raise ValueError(
            f"{name} = {value!r}; expected True or False. Fix the binding, e.g. {name} = False."
        )
    return value


def choice(name, value, choices):
    """Returns `value` when it is one of `choices`, or raises naming the setting and the fix."""
    if value not in choices:
        raise ValueError(
            f"{name} = {value!r}; expected one of {', '.join(map(repr, choices))}. Fix the "
            f"binding, e.g. {name} = {choices[0]!r}."
        )
    return value


def keras_initializer(name, value):
    """Returns `value` when Keras knows an initializer of that name, or raises with the fix."""
    import keras  # Only the model builders need this check; keep this module light.

    try:
        keras.initializers.get({"class_name": value, "config": {"seed": 0}})
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{name} = {value!r} is not a Keras initializer; expected a name such as "
            f"'glorot_uniform', 'he_normal' or 'lecun_normal'. Fix the binding, e.g. "
            f"{name} = 'he_normal'."
        ) from error
    return value

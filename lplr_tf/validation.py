"""Checks of user settings that arrive through gin: one clear ValueError per bad value.

Gin passes whatever the user wrote (`fc.build_model.width = 'wide'`); without these checks a
bad type surfaces as an obscure error deep inside Keras or NumPy.
"""

import numbers


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


def positive_number(name, value):
    """Returns `value` as a float > 0, or raises naming the setting, the value and the fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(
            f"{name} = {value!r}; expected a positive number. Fix the binding, e.g. {name} = 0.1."
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

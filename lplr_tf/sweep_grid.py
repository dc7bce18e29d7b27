"""The plan of a sweep: `--grid` and `--seeds` parsed, and one `Run` per grid point × seed.

A grid entry reads `configurable.parameter=[v1,v2,...]`; each value is gin text, bound
verbatim as `configurable.parameter = v` (numbers, 'strings', (tuples), True, @references).

Seeds. `--seeds=N` runs seeds 0..N-1 (`--seeds=0,4,7` runs those). Seed s is bound to
`numerics.seed` (the global TF/NumPy/Python seed), to the `seed` parameter of the model
builder that `experiment.run.model` references (its weight initialization, e.g.
`fc.build_model.seed`), and to the `seed` parameter of the protocol that
`experiment.run.protocol` references when it has one (`protocol.sgd.seed`: the order of the
mini-batches and the probe subset). The data subset is *not* varied: every seed trains on the
same training set, so the spread across seeds is that of the optimization. `seed_parameter`
replaces this automatic list by the gin parameters named.

Names. A run's directory is `<combination>/seed=<s>` below the sweep directory, the
combination reading `width=64,learning_rate=0.5` (each grid key shown by its parameter name,
or by a longer dotted suffix when two keys share it; values made filesystem-safe).
"""

import ast
import dataclasses
import inspect
import itertools
import os
import re

from lplr_tf import gin_config

GRID_FORM = "configurable.parameter=[v1,v2,...]"
_KEY = re.compile(r"^[A-Za-z_][\w/]*(\.[A-Za-z_]\w*)+$")


@dataclasses.dataclass(frozen=True)
class GridKey:
    """One `--grid` entry: a gin parameter and the gin texts of its values."""

    name: str  # e.g. "fc.build_model.width"
    values: tuple  # gin texts, e.g. ("64", "256")


def _split_top_level(body):
    """Splits "a, (b, c), 'd,e'" on the commas outside brackets and quotes.

    Returns:
      (parts, balanced): the stripped parts, and whether brackets and quotes were balanced.
    """
    parts, depth, quote, current = [], 0, None, []
    for char in body:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts, depth == 0 and quote is None


def parse_grid(text):
    """Parses `configurable.parameter=[v1,v2,...]` into a GridKey.

    Raises:
      ValueError: the text is not of that form (names the value and the expected form).
    """

    def bad(why):
        return ValueError(
            f"--grid={text!r}: {why}; expected the form {GRID_FORM}, e.g. "
            "--grid='fc.build_model.width=[64,256,1024]' (values are gin text: numbers, "
            "'strings', (tuples), True, @references)."
        )

    if "=" not in text:
        raise bad("no '='")
    name, _, values = (part.strip() for part in text.partition("="))
    if not _KEY.match(name):
        raise bad(f"{name!r} is not a gin parameter name 'configurable.parameter'")
    if not (values.startswith("[") and values.endswith("]")):
        raise bad(f"the values {values!r} are not a bracketed list [v1,v2,...]")
    parts, balanced = _split_top_level(values[1:-1])
    if not balanced:
        raise bad("unbalanced brackets or quotes in the values")
    if any(not part for part in parts):
        raise bad("an empty value in the list")
    for part in parts:
        if part[0] not in "@%":
            try:
                ast.literal_eval(part)
            except (ValueError, SyntaxError, RecursionError) as error:
                raise bad(
                    f"the value {part!r} is not a gin literal (quote strings: '{part}')"
                ) from error
    if len(set(parts)) != len(parts):
        raise bad("a value is listed twice")
    return GridKey(name, tuple(parts))


def grid_labels(keys):
    """Shortest distinct dotted suffix of each key name ("width", "gd.learning_rate")."""
    parts = [k.name.replace("/", ".").split(".") for k in keys]
    labels = []
    for mine in parts:
        for depth in range(1, len(mine) + 1):
            label = ".".join(mine[-depth:])
            if sum(".".join(other[-depth:]) == label for other in parts) == 1:
                break
        labels.append(label)
    return labels


def safe_value(text):
    """A filesystem-safe rendering of a gin value text: '(16, 32)' -> '16-32'."""
    value = re.sub(r"[\s'\"]", "", text)
    value = re.sub(r"[()\[\]{}]", "", value).replace(",", "-").replace("@", "")
    value = re.sub(r"[^A-Za-z0-9._+\-]", "_", value)
    return value or "empty"


def python_value(text):
    """The gin value text as a Python scalar for tables and HParams (the text if not scalar)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError):
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


def parse_seeds(text):
    """'3' -> (0, 1, 2); '0,4,7' -> (0, 4, 7).

    Raises:
      ValueError: not a count >= 1 nor a list of distinct seeds >= 0.
    """
    try:
        if "," in str(text):
            seeds = tuple(int(part) for part in str(text).split(",") if part.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError as error:
        raise ValueError(
            f"--seeds={text!r}: expected a count N (seeds 0..N-1) or a list like 0,4,7."
        ) from error
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"--seeds={text!r}: expected N >= 1 or distinct seeds >= 0, e.g. "
            "--seeds=3 or --seeds=0,4,7."
        )
    return seeds


@dataclasses.dataclass
class Run:
    """One grid point × seed, and what became of it."""

    settings: dict  # grid key name -> gin text
    label_settings: dict  # label -> gin text (for names and tables)
    seed: int
    workdir: str
    bindings: list  # grid and seed bindings, appended after the user's
    planned_steps: int | None = None  # the protocol's num_steps (for progress lines)
    status: str = "pending"  # then a final status of analysis, or "error"
    action: str = "pending"  # ran, skipped or error
    error: str = ""
    configuration_error: bool = False  # the error is the configuration's (not retried)
    summary: dict | None = None
    seconds: float = 0.0
    attempts: int = 0

    @property
    def combination(self):
        return ",".join(f"{k}={safe_value(v)}" for k, v in self.label_settings.items()) or "base"

    @property
    def name(self):
        """The run's path relative to the sweep directory, e.g. 'width=64/seed=0'."""
        return f"{self.combination}/seed={self.seed}"


# --------------------------------------------------------------------------------------
# Gin: which parameters take the seed, and how many steps a run plans.


def _parse_unfinalized(gin_files, gin_bindings):
    import gin

    from lplr_tf import experiment  # noqa: F401  (registers every configurable)

    gin.clear_config()
    gin.add_config_file_search_path(gin_config.shipped_configs_dir())
    paths = [gin_config.resolve_config_file(name) for name in gin_files]
    with gin_config.quiet_gin_search():
        gin.parse_config_files_and_bindings(paths, gin_bindings, finalize_config=False)


def _referenced(reference_name):
    """The (selector, wrapped function) that a gin reference binding names, or None."""
    import gin

    try:
        reference = gin.query_parameter(reference_name)
    except ValueError:
        return None
    configurable = getattr(reference, "configurable", None)
    if configurable is None:
        return None
    return reference.selector, configurable.wrapped


def _planned_steps():
    """The num_steps of the protocol `experiment.run.protocol` references (bound or default)."""
    import gin

    found = _referenced("experiment.run.protocol")
    if found is None:
        return None
    selector, function = found
    try:
        value = gin.query_parameter(f"{selector}.num_steps")
    except ValueError:
        parameter = inspect.signature(function).parameters.get("num_steps")
        value = None if parameter is None else parameter.default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def inspect_config(gin_files, gin_bindings):
    """The gin parameters that take the seed (module docstring) and the planned step count.

    Returns:
      (seed_parameters, planned_steps): a list of gin parameter names, and an int or None.

    Raises:
      ValueError: the config does not parse (a clear message naming the binding).
    """
    import gin

    try:
        _parse_unfinalized(gin_files, gin_bindings)
        found = ["numerics.seed"]
        for reference in ("experiment.run.model", "experiment.run.protocol"):
            referenced = _referenced(reference)
            if referenced and "seed" in inspect.signature(referenced[1]).parameters:
                found.append(f"{referenced[0]}.seed")
        return found, _planned_steps()
    except (ValueError, SyntaxError) as error:
        raise ValueError(
            f"The sweep's configuration does not parse: {error}\nFix the "
            "--gin_file, --gin_bindings or --grid named above."
        ) from error
    finally:
        gin.clear_config()


def seed_parameters(gin_files, gin_bindings):
    """The gin parameters that receive the seed for this config (module docstring)."""
    return inspect_config(gin_files, gin_bindings)[0]


def plan(gin_files, gin_bindings, grid, seeds, workdir, seed_parameter=None):
    """Lists the runs of a sweep (every combination × seed), checking each config parses.

    Returns:
      (keys, labels, runs): the GridKeys, their column labels and one `Run` per combination ×
      seed, in grid order (the first key varies slowest) with the seeds innermost.

    Raises:
      ValueError: a parameter is given twice, or a combination's config does not parse.
    """
    keys = list(grid)
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(
            f"--grid names a parameter twice ({names}); give each parameter "
            "once with all its values, e.g. --grid='fc.build_model.width=[64,256]'."
        )
    labels = grid_labels(keys)
    runs = []
    for values in itertools.product(*(k.values for k in keys)):
        grid_bindings = [f"{name} = {value}" for name, value in zip(names, values)]
        targets, planned_steps = inspect_config(gin_files, list(gin_bindings) + grid_bindings)
        targets = seed_parameter or targets
        for seed in seeds:
            run = Run(
                settings=dict(zip(names, values)),
                label_settings=dict(zip(labels, values)),
                seed=seed,
                workdir="",
                bindings=grid_bindings + [f"{t} = {seed}" for t in targets],
                planned_steps=planned_steps,
            )
            run.workdir = os.path.join(workdir, run.combination, f"seed={seed}")
            runs.append(run)
    return keys, labels, runs

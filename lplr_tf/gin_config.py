"""Finding and parsing gin configurations, with one clear error for each way they go wrong.

Config files are found by path, in `--gin_search_paths` directories, or by bare name among
the configs shipped with lplr_tf. `parse_config` turns every gin error (syntax, unknown
configurable or parameter, missing include, failed import) into one `ConfigError` that names
the nearest valid names. gin logs a spurious "Path not found" for every search directory it
tries before it finds an `include`; `quiet_gin_search` drops those lines.

A gin file is code: it can `import` any module and bind any callable (that is how users plug
in their own models). Treat one like a Python script.
"""

import contextlib
import difflib
import inspect
import logging as std_logging
import os
import re
import tokenize

import gin
import importlib_resources

from lplr_tf.errors import ConfigError


def shipped_configs_dir():
    """The folder of the gin files installed with lplr_tf."""
    return str(importlib_resources.files("lplr_tf.gin_configs"))


def _check_search_paths(search_paths):
    for directory in search_paths:
        if not os.path.isdir(directory):
            raise ConfigError(
                f"--gin_search_paths={directory}: no such directory. Give a directory of .gin "
                "files."
            )
    return [*search_paths, shipped_configs_dir()]


def resolve_config_file(name, search_paths=()):
    """Returns the path of a gin file given as a path or as a name in a search directory.

    Args:
      name: A path, or a file name looked up in `search_paths`, then in the shipped configs.
      search_paths: Directories searched before the shipped gin_configs/.
    """
    if os.path.isfile(name):
        return name
    directories = _check_search_paths(search_paths)
    for directory in directories:
        for candidate in (
            os.path.join(directory, name),
            os.path.join(directory, os.path.basename(name)),
        ):
            if os.path.isfile(candidate):
                return candidate
    available = sorted(
        {f for directory in directories for f in os.listdir(directory) if f.endswith(".gin")}
    )
    near = difflib.get_close_matches(os.path.basename(name), available, n=1)
    hint = f" Did you mean {near[0]}?" if near else ""
    raise ConfigError(
        f"--gin_file={name}: no such file, and no config of that name in "
        f"{', '.join(directories)}.{hint} Give a path to a .gin file or one of: "
        f"{', '.join(available)}."
    )


class _DropGinSearchMisses(std_logging.Filter):
    """gin logs every search directory it tries for an `include` (an error when not there)."""

    def filter(self, record):
        return not str(record.msg).startswith(("Path not found", "system_path_file_exists"))


@contextlib.contextmanager
def quiet_gin_search():
    """Drops gin's spurious 'Path not found' errors for includes found on the search path."""
    root = std_logging.getLogger()
    quiet = _DropGinSearchMisses()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _registered_configurables():
    # gin has no public listing of what is registered; its registry is stable in the pinned
    # gin-config 0.5.0.
    return [configurable for _, configurable in gin.config._REGISTRY.items()]


def _parameters(configurable):
    try:
        signature = inspect.signature(configurable.wrapped)
    except (TypeError, ValueError):
        return []
    names = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name not in ("self", "cls")
    ]
    if configurable.allowlist:
        names = [name for name in names if name in configurable.allowlist]
    return [name for name in names if name not in (configurable.denylist or ())]


def nearest_names(message):
    """'Did you mean ...?' for gin's unknown-configurable and unknown-parameter errors, or ''."""
    unknown = re.search(
        r"No configurable matching (?:reference )?'@?(?:[\w/]*/)?([\w.]+)'", message
    )
    if unknown:
        name = unknown.group(1)
        selectors = sorted({c.selector for c in _registered_configurables()})
        near = difflib.get_close_matches(name, selectors, n=3, cutoff=0.6)
        if not near:  # a short name: compare names, suggest the full selectors
            by_name = {}
            for selector in selectors:
                by_name.setdefault(selector.rsplit(".", 1)[-1], []).append(selector)
            for close in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(by_name), n=2):
                near += by_name[close]
        return f" Did you mean {' or '.join(repr(n) for n in near[:3])}?" if near else ""
    parameter = re.search(
        r"Configurable '([\w./]+)' doesn't have a parameter named '(\w+)'", message
    )
    if parameter:
        selector, name = parameter.groups()
        configurables = gin.config._REGISTRY.get_all_matches(selector.rsplit("/", 1)[-1])
        names = sorted({p for c in configurables for p in _parameters(c)})
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        if near:
            return f" Did you mean {' or '.join(f'{selector}.{n}' for n in near)}?"
        return f" Its parameters: {', '.join(names)}." if names else ""
    return ""


def parse_config(gin_files, gin_bindings, search_paths=()):
    """Parses and finalizes the gin config; returns the text of what was asked (config.gin).

    Raises:
      errors.ConfigError: a missing file, a syntax error, an unknown configurable or
        parameter (with the nearest valid names), a failed `import` in a gin file.
    """
    directories = _check_search_paths(search_paths)
    paths = [resolve_config_file(name, search_paths) for name in gin_files]
    gin.clear_config()  # one launch, one config (sweeps launch several in one process)
    for directory in directories:
        gin.add_config_file_search_path(directory)
    try:
        with quiet_gin_search():
            gin.parse_config_files_and_bindings(paths, gin_bindings)
    except (
        ValueError,
        SyntaxError,
        tokenize.TokenError,
        NameError,
        AttributeError,
        KeyError,
        ImportError,
        OSError,
    ) as error:
        # A KeyError's str() is its message in quotes.
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        suggestion = nearest_names(text).strip()
        lines = [f"Bad gin configuration: {text}"] + ([suggestion] if suggestion else [])
        lines.append(
            "Fix the binding or file named above; bindings read 'configurable.parameter = "
            "value', e.g. fc.build_model.width = 1024, and the configurables are listed in "
            "README.md (Configuration). A gin file `include`s files by path or by name in "
            "--gin_search_paths."
        )
        raise ConfigError("\n".join(lines)) from error
    asked = []
    for path in paths:
        with open(path, encoding="utf-8") as stream:
            asked.append(f"# --gin_file={path}\n" + stream.read())
    asked += ["# --gin_bindings\n" + "\n".join(gin_bindings)] if gin_bindings else []
    return "\n".join(asked) + "\n"

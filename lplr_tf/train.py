"""lplr-train: trains one gin configuration and measures why gradient descent converges fast.

    lplr-train --gin_file=digits_fc_gd.gin --workdir=runs/demo \\
        --gin_bindings='fc.build_model.width = 1024'

A gin file is a path, or the bare name of a config shipped with lplr_tf or found in a
--gin_search_paths directory. Every knob is a gin binding (README: Configuration).
Re-running the same command on the same workdir resumes from the newest checkpoint.

Exit codes: 0 the run ended `converged` or `max_steps`; 1 an unexpected error (a bug: the
traceback is printed); 2 a configuration or environment error (one message naming the value
and the fix: a bad setting or gin file, an unwritable or full disk, a damaged run directory,
an unreachable multi-worker peer); 3 the run `diverged`; 4 preempted (SIGTERM): rerun the
same command to resume; 5 the workdir is locked by another live run.
"""

import contextlib
import difflib
import errno
import inspect
import logging as std_logging
import os
import re
import sys
import textwrap
import tokenize

import gin
import importlib_resources
from absl import app, flags, logging

from lplr_tf import errors
from lplr_tf.console import import_tensorflow_quietly, verdict_paragraph
from lplr_tf.errors import ConfigError
from lplr_tf.preemption import Interrupted, SigtermRaises
from lplr_tf.rundir import RunDirectory

FLAG_HELP = {
    "gin_file": "Gin config file (repeatable): a path, or the bare name of a config in a "
    "--gin_search_paths directory or shipped with lplr_tf (e.g. digits_fc_gd.gin).",
    "gin_bindings": "Gin binding (repeatable), applied after the files, e.g. "
    "--gin_bindings='fc.build_model.width = 1024'.",
    "gin_search_paths": "Directory (repeatable) searched, before the shipped configs, for "
    "--gin_file names and for the files that gin files `include`.",
    "workdir": "Run directory (required): metrics, summary, plots, TensorBoard events and "
    "checkpoints. Rerun on it to resume.",
}
FLAGS = (
    flags.DEFINE_multi_string("gin_file", [], FLAG_HELP["gin_file"]),
    flags.DEFINE_multi_string("gin_bindings", [], FLAG_HELP["gin_bindings"]),
    flags.DEFINE_multi_string("gin_search_paths", [], FLAG_HELP["gin_search_paths"]),
    flags.DEFINE_string("workdir", None, FLAG_HELP["workdir"]),
)
_GIN_FILES, _GIN_BINDINGS, _GIN_SEARCH_PATHS, _WORKDIR = FLAGS
HELP_FLAGS = ("--help", "-help", "--helpshort", "-h", "-?")


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
def _quiet_gin_search():
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
        with _quiet_gin_search():
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


def prepare_workdir(workdir):
    if not workdir:
        raise ConfigError("--workdir is required: the run directory, e.g. --workdir=runs/demo.")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe_path = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe_path, "w", encoding="utf-8"):
            pass
        os.remove(probe_path)
    except OSError as error:
        raise ConfigError(
            f"--workdir={workdir} is not writable ({error.strerror}). Choose a directory you "
            "can write to."
        ) from error


def launch(gin_files, gin_bindings, workdir, search_paths=()):
    """Parses the config, runs the experiment, and returns the summary.

    Nothing is written to the workdir before the run lock is taken (`experiment.run` writes
    config.gin under it).
    """
    from lplr_tf import experiment  # Registers every configurable before parsing.

    config_text = parse_config(gin_files, gin_bindings, search_paths)
    prepare_workdir(workdir)
    return experiment.run(workdir, config_text=config_text)


# TypeErrors that a call with arguments its callee's signature does not accept raises.
_SIGNATURE_ERROR = re.compile(
    r"missing \d+ required|unexpected keyword argument|takes \d+ positional argument|"
    r"takes from \d+ to \d+ positional|positional arguments? but \d+ (?:was|were) given|"
    r"got multiple values for argument|object is not callable"
)


def _innermost_file(error):
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return "" if trace is None else trace.tb_frame.f_code.co_filename


def configuration_call_error(error):
    """A one-message explanation when `error` is a configurable called with wrong arguments.

    gin raises these while calling what a config references: a required parameter that no
    binding sets (RuntimeError 'Required bindings ...'), or a TypeError raised by the call
    itself (not inside the callee: the innermost frame is gin's or preflight's call).

    Returns:
      The message, or None when `error` is something else (then it is a bug).
    """
    text = str(error)
    first_line = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, RuntimeError) and first_line.startswith("Required bindings for"):
        return (
            f"{first_line}. Bind them in a gin file or with --gin_bindings, e.g. "
            "experiment.run.dataset = @data.digits."
        )
    if not isinstance(error, TypeError) or not _SIGNATURE_ERROR.search(first_line):
        return None
    innermost = _innermost_file(error)
    called_by_gin = os.path.join("gin", "config.py") in innermost
    if not (called_by_gin or innermost.endswith(os.path.join("lplr_tf", "preflight.py"))):
        return None
    configurables = re.findall(r"In call to configurable '([\w.]+)'", text)
    where = f" (calling configurable '{configurables[0]}')" if configurables else ""
    return (
        f"{first_line}{where}. The config references a function or class with arguments it "
        "does not accept: bind every required parameter (e.g. "
        "keras.schedules.CosineDecay.initial_learning_rate = 0.1), and check that each "
        "@reference names the kind of function its parameter expects (README: Configuration)."
    )


def _disk_full(error):
    """Whether `error`, or an error it came from, is 'no space left' (or a full quota)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _error_detail(error):
    """The first line of an error, without TensorFlow's op decorations."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]$", "", text)


def _one_message(error):
    """The error's text without gin's 'In call to configurable' trail."""
    lines = [line for line in str(error).splitlines() if "In call to configurable" not in line]
    return "\n".join(lines).strip()


def main(argv):
    """Runs one launch; returns the exit code (lplr_tf.errors)."""
    # TensorFlow's checkpoint writer logs one absl INFO line per save; keep ours readable.
    std_logging.getLogger("absl").addFilter(
        lambda record: not record.pathname.endswith("functional_saver.py")
    )
    if len(argv) > 1:
        named = " ".join(argv[1:])
        hint = f" Did you mean --gin_file={argv[1]}?" if argv[1].endswith(".gin") else ""
        logging.error(
            "Unexpected argument(s) %s: lplr-train takes flags only (--gin_file, "
            "--gin_bindings, --gin_search_paths, --workdir).%s Every other knob is a gin "
            "binding: --gin_bindings='fc.build_model.width = 1024'. See lplr-train --help.",
            named,
            hint,
        )
        return errors.EXIT_CONFIG_ERROR
    workdir = _WORKDIR.value
    try:
        with SigtermRaises():
            summary = launch(
                _GIN_FILES.value, _GIN_BINDINGS.value, workdir, _GIN_SEARCH_PATHS.value
            )
    except Interrupted as interruption:
        where = (
            "before training started or while finishing"
            if interruption.step is None
            else f"at step {interruption.step} (checkpoint written)"
        )
        logging.warning("Preempted by SIGTERM %s; rerun the same command to resume.", where)
        return errors.EXIT_PREEMPTED
    except errors.RunLockedError as error:
        logging.error("%s", error)
        return errors.EXIT_LOCKED
    except Exception as error:  # classified below; anything else is a bug, re-raised
        if _disk_full(error):
            logging.error(
                "No space left on the disk of --workdir=%s (%s). Free some space (or raise the "
                "quota) and rerun the same command: the run resumes from its last checkpoint.",
                workdir,
                _error_detail(error),
            )
            return errors.EXIT_CONFIG_ERROR
        message = _one_message(error) if isinstance(error, ValueError) else None
        message = message or configuration_call_error(error)
        if message is None:
            raise
        # Every ValueError of lplr_tf names the value, what was expected and the fix.
        logging.error("%s", message)
        return errors.EXIT_CONFIG_ERROR
    run_dir = RunDirectory(workdir)
    sys.stdout.write("\n" + verdict_paragraph(summary, run_dir.summary, run_dir.convergence_plot))
    sys.stdout.flush()
    return errors.EXIT_DIVERGED if summary["status"] == "diverged" else errors.EXIT_OK


def help_text():
    """What `lplr-train --help` prints: usage, the flags with their help, the exit codes."""
    lines = [__doc__.strip(), "", "Flags:"]
    for name, text in FLAG_HELP.items():
        lines.append(f"  --{name}")
        lines += [f"      {line}" for line in textwrap.wrap(text, width=84)]
    lines += ["", "absl's own flags (logging verbosity, ...): lplr-train --helpfull"]
    return "\n".join(lines) + "\n"


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"lplr-train: {error}\nSee lplr-train --help for the flags.\n")
        sys.exit(errors.EXIT_CONFIG_ERROR)


def console_main():
    """The `lplr-train` command."""
    if any(argument in HELP_FLAGS for argument in sys.argv[1:]):
        sys.stdout.write(help_text())
        sys.exit(errors.EXIT_OK)
    with SigtermRaises():  # SIGTERM during TensorFlow's slow import exits 4 too
        try:
            import_tensorflow_quietly()
            app.run(main, flags_parser=_parse_flags)
        except Interrupted:
            sys.stderr.write("Preempted by SIGTERM during start-up; rerun the same command.\n")
            sys.exit(errors.EXIT_PREEMPTED)


if __name__ == "__main__":
    console_main()

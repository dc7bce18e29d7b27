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

import errno
import logging as std_logging
import os
import re
import sys
import textwrap

from absl import app, flags, logging

from lplr_tf import errors, gin_config
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

    config_text = gin_config.parse_config(gin_files, gin_bindings, search_paths)
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
    figures = ", ".join(run_dir.convergence_plots()) or run_dir.convergence_plot  # as written
    sys.stdout.write("\n" + verdict_paragraph(summary, run_dir.summary, figures))
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

"""The absl launcher `lplr-train`: flags -> gin -> experiment.run.

    lplr-train --gin_file=digits_fc_gd.gin --workdir=runs/demo \
        --gin_bindings='fc.build_model.width = 1024'

Flags: --gin_file (repeatable; a path, or the bare name of a config shipped in
gin_configs/), --gin_bindings (repeatable), --workdir. Every other knob is a gin binding.

Exit codes (lplr_tf.errors): 0 the run ended `converged` or `max_steps`; 1 an unexpected
error (traceback); 2 a configuration error (one message naming the value and the fix); 3 the
run `diverged`; 4 preempted (SIGTERM): a checkpoint was written, rerun the same command to
resume; 5 the workdir is locked by another live run.

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

import logging as std_logging
import os
import tokenize

import gin
import importlib_resources
from absl import app, flags, logging

from lplr_tf import errors
from lplr_tf.errors import ConfigError
from lplr_tf.rundir import RunDirectory
from lplr_tf.trainer import Interrupted

FLAGS = (
    flags.DEFINE_multi_string(
        "gin_file", [], "Gin config file: a path, or the bare name of a file in gin_configs/."
    ),
    flags.DEFINE_multi_string(
        "gin_bindings", [], "Gin binding, e.g. 'fc.build_model.width = 1024'."
    ),
    flags.DEFINE_string("workdir", None, "Run directory for metrics, summary, plots, events."),
)
_GIN_FILES, _GIN_BINDINGS, _WORKDIR = FLAGS


def shipped_configs_dir():
    """The folder of the gin files installed with lplr_tf."""
    return str(importlib_resources.files("lplr_tf.gin_configs"))


def resolve_config_file(name):
    """Returns the path of a gin file given as a path or as a bare name in gin_configs/."""
    if os.path.isfile(name):
        return name
    candidate = os.path.join(shipped_configs_dir(), os.path.basename(name))
    if os.path.isfile(candidate):
        return candidate
    available = sorted(f for f in os.listdir(shipped_configs_dir()) if f.endswith(".gin"))
    raise ConfigError(
        f"--gin_file={name}: no such file, and no config of that name in "
        f"{shipped_configs_dir()}. Give a path to a .gin file or one of: {', '.join(available)}."
    )


def parse_config(gin_files, gin_bindings):
    """Parses and finalizes the gin config; returns the text of what was asked (config.gin)."""
    paths = [resolve_config_file(name) for name in gin_files]
    gin.clear_config()  # one launch, one config (sweeps launch several in one process)
    gin.add_config_file_search_path(shipped_configs_dir())
    # gin logs a spurious error for every `include` it then finds on the search path.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        gin.parse_config_files_and_bindings(paths, gin_bindings)
    except (ValueError, SyntaxError, tokenize.TokenError) as error:
        raise ConfigError(
            f"Bad gin configuration: {error}\nFix the binding or file named above; bindings "
            "read 'configurable.parameter = value', e.g. fc.build_model.width = 1024, and the "
            "configurables are listed in README.md (Configuration)."
        ) from error
    finally:
        logging.set_verbosity(verbosity)
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
        probe_path = os.path.join(workdir, ".write_test")
        with open(probe_path, "w", encoding="utf-8"):
            pass
        os.remove(probe_path)
    except OSError as error:
        raise ConfigError(
            f"--workdir={workdir} is not writable ({error.strerror}). Choose a directory you "
            "can write to."
        ) from error


def launch(gin_files, gin_bindings, workdir):
    """Parses the config, runs the experiment, and returns the summary."""
    from lplr_tf import experiment  # Registers every configurable before parsing.

    prepare_workdir(workdir)
    config_text = parse_config(gin_files, gin_bindings)
    run_dir = RunDirectory(workdir)
    if run_dir.has_checkpoints() and run_dir.read_config() not in (None, config_text):
        raise ConfigError(
            f"--workdir={workdir} holds a run started with another configuration (see "
            f"{run_dir.config}); resuming needs the same --gin_file and --gin_bindings. "
            "Use a new --workdir for a new configuration."
        )
    run_dir.write_config(config_text)
    return experiment.run(workdir)


def main(argv):
    # TensorFlow's checkpoint writer logs one absl INFO line per save; keep ours readable.
    std_logging.getLogger("absl").addFilter(
        lambda record: not record.pathname.endswith("functional_saver.py")
    )
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every knob is a gin binding.")
    try:
        summary = launch(_GIN_FILES.value, _GIN_BINDINGS.value, _WORKDIR.value)
    except ValueError as error:
        # Every ValueError of lplr_tf names the value, what was expected and the fix.
        logging.error("%s", error)
        return errors.EXIT_CONFIG_ERROR
    except errors.RunLockedError as error:
        logging.error("%s", error)
        return errors.EXIT_LOCKED
    except Interrupted as interruption:
        logging.warning(
            "Preempted at step %d; rerun the same command to resume.", interruption.step
        )
        return errors.EXIT_PREEMPTED
    logging.info("Summary written to %s", RunDirectory(_WORKDIR.value).summary)
    logging.info("%s", summary.get("verdict", summary["status"]))
    return errors.EXIT_DIVERGED if summary["status"] == "diverged" else errors.EXIT_OK


def console_main():
    app.run(main)


if __name__ == "__main__":
    console_main()

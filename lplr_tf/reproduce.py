"""`lplr-reproduce`: the paper's three experiments on real data, in one resumable command.

    lplr-reproduce --workdir=runs/reproduce            # the full reproduction (13-20 min, 2 CPUs)
    lplr-reproduce --workdir=/tmp/smoke --quick        # a seconds-long smoke version

The experiments (each a sweep of `lplr_tf.sweep.run_sweep` on the local backend, in this
process, in its own directory below the workdir):

(a) `fc_gd`: binary MNIST (bundled real images), a fully connected net in the NTK
    parameterization, full-batch GD at η = 1/β₀ (`mnist_binary_fc_gd.gin`).
(b) `width_ablation`: binary MNIST, depth-2 ReLU nets in the standard parameterization at
    widths 128 … 4096, full-batch GD at two step sizes, three seeds
    (`mnist_width_ablation.gin`): the paper's fixed step η = 0.003 at every width (so
    c = η·β₀ grows with the width) and the smaller step η = 0.5/β₀ (c = 0.5 at every width).
(c) `resnet_sgd`: a ResNet with BatchNorm, mini-batch SGD at η = 1/β₀, three seeds, on the
    CIFAR-10 subset when CIFAR-10 is prepared for tensorflow-datasets, else on the bundled
    MNIST, saying which and why (`choose_resnet_data`).

Then it writes `workdir/REPRODUCTION.md` (tables and figures, `reproduce_report`) and, with
`--readme=README.md`, copies its marked block into that file between the same markers.

Resumable like every run: rerunning the command skips the runs that finished (their
summary.json holds a final status), resumes an interrupted one from its checkpoint, and
rewrites the report from every run. A workdir keeps the mode it was made with: a `--quick`
workdir cannot continue as a full one (their runs differ) and the other way round.

Exit codes: 0 every run finished; 1 a run failed unexpectedly; 2 a configuration error;
4 preempted by SIGTERM (rerun the same command to resume).
"""

import dataclasses
import json
import os
import sys
import time

from absl import flags

from lplr_tf import errors
from lplr_tf.console import format_duration
from lplr_tf.errors import ConfigError

FC_GD, WIDTH_ABLATION, RESNET_SGD = "fc_gd", "width_ablation", "resnet_sgd"
EXPERIMENTS = (FC_GD, WIDTH_ABLATION, RESNET_SGD)
WIDTH_KEY = "fc.build_model.width"
STEP_KEY = "protocol.gd.learning_rate_times_sharpness"  # None: the config's fixed η
WIDTHS = (128, 256, 512, 1024, 2048, 4096)
QUICK_WIDTHS = (16, 32)
FIXED_STEP, SMALL_STEP = "None", "0.5"  # grid values of STEP_KEY (gin text)
SEEDS = {FC_GD: 1, WIDTH_ABLATION: 3, RESNET_SGD: 3}
RESNET_DATA = ("auto", "cifar10", "mnist")
TITLES = {
    FC_GD: "(a) binary MNIST, fully connected net (NTK parameterization), full-batch GD",
    WIDTH_ABLATION: "(b) width ablation on binary MNIST: fixed step η = 0.003 vs η = 0.5/β₀",
    RESNET_SGD: "(c) ResNet + mini-batch SGD",
}
DATA_TITLES = {"cifar10": "CIFAR-10 (airplane vs automobile)", "mnist": "bundled MNIST (0 vs 1)"}
MODE_FILE = "reproduce.json"
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")
# Wall minutes of each experiment measured by the full command on 2 CPU cores, quiet (load
# average ~1: 0.4, 8.3, 4.1 min) and shared (load ~3); the progress lines quote them before an
# experiment starts.
EXPECTED_MINUTES = {FC_GD: "1-3", WIDTH_ABLATION: "8-16", RESNET_SGD: "4-7"}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments as a sweep.

    Attributes:
      name: FC_GD, WIDTH_ABLATION or RESNET_SGD.
      title: One line for the report and the progress lines.
      directory: The sweep directory, relative to the workdir.
      gin_file: The config (a name in gin_configs/).
      grid: `--grid` texts of the sweep.
      seeds: Number of seeds (0 … seeds − 1).
      bindings: Gin bindings for every run (e.g. a CIFAR-10 data_dir).
      data_note: Which data the experiment ran on and why (the ResNet's choice).
    """

    name: str
    title: str
    directory: str
    gin_file: str
    grid: tuple = ()
    seeds: int = 1
    bindings: tuple = ()
    data_note: str = "bundled MNIST"

    def sweep_command(self, workdir, quick):
        """The equivalent `lplr-sweep` command line (shown in the report)."""
        parts = ["lplr-sweep", f"--gin_file={self.gin_file}"]
        parts += [f'--gin_bindings="{binding}"' for binding in self.bindings]
        parts += [f"--grid '{grid}'" for grid in self.grid]
        parts += [f"--seeds={self.seeds}", f"--workdir={os.path.join(workdir, self.directory)}"]
        return " ".join(parts + (["--smoke"] if quick else []))


@dataclasses.dataclass(frozen=True)
class ResNetData:
    """The data of experiment (c): "cifar10" or "mnist", its config and why it was chosen."""

    dataset: str
    gin_file: str
    bindings: tuple
    note: str


def default_cifar10_data_dir():
    """tensorflow-datasets' default data directory (where `--resnet_data=auto` looks)."""
    import tensorflow_datasets as tfds

    return os.fspath(tfds.builder("cifar10").data_dir_root)


def choose_resnet_data(choice, cifar10_data_dir=None):
    """Which data experiment (c) runs on (module docstring); never a silent fallback.

    Args:
      choice: "auto" (CIFAR-10 when prepared, else bundled MNIST, saying so), "cifar10" or
        "mnist".
      cifar10_data_dir: The tfds directory holding CIFAR-10; None: tfds' default.

    Returns:
      A `ResNetData`.

    Raises:
      ConfigError: an unknown choice; CIFAR-10 asked for (by "cifar10" or by giving
        `cifar10_data_dir`) but not prepared there.
    """
    if choice not in RESNET_DATA:
        raise ConfigError(
            f"--resnet_data={choice!r}; expected one of {', '.join(RESNET_DATA)} (auto: "
            "CIFAR-10 when prepared, else the bundled MNIST)."
        )
    mnist = ResNetData("mnist", "mnist_resnet_sgd.gin", (), "")
    if choice == "mnist":
        return dataclasses.replace(mnist, note="bundled MNIST, as asked (--resnet_data=mnist)")
    from lplr_tf import image_sources  # imports TensorFlow and tensorflow-datasets

    directory = cifar10_data_dir or default_cifar10_data_dir()
    try:
        image_sources.check_prepared("cifar10", directory)
    except image_sources.DatasetNotAvailableError as error:
        if choice == "cifar10" or cifar10_data_dir is not None:
            raise ConfigError(
                f"--cifar10_data_dir={directory}: CIFAR-10 is not prepared there. {error} "
                "Or run experiment (c) on the bundled MNIST: --resnet_data=mnist."
            ) from error
        return dataclasses.replace(
            mnist,
            note=(
                f"bundled MNIST: CIFAR-10 is not prepared in {directory} (tensorflow-datasets' "
                "default directory); pass --cifar10_data_dir=DIR with CIFAR-10 prepared there "
                "to run the paper's CIFAR-10 version"
            ),
        )
    return ResNetData(
        "cifar10",
        "cifar10_resnet_sgd.gin",
        (f"data.cifar10.data_dir = '{directory}'",),
        f"CIFAR-10 prepared in {directory}",
    )


def plan_experiments(names=EXPERIMENTS, *, quick=False, resnet=None):
    """The experiments to run, in the order of `EXPERIMENTS`.

    Args:
      names: The experiments to include (names of EXPERIMENTS).
      quick: Tiny versions (smoke.gin is added by the sweep; two widths, one seed).
      resnet: The `ResNetData` of experiment (c) (required when it is included).

    Raises:
      ConfigError: an unknown experiment name.
    """
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown or not names:
        raise ConfigError(
            f"--experiments={','.join(names)}; expected a comma-separated subset of "
            f"{','.join(EXPERIMENTS)}."
        )
    widths = ",".join(str(width) for width in (QUICK_WIDTHS if quick else WIDTHS))
    grid = (f"{WIDTH_KEY}=[{widths}]", f"{STEP_KEY}=[{FIXED_STEP},{SMALL_STEP}]")
    planned = {
        FC_GD: Experiment(FC_GD, TITLES[FC_GD], FC_GD, "mnist_binary_fc_gd.gin"),
        WIDTH_ABLATION: Experiment(
            WIDTH_ABLATION, TITLES[WIDTH_ABLATION], WIDTH_ABLATION, "mnist_width_ablation.gin", grid
        ),
    }
    if RESNET_SGD in names:
        if resnet is None:
            raise ValueError("plan_experiments: resnet=None; pass choose_resnet_data(...).")
        title = f"{TITLES[RESNET_SGD]} on {DATA_TITLES[resnet.dataset]}"
        directory = f"{RESNET_SGD}_{resnet.dataset}"
        planned[RESNET_SGD] = Experiment(
            RESNET_SGD, title, directory, resnet.gin_file, (), 1, resnet.bindings, resnet.note
        )
    return [
        dataclasses.replace(planned[name], seeds=1 if quick else SEEDS[name])
        for name in EXPERIMENTS
        if name in names
    ]


def _check_mode(workdir, quick):
    """Records the workdir's mode on first use; refuses to mix quick and full runs."""
    path = os.path.join(workdir, MODE_FILE)
    mode = "quick" if quick else "full"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as stream:
            recorded = json.load(stream).get("mode")
        if recorded != mode:
            raise ConfigError(
                f"--workdir={workdir} holds a {recorded} reproduction; got a {mode} one "
                f"({'--quick' if quick else 'no --quick'}). Their runs differ: use another "
                "--workdir, or rerun with the same mode to resume."
            )
        return
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump({"mode": mode}, stream)


def load_average():
    """The 1-minute load average (how busy this machine was; None where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def reproduce(
    workdir,
    *,
    quick=False,
    experiments=EXPERIMENTS,
    resnet_data="auto",
    cifar10_data_dir=None,
    readme=None,
    log=print,
    progress_seconds=30.0,
):
    """Runs the paper's experiments and writes REPRODUCTION.md (module docstring).

    Returns:
      (exit code, {experiment name: sweep.SweepResult}).

    Raises:
      ConfigError: a bad flag, a mixed-mode workdir, CIFAR-10 asked for but not prepared,
        or `readme` without all three experiments or without the markers.
      trainer.Interrupted: SIGTERM during a run (rerun to resume).
    """
    from lplr_tf import reproduce_report, sweep

    if not workdir:
        raise ConfigError("lplr-reproduce: --workdir is required, e.g. --workdir=runs/reproduce.")
    experiments = tuple(experiments)
    if readme and set(experiments) != set(EXPERIMENTS):
        raise ConfigError(
            f"--readme={readme} with --experiments={','.join(experiments)}: the README block "
            "holds all three experiments; drop --experiments or --readme."
        )
    if readme:
        reproduce_report.check_readme(readme)
    resnet = (
        choose_resnet_data(resnet_data, cifar10_data_dir) if RESNET_SGD in experiments else None
    )
    plan = plan_experiments(experiments, quick=quick, resnet=resnet)
    _check_mode(workdir, quick)
    start, load_start = time.monotonic(), load_average()
    log(
        f"[reproduce] {'quick smoke version' if quick else 'full reproduction'}: "
        f"{len(plan)} experiment(s) in {workdir}; load average "
        f"{'unknown' if load_start is None else f'{load_start:.2f}'} on {os.cpu_count()} CPUs"
    )
    if resnet is not None:
        log(f"[reproduce] experiment (c) runs on {resnet.note}")
    results, seconds = {}, {}
    for index, experiment in enumerate(plan, 1):
        prefix = f"[reproduce {index}/{len(plan)} {experiment.name}]"
        expected = "" if quick else f"; about {EXPECTED_MINUTES[experiment.name]} min (measured)"
        log(f"{prefix} {experiment.title}{expected}")
        began = time.monotonic()
        results[experiment.name] = sweep.run_sweep(
            [experiment.gin_file],
            list(experiment.bindings),
            list(experiment.grid),
            experiment.seeds,
            os.path.join(workdir, experiment.directory),
            smoke=quick,
            log=lambda line, prefix=prefix: log(f"{prefix} {line}"),
            command=experiment.sweep_command(workdir, quick),
            progress_seconds=progress_seconds,
        )
        seconds[experiment.name] = time.monotonic() - began
        log(f"{prefix} done in {format_duration(seconds[experiment.name])}")
    timing = reproduce_report.Timing(
        time.monotonic() - start, load_start, load_average(), os.cpu_count(), seconds
    )
    path, block = reproduce_report.write_report(workdir, plan, results, timing, quick=quick)
    log(f"[reproduce] wrote {path} ({timing.describe()})")
    if readme:
        reproduce_report.update_readme(readme, block)
        log(f"[reproduce] copied the reproduction block into {readme}")
    codes = [result.exit_code() for result in results.values()]
    code = errors.EXIT_ERROR if errors.EXIT_ERROR in codes else max(codes, default=0)
    return code, results


def define_flags():
    """The flags of lplr-reproduce, on their own FlagValues."""
    values = flags.FlagValues()
    define = dict(flag_values=values)
    flags.DEFINE_string("workdir", None, "Directory of the reproduction (required).", **define)
    flags.DEFINE_bool(
        "quick", False, "A seconds-long smoke version: tiny n, few steps, two widths, one seed.",
        **define,
    )  # fmt: skip
    flags.DEFINE_list(
        "experiments", list(EXPERIMENTS), "The experiments to run (default: all three).", **define
    )
    flags.DEFINE_enum(
        "resnet_data", "auto", list(RESNET_DATA),
        "Data of experiment (c): auto (CIFAR-10 when prepared, else bundled MNIST, said so), "
        "cifar10 (an error when not prepared) or mnist.",
        **define,
    )  # fmt: skip
    flags.DEFINE_string(
        "cifar10_data_dir", None,
        "tensorflow-datasets directory with CIFAR-10 prepared (default: tfds' own); given "
        "and not prepared is an error.",
        **define,
    )  # fmt: skip
    flags.DEFINE_string(
        "readme", None,
        "Copy REPRODUCTION.md's marked block into this file between the same markers.",
        **define,
    )  # fmt: skip
    flags.DEFINE_float("progress_seconds", 30.0, "Seconds between progress reports.", **define)
    return values


def usage():
    """The text of `lplr-reproduce --help`."""
    return __doc__ + "\nFlags:\n" + define_flags().get_help(include_special_flags=False)


def main(argv=None, log=print):
    """Runs lplr-reproduce on argv (without the program name); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(argument in HELP_FLAGS for argument in argv):
        log(usage())
        return errors.EXIT_OK
    values = define_flags()
    try:
        rest = values(["lplr-reproduce", *argv])
    except flags.Error as error:
        raise ConfigError(f"{error}. Run `lplr-reproduce --help` for the flags.") from error
    if len(rest) > 1:
        raise ConfigError(
            f"Unexpected arguments {rest[1:]}; lplr-reproduce takes only flags "
            "(--workdir=DIR, --quick, ...). Run `lplr-reproduce --help`."
        )
    code, _ = reproduce(
        values.workdir,
        quick=values.quick,
        experiments=values.experiments,
        resnet_data=values.resnet_data,
        cifar10_data_dir=values.cifar10_data_dir,
        readme=values.readme,
        log=log,
        progress_seconds=values.progress_seconds,
    )
    return code


def console_main():
    """Entry point of `lplr-reproduce`: a configuration error prints one message, exits 2."""
    import logging

    from lplr_tf.console import import_tensorflow_quietly
    from lplr_tf.preemption import Interrupted, SigtermRaises

    logging.basicConfig(format="%(message)s")
    try:
        with SigtermRaises():
            if not any(argument in HELP_FLAGS for argument in sys.argv[1:]):
                import_tensorflow_quietly()
            code = main(sys.argv[1:], log=lambda line: print(line, flush=True))
    except ValueError as error:  # ConfigError and every other message of lplr_tf
        print(f"lplr-reproduce: error: {error}", file=sys.stderr)
        code = errors.EXIT_CONFIG_ERROR
    except Interrupted as error:
        print(f"lplr-reproduce: {error}; rerun the same command to resume.", file=sys.stderr)
        code = errors.EXIT_PREEMPTED
    sys.exit(code)


if __name__ == "__main__":
    console_main()

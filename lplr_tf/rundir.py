"""The run directory: its layout, and the one reader and writer of each file in it.

    workdir/
      config.gin             what was asked: the gin files and bindings, verbatim
      operative_config.gin   what was used: every configurable parameter after defaults
      metrics.jsonl          one JSON object per logged step (the source of truth)
      summary.json           the convergence summary
      plots/                 convergence.png (.pdf, .svg: figures.FigureSettings.formats)
      tb/                    TensorBoard events
      checkpoints/           for resume after a crash or preemption
      reference.npz          K₀ and r₀ of the first NTK probe, stored once (for resume)
      run.json               facts measured before the first step (η from β₀, the a-priori
                             check, the data), stored once and reported in the summary
      run.lock               present while a process runs on this workdir
      workers/<task>/        the run directory of a non-chief worker of a cluster

Every module that reads or writes these files goes through `RunDirectory`; nothing else
spells a file name.
"""

import json
import math
import os

import numpy as np

from lplr_tf.values import json_safe

CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOTS_DIR = "plots"
CONVERGENCE_STEM = "convergence"  # plots/convergence.<format>
FIGURE_FORMATS = ("png", "pdf", "svg")  # the formats figures.FigureSettings may choose
CONVERGENCE_PLOT = f"{CONVERGENCE_STEM}.png"
TENSORBOARD_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"
REFERENCE_FILE = "reference.npz"
FACTS_FILE = "run.json"
LOCK_FILE = "run.lock"
WORKERS_DIR = "workers"


def write_atomically(path, text):
    """Writes `text` to `path` through a temporary file and a rename: readers never see half."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())  # on disk before the rename makes it visible
    os.replace(temporary, path)


class RunDirectory:
    """The files of one run directory.

    Args:
      path: The directory (created by `create`, not by the constructor).
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunDirectory({self.path!r})"

    def _join(self, *parts):
        return os.path.join(self.path, *parts)

    @property
    def config(self):
        return self._join(CONFIG_FILE)

    @property
    def operative_config(self):
        return self._join(OPERATIVE_CONFIG_FILE)

    @property
    def metrics(self):
        return self._join(METRICS_FILE)

    @property
    def summary(self):
        return self._join(SUMMARY_FILE)

    @property
    def plots(self):
        return self._join(PLOTS_DIR)

    @property
    def convergence_plot(self):
        return self._join(PLOTS_DIR, CONVERGENCE_PLOT)

    @property
    def convergence_stem(self):
        """plots/convergence without extension: the figure is written in each chosen format."""
        return self._join(PLOTS_DIR, CONVERGENCE_STEM)

    def convergence_plots(self, formats=None):
        """The paths of the convergence figure in `formats`; None: those that exist."""
        paths = [f"{self.convergence_stem}.{f}" for f in formats or FIGURE_FORMATS]
        return paths if formats is not None else [p for p in paths if os.path.isfile(p)]

    @property
    def tensorboard(self):
        return self._join(TENSORBOARD_DIR)

    @property
    def checkpoints(self):
        return self._join(CHECKPOINTS_DIR)

    @property
    def reference(self):
        return self._join(REFERENCE_FILE)

    @property
    def facts(self):
        return self._join(FACTS_FILE)

    @property
    def lock(self):
        return self._join(LOCK_FILE)

    @property
    def name(self):
        """The run's name: the directory's base name."""
        return os.path.basename(os.path.normpath(self.path))

    def worker(self, task_type, task_id):
        """The run directory of a non-chief worker: workers/<task_type>_<task_id>/."""
        return RunDirectory(self._join(WORKERS_DIR, f"{task_type}_{task_id}"))

    def create(self):
        os.makedirs(self.path, exist_ok=True)
        return self

    def has_checkpoints(self):
        return os.path.isdir(self.checkpoints)

    # config.gin and operative_config.gin ------------------------------------------------

    def read_config(self):
        """The text of config.gin, or None when there is none."""
        if not os.path.isfile(self.config):
            return None
        with open(self.config, encoding="utf-8") as stream:
            return stream.read()

    def write_config(self, text):
        write_atomically(self.config, text)

    def write_operative_config(self, text):
        write_atomically(self.operative_config, text)

    # metrics.jsonl ------------------------------------------------------------------------

    def read_metrics(self, path=None):
        """Reads metrics.jsonl (or the metrics file at `path`) into a list of dicts sorted by step.

        A last line that is not valid JSON (truncated by a crash) is skipped; a malformed
        line elsewhere is an error. When a step appears more than once, the last row wins.

        Raises:
          FileNotFoundError: the directory has no metrics.jsonl.
          ValueError: a malformed line before the last one, or a row without `step`.
        """
        path = path or self.metrics
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: no metrics file; expected the metrics.jsonl that lplr-train writes "
                "in every run directory. Check the workdir path, or whether the run started "
                "logging."
            )
        with open(path, encoding="utf-8") as stream:
            lines = [line for line in stream.read().split("\n") if line.strip()]
        rows_by_step = {}
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                if number == len(lines):
                    break  # Truncated by a crash mid-write.
                raise ValueError(
                    f"{path}:{number}: malformed JSON ({error}); expected one JSON object per "
                    "line. Remove or repair that line."
                ) from error
            except RecursionError as error:  # e.g. thousands of nested brackets
                raise ValueError(
                    f"{path}:{number}: the line {line[:40]!r}... nests too deeply to be a metrics "
                    "row; expected one flat JSON object per line. Remove or repair that line."
                ) from error
            if not isinstance(row, dict) or row.get("step") is None:
                raise ValueError(
                    f"{path}:{number}: row {line[:80]!r} has no `step`; expected a JSON object "
                    "with an integer step. Remove or repair that line."
                )
            step = row["step"]
            if isinstance(step, float) and math.isfinite(step) and step.is_integer():
                step = int(step)
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(
                    f"{path}:{number}: step = {str(step)[:40]}; expected a finite integer step. "
                    "Remove or repair that line."
                )
            row["step"] = step
            rows_by_step[step] = row
        return [rows_by_step[step] for step in sorted(rows_by_step)]

    @staticmethod
    def format_row(row):
        """One metrics.jsonl line (with its newline) for a row: sorted keys, strict JSON."""
        return json.dumps(json_safe(row), sort_keys=True) + "\n"

    # summary.json -------------------------------------------------------------------------

    def read_summary(self):
        """Returns the dict in summary.json, or None when there is none.

        Raises:
          ValueError: summary.json is not valid JSON.
        """
        if not os.path.isfile(self.summary):
            return None
        with open(self.summary, encoding="utf-8") as stream:
            try:
                return json.load(stream)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{self.summary}: malformed JSON ({error}); expected a summary written by "
                    "lplr_tf. Delete it and pass --learning_rate (and --l_star) to lplr-report "
                    "to recompute it."
                ) from error

    def write_summary(self, summary):
        """Writes summary.json (indent 2, sorted keys, strict JSON) atomically; returns its path."""
        text = json.dumps(json_safe(summary), indent=2, sort_keys=True, allow_nan=False)
        write_atomically(self.summary, text + "\n")
        return self.summary

    # run.json -----------------------------------------------------------------------------

    def read_facts(self):
        """The dict in run.json, or None when there is none or it does not read back whole."""
        if not os.path.isfile(self.facts):
            return None
        try:
            with open(self.facts, encoding="utf-8") as stream:
                facts = json.load(stream)
        except (OSError, json.JSONDecodeError):
            return None
        return facts if isinstance(facts, dict) else None

    def write_facts(self, facts):
        text = json.dumps(json_safe(facts), indent=2, sort_keys=True, allow_nan=False)
        write_atomically(self.facts, text + "\n")

    # reference.npz ------------------------------------------------------------------------

    def save_reference(self, arrays):
        """Stores the probes' reference arrays (K₀, r₀) once, atomically (NumPy .npz)."""
        temporary = self.reference + ".tmp.npz"
        with open(temporary, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.reference)

    def load_reference(self):
        """The arrays of reference.npz as a dict, or {} when there is none (never unpickles)."""
        if not os.path.isfile(self.reference):
            return {}
        with np.load(self.reference, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

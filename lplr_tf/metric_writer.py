"""Writes the metric history: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

metrics.jsonl is the source of truth that the analysis reads back; every line is flushed
as it is written, so a crash loses at most the line being written (the reader skips a
truncated last line). Non-finite numbers are written as null: JSON has no NaN.
"""

import json
import math
import os

import numpy as np
import tensorflow as tf


def json_safe(row):
    """Returns a copy of `row` with non-finite floats replaced by None."""
    safe = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        safe[key] = value
    return safe


class MetricWriter:
    """Appends metric rows to `workdir/metrics.jsonl` and scalars to `workdir/tb/`.

    Args:
      workdir: The run directory (must exist).
      kept_rows: The rows logged before a resume (up to the restored checkpoint). The file is
        first replaced, atomically, by exactly these rows: rows logged after the checkpoint
        by a crashed process are dropped, so every step appears once.
    """

    def __init__(self, workdir, kept_rows=()):
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        temporary = self.metrics_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(json_safe(row), sort_keys=True) + "\n" for row in kept_rows)
        os.replace(temporary, self.metrics_path)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        self._summary_writer = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

    def write(self, row):
        """Writes one row (a dict with an int `step`) to both sinks."""
        row = json_safe(row)
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        with self._summary_writer.as_default(step=row["step"]), np.errstate(over="ignore"):
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    # Summaries are float32: a finite float64 beyond its range becomes inf.
                    tf.summary.scalar(key, np.float32(value))

    def write_histogram(self, name, values, step):
        """Writes a histogram (e.g. the NTK eigenvalues) at `step`."""
        with self._summary_writer.as_default(step=step):
            tf.summary.histogram(name, np.asarray(values, np.float64))

    def write_text(self, name, text, step=0):
        """Writes text (e.g. the operative gin config) shown in TensorBoard's Text tab."""
        with self._summary_writer.as_default(step=step):
            # Markdown: indent by four spaces so gin files render as code.
            tf.summary.text(name, "    " + text.replace("\n", "\n    "))

    def close(self):
        self._file.close()
        self._summary_writer.flush()
        self._summary_writer.close()

"""Benchmark of one probe, part by part, against the GD step and the floor (not a timed test).

    .venv/bin/python scripts/benchmark_probes.py [--output benchmarks/probes.json] [--quick]
        [--repeats 5] [--old_repeats 2] [--sizes 256 1024 2048] [--skip_digits]
        [--skip_demo] [--skip_old]

In one process, side by side (interleaved rounds, median over rounds):

* FC 64-512-512-1 (`lplr_tf.models.fc.build_model`, NTK parameterization) on random data,
  n = 256, 1024, 2048 (O = 1):
  - gd_step: one `keras.optimizers.SGD` step on L = 1/(2n)‖f − y‖² (compiled);
  - ntk: Θ by `empirical_ntk` (a NumPy array on the host, a device tensor on a GPU);
  - lambda_max, lambda_min, kernel_drift: `kernel_statistics` with that quantity alone;
  - sharpness: `hessian.measure_sharpness`, warm-started (the previous probe was at other
    weights: a GD step is taken between rounds);
  - probe: the NTK part and the sharpness composed as the probe does: NTK →
    kernel_statistics(K, K₀) → sharpness (warm);
  - diagnostics: the product's whole probe, `Diagnostics.measure(step, probe=True)` (also
    the loss and gradient pass of the row);
  - floor: NTK + one float64 eigvalsh of K (NumPy on the host; TF on a GPU), timed with
    the process's BLAS threads and with one thread, the faster of the two counting (the
    probe's host solves use one thread up to 4096 rows: see ntk.statistics);
  - old: today's path before this change (NTK as a tensor, float64 copy, eigvalsh, ‖K −
    K₀‖₂ by a full SVD, ‖K − K₀‖_F, and 20 host-side Lanczos iterations from a cold start).
  Ratios: probe/floor (target <= 1.5), old/probe (the speedup), probe/gd_step.
* 10-class digits, n = 1797, O = 10 (n·O = 17,970 kernel rows, `output_mode='full'`),
  FC 64-512-512-10: K₀ at initialization, one GD step, then the whole probe once, with its
  parts, wall time and the peak resident memory of the probe (VmHWM, reset through
  /proc/self/clear_refs before it; targets < 3 min and < 8 GiB), next to the estimate of
  `probe_memory_bytes`, and the longest time between two polls of `should_stop` (how long
  an interrupt request can wait).
* The demo's training loop through the launcher (`lplr_tf.train.launch` on digits_fc_gd.gin)
  with its probes and without (diagnostics.ProbeSettings.measure_ntk = measure_sharpness =
  False), three rounds interleaved: the median of the last row's wall time (from the
  step-0 row to the end; target <= 1.5x).
* The demo (`make demo`: digits 0/1, n = 64, FC 64-1024-1, η = 2.5): a probe every 50
  steps up to step 900 (NTK, statistics with K₀, sharpness), Hessian-vector products per
  probe (target <= 10 on average), the largest relative deviation from the 20-iteration
  reference (target <= 1e-4), and the loop's time with probes over its time without
  (GD steps only; the recorder's own loss and gradient rows are not counted).

The oneDNN setting (TF_ENABLE_ONEDNN_OPTS and what TF reports) is printed and recorded.
"""

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import time

ONEDNN_ENV = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import threadpoolctl  # noqa: E402

from lplr_tf import hessian, ntk, train  # noqa: E402
from lplr_tf.data import digits  # noqa: E402
from lplr_tf.diagnostics import Diagnostics, ProbeSettings  # noqa: E402
from lplr_tf.models import fc  # noqa: E402
from lplr_tf.rundir import RunDirectory  # noqa: E402

GPU = bool(tf.config.list_logical_devices("GPU"))
BLAS = threadpoolctl.ThreadpoolController()  # once: a scan of the loaded libraries


def onednn_enabled():
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def peak_rss_reset():
    """Resets VmHWM of this process (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class PollClock:
    """should_stop that never stops but records when it was polled (interrupt latency)."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def __call__(self):
        self.times.append(time.perf_counter())
        return False

    def longest_gap(self):
        return max(b - a for a, b in zip(self.times, self.times[1:]))


class Problem:
    """A model, its data, a compiled SGD step, K₀ and the pieces of a probe."""

    def __init__(self, n, num_outputs, x, y, learning_rate, width=512, depth=2):
        self.n = n
        self.model = fc.build_model((x.shape[1],), num_outputs, width=width, depth=depth)
        self.x = tf.constant(x, tf.float32)
        self.y = tf.constant(y, tf.float32)
        optimizer = keras.optimizers.SGD(learning_rate)
        model, xt, yt = self.model, self.x, self.y

        @tf.function(jit_compile=False)
        def gd_step():
            with tf.GradientTape() as tape:
                loss = 0.5 * tf.reduce_sum(tf.square(model(xt, training=False) - yt)) / n
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        self.gd_step = gd_step
        # The probe at step 0: K₀, its statistics and the sharpness from cold starts; the
        # later probes start from their Ritz vectors (as the probe recorder does).
        self.kernel0 = self.ntk()
        self.vectors = None
        self.first_probe_s = timed(lambda: self.statistics(self.kernel0, keep=True))[1]
        hessian.measure_sharpness(model, xt, yt)
        # The product's probe on the same model (its own K₀ and warm starts, at step 0).
        self.diagnostics = Diagnostics(model, (xt, yt), settings=ProbeSettings())
        self.diagnostics.measure(0, probe=True)
        gd_step()

    def ntk(self, should_stop=None):
        with ntk.tf32_disabled():
            return ntk.empirical_ntk(self.model, self.x, as_numpy=not GPU, should_stop=should_stop)

    def statistics(self, kernel, quantities=None, should_stop=None, keep=False):
        """kernel_statistics warm-started from the previous probe (kept when `keep`)."""
        use_k0 = quantities is None or "kernel_drift" in quantities
        stats = ntk.kernel_statistics(
            kernel,
            self.kernel0 if use_k0 and kernel is not self.kernel0 else None,
            scale=1 / self.n,
            quantities=quantities,
            should_stop=should_stop,
            start_vectors=self.vectors,
        )
        if keep:
            self.vectors = {**(self.vectors or {}), **stats.vectors}
        return stats

    def sharpness(self):
        return hessian.measure_sharpness(self.model, self.x, self.y)

    def probe(self):
        kernel = self.ntk()
        stats = self.statistics(kernel, keep=True)
        return stats, self.sharpness()

    def product_probe(self):
        return self.diagnostics.measure(1, probe=True)

    def floor(self, single_thread=False):
        kernel = self.ntk()
        if single_thread:
            with BLAS.limit(limits=1, user_api="blas"):
                return float(np.linalg.eigvalsh(kernel.astype(np.float64) / self.n)[0])
        if GPU:
            k64 = tf.cast(kernel, tf.float64) / self.n
            return float(tf.linalg.eigvalsh(0.5 * (k64 + tf.transpose(k64)))[0])
        return float(np.linalg.eigvalsh(kernel.astype(np.float64) / self.n)[0])

    def old(self):
        """The probe before this change (diagnostics._ntk_fields and hessian.sharpness)."""
        theta = ntk.empirical_ntk(self.model, self.x)
        kernel = np.asarray(theta, dtype=np.float64) / self.n
        spectrum = ntk.ntk_spectrum(theta, scale=1.0 / self.n)
        kernel0 = np.asarray(self.kernel0, dtype=np.float64) / self.n
        difference = kernel - kernel0
        drift = np.linalg.norm(difference) / np.linalg.norm(kernel0)
        drift_op = np.linalg.norm(difference, 2)
        sharpness = hessian.sharpness(self.model, self.x, self.y)
        return spectrum.lambda_min, drift, drift_op, sharpness


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_random(n, repeats, old_repeats, skip_old, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    y = rng.standard_normal((n, 1)).astype(np.float32)
    problem = Problem(n, 1, x, y, learning_rate=0.05)
    kernel = problem.ntk()
    parts = {
        "gd_step": problem.gd_step,
        "ntk": problem.ntk,
        "lambda_max": lambda: problem.statistics(kernel, ["lambda_max"]),
        "lambda_min": lambda: problem.statistics(kernel, ["lambda_min"]),
        "kernel_drift": lambda: problem.statistics(kernel, ["kernel_drift"]),
        "sharpness": problem.sharpness,
        "probe": problem.probe,
        "diagnostics": problem.product_probe,
        "floor_blas_threads": problem.floor,
    }
    if not GPU:
        parts["floor_one_thread"] = lambda: problem.floor(single_thread=True)
    if not skip_old:
        parts["old"] = problem.old
    for fn in parts.values():  # warm-up: traces, first touches
        fn()
    times = {name: [] for name in parts}
    last = {}
    for round_ in range(repeats):
        for name, fn in parts.items():
            if name == "old" and round_ >= old_repeats:
                continue
            last[name], elapsed = timed(fn)
            times[name].append(elapsed)
        problem.gd_step()  # the next probe is at new weights (warm start across probes)
    row = {"case": "fc_random", "n": n, "num_outputs": 1, "kernel_rows": n}
    row.update({f"{name}_s": statistics.median(ts) for name, ts in times.items()})
    row["floor_s"] = min(row["floor_blas_threads_s"], row.get("floor_one_thread_s", math.inf))
    stats, sharp = last["probe"]
    row.update(
        {
            "probe_over_floor": row["probe_s"] / row["floor_s"],
            "diagnostics_over_floor": row["diagnostics_s"] / row["floor_s"],
            "probe_over_gd_step": row["probe_s"] / row["gd_step_s"],
            "lambda_min": stats.lambda_min,
            "lambda_max": stats.lambda_max,
            "kernel_drift_op": stats.kernel_drift_op,
            "solver_iterations": stats.iterations,
            "sharpness": sharp.value,
            "sharpness_hvps": sharp.iterations,
        }
    )
    if "old_s" in row:
        row["old_over_probe"] = row["old_s"] / row["probe_s"]
    # Agreement at the same weights: the probe against the old path's eigvalsh, SVD and
    # 20 host Lanczos iterations.
    stats, sharp = problem.probe()
    old = problem.old()
    row["rel_diff_vs_old"] = {
        "lambda_min": abs(stats.lambda_min - old[0]) / abs(old[0]),
        "kernel_drift_op": abs(stats.kernel_drift_op - old[2]) / abs(old[2]),
        "sharpness": abs(sharp.value - old[3]) / abs(old[3]),
    }
    return row


def bench_digits(n):
    data = digits(n=n, classes=tuple(range(10)))
    problem = Problem(n, 10, data.x, data.y, learning_rate=0.5)
    estimate = ntk.probe_memory_bytes(problem.model, problem.x, "full", device=GPU)
    peak_rss_reset()
    start_rss = peak_rss_bytes()
    clock = PollClock()
    kernel, ntk_s = timed(lambda: problem.ntk(should_stop=clock))
    stats, stats_s = timed(lambda: problem.statistics(kernel, should_stop=clock, keep=True))
    clock()
    sharp, sharp_s = timed(problem.sharpness)  # one compiled call: no poll inside
    peak = peak_rss_bytes()
    gd_times = [timed(problem.gd_step)[1] for _ in range(3)]
    return {
        "case": "digits_10_classes",
        "n": n,
        "num_outputs": 10,
        "kernel_rows": 10 * n,
        "gd_step_s": statistics.median(gd_times),
        "ntk_s": ntk_s,
        "statistics_s": stats_s,
        "first_probe_statistics_s": problem.first_probe_s,
        "sharpness_s": sharp_s,
        "probe_s": ntk_s + stats_s + sharp_s,
        "should_stop_polls": len(clock.times) - 1,
        "longest_gap_between_polls_s": max(clock.longest_gap(), sharp_s),
        "probe_peak_rss_bytes": peak,
        "rss_before_probe_bytes": start_rss,
        "estimate_total_bytes": estimate.total,
        "estimate": dict(vars(estimate)),
        "lambda_min": stats.lambda_min,
        "lambda_max": stats.lambda_max,
        "kernel_drift": stats.kernel_drift,
        "kernel_drift_op": stats.kernel_drift_op,
        "solver_iterations": stats.iterations,
        "converged": stats.converged,
        "sharpness": sharp.value,
        "sharpness_hvps": sharp.iterations,
    }


def bench_demo(last_step, probe_every=50):
    """The demo's probes: sharpness HVPs against the reference, and probe time / step time."""
    data = digits(n=64, classes=(0, 1))
    model = fc.build_model((64,), 1, width=1024, depth=1)
    x, y = tf.constant(data.x, tf.float32), tf.constant(data.y, tf.float32)
    optimizer = keras.optimizers.SGD(2.5)

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(tf.square(model(x, training=False) - y)) / 64
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    vectors = {}

    def probe(kernel0):
        kernel = ntk.empirical_ntk(model, x, as_numpy=not GPU)
        stats = ntk.kernel_statistics(kernel, kernel0, scale=1 / 64, start_vectors=vectors)
        vectors.update(stats.vectors)
        return kernel, stats, hessian.measure_sharpness(model, x, y)

    hvps, deviations, probe_times, step_time, kernel0 = [], [], [], 0.0, None
    for t in range(last_step + 1):
        if t % probe_every == 0:
            (kernel, _, result), elapsed = timed(lambda k0=kernel0: probe(k0))
            kernel0 = kernel if kernel0 is None else kernel0
            reference = hessian.sharpness(model, x, y)
            hvps.append(result.iterations)
            deviations.append(abs(result.value - reference) / abs(reference))
            probe_times.append(elapsed)
        loss, elapsed = timed(step)
        step_time += elapsed
    probe_time = sum(probe_times[1:])  # the first probe includes tracing
    return {
        "case": "demo_sharpness",
        "probes": len(hvps),
        "hvps_per_probe": hvps,
        "mean_hvps": float(np.mean(hvps)),
        "max_rel_deviation_vs_20_iterations": float(max(deviations)),
        "median_probe_s": statistics.median(probe_times[1:]),
        "training_steps_s": step_time,
        "loop_with_probes_over_without": (step_time + probe_time) / step_time,
        "final_loss": float(loss),
    }


def bench_demo_loop(rounds=3):
    """The demo through the launcher, with its probes and without, interleaved `rounds`
    times: median loop wall times (one run of ~2 s is noisy to ±15 %)."""
    import tempfile

    no_probes = [
        "diagnostics.ProbeSettings.measure_ntk = False",
        "diagnostics.ProbeSettings.measure_sharpness = False",
    ]
    loops, steps = {"with_probes": [], "without_probes": []}, {}
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(rounds):
            for name, bindings in (("with_probes", []), ("without_probes", no_probes)):
                workdir = os.path.join(root, f"{name}_{round_index}")
                summary = train.launch(["digits_fc_gd.gin"], bindings, workdir)
                loops[name].append(RunDirectory(workdir).read_metrics()[-1]["wall_time"])
                steps[name] = summary["steps"]
    median = {name: statistics.median(values) for name, values in loops.items()}
    return {
        "case": "demo_loop",
        "rounds": rounds,
        **{f"loop_s_{name}": median[name] for name in loops},
        **{f"loop_s_all_{name}": values for name, values in loops.items()},
        **{f"steps_{name}": value for name, value in steps.items()},
        "loop_with_probes_over_without": median["with_probes"] / median["without_probes"],
    }


def print_random(rows):
    columns = [
        "gd_step",
        "ntk",
        "lambda_max",
        "lambda_min",
        "kernel_drift",
        "sharpness",
        "probe",
        "diagnostics",
        "floor",
        "old",
    ]
    header = f"{'n':>6}" + "".join(f"{c + ' ms':>15}" for c in columns)
    header += f"{'probe/floor':>13}{'diag/floor':>12}{'old/probe':>11}{'probe/step':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        line = f"{row['n']:>6}"
        for c in columns:
            value = row.get(f"{c}_s")
            line += f"{(f'{value * 1e3:.1f}' if value is not None else '-'):>15}"
        old = row.get("old_over_probe")
        line += f"{row['probe_over_floor']:>13.2f}{row['diagnostics_over_floor']:>12.2f}"
        line += f"{(f'{old:.1f}x' if old else '-'):>11}"
        line += f"{row['probe_over_gd_step']:>12.1f}"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="benchmarks/probes.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old_repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats: a smoke run")
    parser.add_argument("--skip_digits", action="store_true")
    parser.add_argument("--skip_demo", action="store_true")
    parser.add_argument("--skip_old", action="store_true")
    parser.add_argument(
        "--digits_n", type=int, default=1797, help="digits examples for the 10-class probe"
    )
    args = parser.parse_args()
    sizes = [128, 256] if args.quick else args.sizes
    repeats = 2 if args.quick else args.repeats
    digits_n = 300 if args.quick else args.digits_n
    header = {
        "tf_enable_onednn_opts": ONEDNN_ENV,
        "onednn_enabled": onednn_enabled(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "repeats": repeats,
    }
    print(
        f"TF_ENABLE_ONEDNN_OPTS={ONEDNN_ENV!r} (oneDNN enabled: {header['onednn_enabled']}); "
        f"TF {tf.__version__}, Keras {keras.__version__}, GPUs: {header['gpus']}, "
        f"CPUs: {header['cpu_count']}",
        flush=True,
    )
    rows = []
    if not args.skip_digits:
        print(f"digits, 10 classes, n = {digits_n} (kernel rows {10 * digits_n}) ...", flush=True)
        rows.append(bench_digits(digits_n))
        d = rows[-1]
        print(
            f"  step-0 statistics (cold starts, no drift) {d['first_probe_statistics_s']:.1f} s;"
            f" then NTK {d['ntk_s']:.1f} s, statistics {d['statistics_s']:.1f} s "
            f"({d['solver_iterations']}), sharpness {d['sharpness_s']:.2f} s "
            f"({d['sharpness_hvps']} HVPs): probe {d['probe_s']:.1f} s, should_stop polled "
            f"{d['should_stop_polls']} times, at most {d['longest_gap_between_polls_s']:.2f} s "
            f"apart; peak RSS "
            f"{d['probe_peak_rss_bytes'] / 2**30:.2f} GiB (estimate "
            f"{d['estimate_total_bytes'] / 2**30:.2f} GiB above the "
            f"{d['rss_before_probe_bytes'] / 2**30:.2f} GiB before it); GD step "
            f"{d['gd_step_s'] * 1e3:.1f} ms",
            flush=True,
        )
    random_rows = []
    for n in sizes:
        print(f"FC 64-512-512-1, random data, n = {n} ...", flush=True)
        random_rows.append(bench_random(n, repeats, args.old_repeats, args.skip_old))
    rows += random_rows
    if not args.skip_demo:
        print("demo sharpness ...", flush=True)
        rows.append(bench_demo(200 if args.quick else 900))
        d = rows[-1]
        print(
            f"  HVPs per probe {d['hvps_per_probe']} (mean {d['mean_hvps']:.1f}); max relative "
            f"deviation from 20 host iterations {d['max_rel_deviation_vs_20_iterations']:.1e}; "
            f"probe {d['median_probe_s'] * 1e3:.1f} ms (median, after the first); "
            f"{d['probes'] - 1} probes over {d['training_steps_s']:.2f} s of GD steps: loop "
            f"{d['loop_with_probes_over_without']:.2f}x its time without probes",
            flush=True,
        )
    if not args.skip_demo:
        print("demo loop through the launcher ...", flush=True)
        rows.append(bench_demo_loop())
        d = rows[-1]
        print(
            f"  loop {d['loop_s_with_probes']:.2f} s with probes, "
            f"{d['loop_s_without_probes']:.2f} s without: "
            f"{d['loop_with_probes_over_without']:.2f}x (medians of {d['rounds']} rounds)",
            flush=True,
        )
    print()
    print_random(random_rows)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({**header, "rows": rows}, indent=2, default=str))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

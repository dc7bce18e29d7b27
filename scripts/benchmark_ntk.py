"""Benchmark of the empirical-NTK implementations (not a timed test).

    .venv/bin/python scripts/benchmark_ntk.py [--output benchmarks/ntk.json]
        [--quick] [--skip_naive_large] [--skip_jacobian_large] [--repeats 5]
        [--slow_repeats 1] [--skip_resnet]

Reference models: FC 784-512-512-1 (ReLU, float32) at n = 256 and n = 1024, and a small
ResNet on 32×32×3 inputs at n = 128. Per implementation it reports the median wall time of
`--repeats` runs (`--slow_repeats` for the slow general paths at n = 1024) after one
warm-up call (which includes tracing; reported separately), the peak memory, and the
speed ratio to the naive `tape.jacobian` contraction (naive time / time). For the FC model a
hand-written layer-wise contraction (forward keeping activations, manual δ backprop,
Θ = Σ_l (δδᵀ)∘(aaᵀ + 1)) runs side by side as the baseline: the target is our default
("auto") within 1.2× of it.

Timing: rounds interleave the implementations (robust to load from other processes); the
rel diff column is max|Θ − Θ_ref| / max|Θ_ref| against the naive (else jacobian, else
hand-written) kernel.

Peak memory (of one call after warm-up): on GPU, tf.config.experimental.get_memory_info
peak bytes (reset before each implementation); on CPU, the peak resident set size sampled
every 2 ms from /proc/self/statm during the call, minus the RSS before it (tracemalloc does
not see TF's allocator, and getrusage's maxrss is a process-lifetime high-water mark).
"""

import argparse
import json
import os
import pathlib
import statistics
import threading
import time

ONEDNN_ENV = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lplr_tf.ntk import empirical_ntk, get_engine, tf32_disabled  # noqa: E402


def fc_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def small_resnet(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    for _ in range(2):
        r = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(h)
        r = keras.layers.ReLU()(keras.layers.BatchNormalization()(r))
        r = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(r)
        r = keras.layers.BatchNormalization()(r)
        h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def naive_fn(model):
    """Θ from `tape.jacobian` of the batched output (pfor): the O(n²P) baseline."""
    variables = [v.value for v in model.trainable_variables]

    @tf.function(jit_compile=False)
    def kernel(x):
        with tf.GradientTape() as tape:
            f = tf.reshape(model(x, training=False), (tf.shape(x)[0], -1))
        jac = tape.jacobian(f, variables)
        n = tf.shape(x)[0]
        flat = tf.concat([tf.reshape(j, (n * f.shape[1], -1)) for j in jac], axis=1)
        return tf.matmul(flat, flat, transpose_b=True)

    return kernel


def handwritten_fn(model):
    """Hand-written layer-wise contraction for a Dense-ReLU MLP with a linear last layer."""
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    weights = [(layer.kernel.value, layer.bias.value) for layer in dense]

    @tf.function(jit_compile=False)
    def kernel(x):
        inputs, pre = [x], []
        h = x
        for w, b in weights[:-1]:
            z = tf.matmul(h, w) + b
            pre.append(z)
            h = tf.nn.relu(z)
            inputs.append(h)
        delta = tf.ones((tf.shape(x)[0], 1), x.dtype)  # ∂f/∂z of the linear output layer
        deltas = [delta]
        for (w, _), z in zip(reversed(weights[1:]), reversed(pre)):
            delta = tf.matmul(delta, w, transpose_b=True) * tf.cast(z > 0, x.dtype)
            deltas.append(delta)
        deltas.reverse()
        theta = 0.0
        for a, d in zip(inputs, deltas):
            theta += tf.matmul(d, d, transpose_b=True) * (tf.matmul(a, a, transpose_b=True) + 1.0)
        return theta

    return kernel


class PeakMemory:
    """Peak memory above the starting point during a block (see module docstring)."""

    def __init__(self):
        self.gpu = bool(tf.config.list_logical_devices("GPU"))
        self.method = "tf_gpu_peak" if self.gpu else "rss_sampled_/proc/self/statm"

    @staticmethod
    def _rss():
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
            self.start = tf.config.experimental.get_memory_info("GPU:0")["current"]
            return self
        self.start = self.peak = self._rss()
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.gpu:
            self.peak_bytes = tf.config.experimental.get_memory_info("GPU:0")["peak"] - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
            self.peak_bytes = self.peak - self.start


def _timed(fn):
    start = time.perf_counter()
    result = np.asarray(fn())  # waits for the device
    return result, time.perf_counter() - start


def bench_case(name, model, n, shape, implementations, repeats, seed=0, slow_repeats=None):
    """Warm-up and a memory-measured run per implementation, then interleaved timed rounds.

    Rounds interleave the implementations (A B C, A B C, ...) so that load from other
    processes on a shared machine hits all of them alike; the median is over rounds.
    """
    x = tf.constant(np.random.default_rng(seed).normal(size=(n,) + shape).astype(np.float32))
    runners = {}
    for impl in implementations:
        if impl == "naive":
            fn = naive_fn(model)
            runners[impl] = lambda fn=fn: _no_tf32(fn, x)
        elif impl == "handwritten":
            fn = handwritten_fn(model)
            runners[impl] = lambda fn=fn: _no_tf32(fn, x)
        else:
            runners[impl] = lambda impl=impl: empirical_ntk(model, x, implementation=impl)
    rows, results, times = {}, {}, {impl: [] for impl in runners}
    for impl, fn in runners.items():
        _, warmup = _timed(fn)
        with PeakMemory() as memory:
            results[impl], elapsed = _timed(fn)
        times[impl].append(elapsed)
        rows[impl] = {
            "case": name,
            "n": n,
            "implementation": impl,
            "warmup_s": warmup,
            "peak_memory_bytes": int(memory.peak_bytes),
            "memory_method": memory.method,
        }
        if impl in ("auto", "structured", "jacobian"):
            rows[impl]["resolved"] = get_engine(model, x, impl, "full").implementation
    slow = {"naive", "jacobian"} if slow_repeats is not None else set()
    for round_ in range(1, repeats):
        for impl, fn in runners.items():
            if impl not in slow or round_ < slow_repeats:
                times[impl].append(_timed(fn)[1])
    for impl, row in rows.items():
        row["median_s"] = statistics.median(times[impl])
        row["repeats"] = len(times[impl])
        print(f"  {name} n={n} {impl}: {row['median_s'] * 1e3:.1f} ms", flush=True)
    rows = list(rows.values())
    reference = next(
        results[k] for k in ("naive", "jacobian", "handwritten", "auto") if k in results
    )
    scale = float(np.abs(reference).max())
    for row in rows:
        kernel = results[row["implementation"]]
        row["max_abs_diff_vs_reference_rel"] = float(np.abs(kernel - reference).max() / scale)
    medians = {row["implementation"]: row["median_s"] for row in rows}
    for row in rows:
        if "naive" in medians:
            row["speedup_vs_naive"] = medians["naive"] / row["median_s"]
        if "handwritten" in medians:
            row["time_ratio_vs_handwritten"] = row["median_s"] / medians["handwritten"]
    return rows


def _no_tf32(fn, x):
    with tf32_disabled():
        return fn(x)


def print_table(rows):
    header = (
        f"{'case':<8}{'n':>6} {'impl':<12}{'median ms':>11}{'warm-up s':>11}"
        f"{'peak MiB':>10}{'vs naive':>10}{'vs hand':>9}{'rel diff':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        naive = row.get("speedup_vs_naive")
        hand = row.get("time_ratio_vs_handwritten")
        print(
            f"{row['case']:<8}{row['n']:>6} {row['implementation']:<12}"
            f"{row['median_s'] * 1e3:>11.1f}{row['warmup_s']:>11.2f}"
            f"{row['peak_memory_bytes'] / 2**20:>10.1f}"
            f"{(f'{naive:.1f}x' if naive else '-'):>10}"
            f"{(f'{hand:.2f}' if hand else '-'):>9}"
            f"{row['max_abs_diff_vs_reference_rel']:>10.1e}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="benchmarks/ntk.json")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="small n, 2 repeats: a smoke run")
    parser.add_argument(
        "--skip_naive_large", action="store_true", help="skip tape.jacobian at n=1024 (~1 min)"
    )
    parser.add_argument(
        "--skip_jacobian_large",
        action="store_true",
        help="skip the per-example Jacobian path at n=1024",
    )
    parser.add_argument(
        "--slow_repeats",
        type=int,
        default=1,
        help="timed runs of naive/jacobian at n=1024 (each ~10-60 s)",
    )
    parser.add_argument("--skip_resnet", action="store_true")
    parser.add_argument("--skip_fc", action="store_true")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    fc_sizes = (64, 128) if args.quick else (256, 1024)
    resnet_n = 16 if args.quick else 128

    print(
        f"TF_ENABLE_ONEDNN_OPTS={ONEDNN_ENV!r} (unset: TF's default for this CPU); "
        f"TF {tf.__version__}, Keras {keras.__version__}, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}, "
        f"memory: {PeakMemory().method}",
        flush=True,
    )
    rows = []
    fc = fc_model()
    for n in () if args.skip_fc else fc_sizes:
        impls = ["handwritten", "auto", "structured", "jacobian", "naive"]
        if n == fc_sizes[-1] and not args.quick:
            if args.skip_naive_large:
                impls.remove("naive")
            if args.skip_jacobian_large:
                impls.remove("jacobian")
        large = n == fc_sizes[-1] and not args.quick
        rows += bench_case(
            "fc", fc, n, (784,), impls, repeats, slow_repeats=args.slow_repeats if large else None
        )
    if not args.skip_resnet:
        rows += bench_case(
            "resnet", small_resnet(), resnet_n, (32, 32, 3), ["auto", "jacobian", "naive"], repeats
        )
    print()
    print_table(rows)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "tf_enable_onednn_opts": ONEDNN_ENV,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "repeats": repeats,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()

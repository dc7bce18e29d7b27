"""Cost of the a-priori check against the cost of one probe (not a timed test).

    .venv/bin/python scripts/benchmark_a_priori.py [--repeats 3]

A probe here is what the launcher does at a probe step on the kernel side: the empirical
NTK, its float64 spectrum and the Lanczos sharpness (20 Hessian-vector products). The check
is `a_priori.check` with its defaults (9 samples for kernels up to
`a_priori.LARGE_KERNEL_DIM`, else 2) and the sharpness passed in, as the experiment does
when it has measured β₀. Both run after one warm-up call (tracing excluded); the median of
`--repeats` interleaved rounds is printed with the ratio check / probe (the target:
about 2).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from lplr_tf import a_priori, data, hessian, ntk
from lplr_tf.models.fc import build_model

CONFIGS = (
    # name, digits kwargs, model kwargs
    ("demo: digits n=64, O=1, FC 1024", {"n": 64}, {"width": 1024, "depth": 1}),
    ("digits n=256, O=1, FC 1024", {"n": 256}, {"width": 1024, "depth": 1}),
    (
        "digits n=128, O=10, FC 512×2 (d = 1280: reduced)",
        {"n": 128, "classes": tuple(range(10))},
        {"width": 512, "depth": 2},
    ),
)


def _median_seconds(functions, repeats):
    """Median wall time of each function; rounds interleave them (robust to other load)."""
    for function in functions:
        function()  # warm-up: tracing and caches
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, spent in zip(functions, times):
            start = time.perf_counter()
            function()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    print(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}")
    print(f"{'configuration':52s} {'d':>5s} {'samples':>7s} {'probe s':>8s} {'check s':>8s} ratio")
    for name, data_kwargs, model_kwargs in CONFIGS:
        dataset = data.digits(**data_kwargs)
        network = build_model(dataset.input_shape, dataset.output_dim, **model_kwargs)
        x, y = dataset.x, dataset.y
        n = x.shape[0]

        def probe(network=network, x=x, y=y, n=n):
            theta = ntk.empirical_ntk(network, x)
            ntk.ntk_spectrum(theta, scale=1.0 / n)
            return hessian.sharpness(network, x, y)

        beta0 = probe()
        learning_rate = 1.0 / beta0
        result = a_priori.check(network, x, y, learning_rate=learning_rate, sharpness=beta0)
        probe_time, check_time = _median_seconds(
            [
                probe,
                lambda network=network, x=x, y=y, lr=learning_rate, b=beta0: a_priori.check(
                    network, x, y, learning_rate=lr, sharpness=b
                ),
            ],
            arguments.repeats,
        )
        print(
            f"{name:52s} {result['kernel_dim']:5d} {result['num_samples']:7d} "
            f"{probe_time:8.3f} {check_time:8.3f} {check_time / probe_time:5.2f}"
        )
        np.testing.assert_equal(result["kind"], a_priori.KIND)


if __name__ == "__main__":
    main()

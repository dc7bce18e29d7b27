"""Use lplr_tf inside your own training loop: a hand-written Keras CNN trained with `fit`.

    python scripts/example_own_model.py --output_dir /tmp/own_model           # ~40 s on CPU
    python scripts/example_own_model.py --output_dir /tmp/own_model --smoke   # ~15 s

A small convolutional network on the 8x8 digits (0 vs 1, ±1 targets) is trained by plain
`model.fit` with SGD on full batches (batch_size = n, shuffle=False): exactly gradient descent.
`lplr_tf.LPLRCallback` measures the squared loss, the PL ratio, the NTK spectrum, the drift
and the sharpness along the way and puts them into Keras' logs (`lplr/pl_ratio`, ...: the
`History` below); Keras' `BackupAndRestore` makes the run resumable (interrupt it and run the
same command again: the record continues from the original θ₀). The script prints the
summary's verdict and key numbers and writes, in --output_dir, the run directory files that
`lplr-report` reads: metrics.jsonl, reference.npz (θ₀, K₀), summary.json, tb/ (TensorBoard)
and plots/convergence.png.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

import lplr_tf
from lplr_tf import data, plots
from lplr_tf.diagnostics import ProbeSettings
from lplr_tf.rundir import RunDirectory


def build_cnn(input_shape, filters, width, seed):
    """A user-written CNN: conv → ReLU → conv → ReLU → flatten → dense → ReLU → 1 output."""
    init = keras.initializers.HeNormal
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu", kernel_initializer=init(seed=seed)
            ),
            keras.layers.Conv2D(
                filters,
                3,
                strides=2,
                padding="same",
                activation="relu",
                kernel_initializer=init(seed=seed + 1),
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(width, activation="relu", kernel_initializer=init(seed=seed + 2)),
            keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotNormal(seed + 3)),
        ],
        name="my_cnn",
    )


def _fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}g}"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output_dir",
        default="/tmp/lplr_own_model",
        help="Where metrics.jsonl, summary.json, tb/ and plots/ go.",
    )
    parser.add_argument("--smoke", action="store_true", help="A tiny, fast run (for tests).")
    parser.add_argument("--n", type=int, default=None, help="Training examples (default 128).")
    parser.add_argument(
        "--epochs", type=int, default=None, help="GD steps (one full batch per epoch; default 300)."
    )
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=0.008,
        help="SGD learning rate on Keras' 'mse' (= a GD step 2x this on L).",
    )
    parser.add_argument(
        "--every_n_steps", type=int, default=None, help="Steps between measurements (default 10)."
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    n = args.n or (32 if args.smoke else 128)
    epochs = args.epochs or (12 if args.smoke else 300)
    every = args.every_n_steps or (4 if args.smoke else 10)
    filters, width = (4, 16) if args.smoke else (8, 64)
    keras.utils.set_random_seed(0)

    digits = data.digits(n=n, image=True)  # x: (n, 8, 8, 1) standardized; y: (n, 1) = ±1
    model = build_cnn(digits.input_shape, filters, width, seed=0)
    # Keras "mse" is mean over outputs and examples of (f − y)² = 2L for one output, so SGD(η)
    # on it is gradient descent with step 2η on L = 1/(2n) Σ (f − y)²; the callback reads the
    # optimizer and the loss and reports η_L = 2η in the summary.
    model.compile(optimizer=keras.optimizers.SGD(args.learning_rate), loss="mse")

    os.makedirs(args.output_dir, exist_ok=True)
    callback = lplr_tf.LPLRCallback(
        (digits.x, digits.y),  # the probe set: here the whole training set (full-batch GD)
        every_n_steps=every,
        probe_settings=ProbeSettings(measure_sharpness=not args.smoke),
        logdir=os.path.join(args.output_dir, "tb"),
        state_dir=args.output_dir,  # metrics.jsonl and reference.npz: a resumable record
    )
    # Callbacks that read the lplr/ keys (EarlyStopping, TensorBoard, ...) go after it.
    backup = keras.callbacks.BackupAndRestore(os.path.join(args.output_dir, "backup"))
    history = model.fit(
        digits.x,
        digits.y,
        batch_size=digits.n,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[callback, backup],
    )

    summary = callback.summary()
    RunDirectory(args.output_dir).write_summary(summary)
    stem = os.path.join(args.output_dir, "plots", "convergence")  # .png: figures.FigureSettings
    (plot_path,) = plots.plot_convergence(
        callback.history, summary, stem, title=f"{model.name} on {digits.name}"
    )

    fit, ntk, bound = summary["fit"], summary["ntk"], summary["bound"]
    print(f"model {model.name}: {model.count_params()} parameters; data {digits.name}, n = {n}")
    print(
        f"η on L = {summary['settings']['learning_rate']:g} "
        f"({summary['callback']['learning_rate_source']})"
    )
    print(
        f"status: {summary['status']} after {summary['steps']} steps; "
        f"loss {_fmt(summary['initial_loss'])} → {_fmt(summary['final_loss'])}"
    )
    print(
        f"fitted rate ρ̂ = {_fmt(fit['rate'], 6)} (R² = {_fmt(fit['r2'])}); "
        f"bound ρ_bound = {_fmt(bound['rate_bound'], 6)} (holds: {bound['holds']})"
    )
    print(
        f"λ_min(K_0) = {_fmt(ntk['lambda_min_init'])}, min_t λ_min(K_t) = "
        f"{_fmt(ntk['lambda_min_min'])}, final kernel drift = {_fmt(ntk['kernel_drift_final'])}, "
        f"min PL ratio = {_fmt(summary['pl_ratio']['min'])}"
    )
    logs = history.history
    print(
        f"Keras History: lplr/pl_ratio = {_fmt(logs['lplr/pl_ratio'][-1])} "
        f"(measured at step {logs['lplr/step'][-1]:g}) after epoch {len(logs['loss'])}"
    )
    if summary["caveat"]:
        print(f"caveat: {summary['caveat']}")
    print(f"verdict: {summary['verdict']}")
    print(f"plot: {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of one small sweep on each backend of lplr-sweep (not a timed test).

    .venv/bin/python scripts/benchmark_sweep_backends.py [--steps 48] [--seeds 2]
        [--widths 8,16] [--output benchmarks/sweep_backends.json]

The grid (widths × seeds on digits_fc_gd.gin + smoke.gin, `--steps` GD steps, sharpness off)
runs as a fresh `lplr-sweep` command per backend, so every time includes what a user waits
for: Python and TensorFlow start-up, and for Ray starting a local instance (all CPUs of this
host) and its workers. Backends: `local` (in-process, one run after the other),
`local --parallel=2` (two subprocesses) and `ray` (one task per run, 1 CPU each). It prints
each wall time, its ratio to the in-process time, and whether sweep.csv is byte-identical to
the in-process one (it should be: CPU runs are deterministic).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

BACKENDS = {
    "local": [],
    "local --parallel=2": ["--parallel=2"],
    "ray": ["--backend=ray"],
}


def _sweep(workdir, arguments, extra):
    command = [os.path.join(os.path.dirname(sys.executable), "lplr-sweep")]
    command += arguments + [f"--workdir={workdir}", "--noplots"] + extra
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
    return seconds, pathlib.Path(workdir, "sweep.csv").read_text(encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--widths", default="8,16")
    parser.add_argument("--output", default=None)
    options = parser.parse_args()
    arguments = [
        "--gin_file=digits_fc_gd.gin",
        "--gin_file=smoke.gin",
        "--gin_bindings=experiment.run.measure_sharpness = False",
        f"--gin_bindings=protocol.gd.num_steps = {options.steps}",
        f"--grid=fc.build_model.width=[{options.widths}]",
        f"--seeds={options.seeds}",
    ]
    runs = len(options.widths.split(",")) * options.seeds
    print(f"{runs} runs of {options.steps} steps; {os.cpu_count()} CPUs")
    results, reference = {}, None
    with tempfile.TemporaryDirectory() as root:
        for name, extra in BACKENDS.items():
            seconds, table = _sweep(os.path.join(root, name.replace(" ", "_")), arguments, extra)
            reference = table if reference is None else reference
            results[name] = {"seconds": seconds, "same_sweep_csv": table == reference}
    base = results["local"]["seconds"]
    print(f"{'backend':<22}{'wall s':>8}{'÷ local':>9}  sweep.csv")
    for name, result in results.items():
        same = "identical" if result["same_sweep_csv"] else "DIFFERS"
        print(f"{name:<22}{result['seconds']:>8.1f}{result['seconds'] / base:>9.2f}  {same}")
    if options.output:
        os.makedirs(os.path.dirname(options.output) or ".", exist_ok=True)
        with open(options.output, "w", encoding="utf-8") as stream:
            json.dump({"runs": runs, "steps": options.steps, "results": results}, stream, indent=2)


if __name__ == "__main__":
    main()

"""Runs the demo and writes what it printed into README.md's Quickstart (never retyped).

    .venv/bin/python scripts/readme_demo.py [--readme README.md]

Runs `lplr-train --gin_file=digits_fc_gd.gin` (what `make demo` runs) in a fresh temporary
workdir, takes its console output (stderr and stdout in the order written), drops absl's
line prefix (`I1129 16:35:14.198278 139799 console.py:137] `), writes `runs/demo` for the
temporary workdir, and replaces the fenced block between the README markers
`<!-- demo-output:begin -->` and `<!-- demo-output:end -->`, followed by the wall time of
the run on this machine.
"""

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

BEGIN, END = "<!-- demo-output:begin -->", "<!-- demo-output:end -->"
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ", re.MULTILINE)


def run_demo():
    """Returns (console text, wall seconds) of one demo run in a temporary workdir."""
    command = pathlib.Path(sys.executable).with_name("lplr-train")
    with tempfile.TemporaryDirectory() as workdir:
        start = time.monotonic()
        result = subprocess.run(
            [str(command), "--gin_file=digits_fc_gd.gin", f"--workdir={workdir}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - start
        if result.returncode != 0:
            sys.exit(f"the demo exited {result.returncode}:\n{result.stdout}")
        text = ABSL_PREFIX.sub("", result.stdout).replace(workdir, "runs/demo")
    return text.strip("\n"), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args()
    readme = pathlib.Path(args.readme)
    content = readme.read_text(encoding="utf-8")
    if BEGIN not in content or END not in content:
        sys.exit(f"{readme}: expected the markers {BEGIN} and {END} where the output goes.")
    text, seconds = run_demo()
    block = (
        f"{BEGIN}\n```\n{text}\n```\n\n"
        f"(This run: {seconds:.0f} s wall for `lplr-train` on {os.cpu_count()} CPU cores, "
        "TensorFlow's start-up included; written by `scripts/readme_demo.py`.)\n"
        f"{END}"
    )
    head, rest = content.split(BEGIN, 1)
    readme.write_text(head + block + rest.split(END, 1)[1], encoding="utf-8")
    print(f"{readme}: demo output updated ({seconds:.0f} s)")


if __name__ == "__main__":
    main()

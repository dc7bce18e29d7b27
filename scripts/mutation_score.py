"""Mutation score of the pure analysis modules: runs mutmut, prints the share of mutants killed.

    pip install -e '.[mutation]'
    python scripts/mutation_score.py              # mutmut run, then the table below
    python scripts/mutation_score.py --no-run     # the table of the last run only

The modules and the tests mutmut uses are in pyproject.toml ([tool.mutmut]): the pure modules
that turn a metric history into the summary (analysis, phases, bounds, claims, stability,
verdict, tables, values), each mutant run against the fast pure tests (seconds each). mutmut
keeps its state in mutants/ and re-runs only what changed; `mutmut browse` or
`mutmut show NAME` shows a surviving mutant. Timeouts count as killed (the mutant made the
tests hang, which a test run notices), as mutmut's own score does.
"""

import argparse
import collections
import subprocess
import sys

KILLED = ("killed", "timeout")


def _mutmut(*arguments, capture=False):
    command = [sys.executable, "-m", "mutmut", *arguments]
    if capture:
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return subprocess.run(command, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="only report the last run")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant runs")
    flags = parser.parse_args(argv)
    if not flags.no_run:
        _mutmut("run", "--max-children", str(flags.max_children))
    counts = collections.defaultdict(collections.Counter)
    for line in _mutmut("results", "--all", "true", capture=True).splitlines():
        name, _, status = line.strip().rpartition(": ")
        if "__mutmut_" not in name:
            continue
        module = name.split(".x")[0].rsplit(".x_", 1)[0]
        counts[module][status] += 1
    print(f"{'module':<24} {'mutants':>8} {'killed':>8} {'survived':>9} {'score':>7}")
    total = collections.Counter()
    for module in sorted(counts):
        count = counts[module]
        total.update(count)
        _print_row(module, count)
    _print_row("all", total)
    return 0


def _print_row(module, count):
    mutants = sum(count.values())
    killed = sum(count[status] for status in KILLED)
    survived = count["survived"]
    score = 100.0 * killed / mutants if mutants else 0.0
    print(f"{module:<24} {mutants:>8} {killed:>8} {survived:>9} {score:>6.1f}%")


if __name__ == "__main__":
    sys.exit(main())

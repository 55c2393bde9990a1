"""The scenario suite: every policy on 36 scenarios built from the shared traces.

    python benchmarks/scheduler_suite.py [--quick] [--jobs 2] [--half test] [--json]
        [--markdown results.md]

The same as `loophub sim suite`: per-scenario tables and wins/losses for the tuning and test
halves, then one JSON line of aggregate figures (the test half at the top level). Scenarios,
halves and assumptions: loophub/scheduler/suite.py and docs/scheduler.md.
"""

from __future__ import annotations

import argparse
import sys

from loophub.scheduler.cli import add_suite_options, run_suite_cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_suite_options(ap)
    return run_suite_cmd(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

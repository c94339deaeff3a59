"""``python -m benchmarks.run``: the benchmark of ``datvit bench`` (:mod:`datvit.tools.benchmark.run`), writing into
the checkout's ``benchmarks/results/`` by default. Same options; see docs/benchmarks.md."""
from __future__ import annotations

import sys
from pathlib import Path

from datvit.tools.benchmark.run import add_arguments, main as _main, run  # noqa: F401  (re-exported)

RESULTS = str(Path(__file__).resolve().parent / "results")


def main(argv=None) -> int:
    return _main(argv, prog="python -m benchmarks.run", default_out=RESULTS)


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark (``bench/<name>.py``) or the one named; each prints a table and writes
``bench/results/<name>.json``. Every benchmark stops by itself within its own time bound."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"run", "common"}  # and every name starting with "_" (helpers the benchmarks run)
#: Run only when named (``make bench BENCH=soak``), and then without the 900 s bound: the soak
#: lasts an hour by default (``BENCH_SOAK_S``).
NAMED_ONLY = {"soak"}


def main(argv: list[str]) -> int:
    names = argv or sorted(
        p.stem
        for p in HERE.glob("*.py")
        if p.stem not in SKIP | NAMED_ONLY and not p.stem.startswith("_")
    )
    failed = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"bench: no benchmark named {name!r}", file=sys.stderr)
            return 2
        print(f"== {name}", flush=True)
        timeout = None if name in NAMED_ONLY else 900
        if subprocess.run(
            [sys.executable, str(script)], cwd=HERE.parent, timeout=timeout
        ).returncode:
            failed.append(name)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

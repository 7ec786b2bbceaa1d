"""`make bench`: runs every benchmarks/bench_*.py module's main() in turn and prints its figures.

`python -m benchmarks.run scan pipeline` runs only the named ones.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    if argv:
        short = {n.removeprefix("bench_") for n in names}
        unknown = [a for a in argv if a not in short and a not in names]
        if unknown:
            print(f"benchmarks.run: no benchmark {', '.join(unknown)} (known: {', '.join(sorted(short))})",
                  file=sys.stderr)
            return 2
        names = [n for n in names if n.removeprefix("bench_") in argv or n in argv]
    failed = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"benchmarks.{name}").main()
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            failed += 1
            print(f"{name} FAILED: {exc!r}", flush=True)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

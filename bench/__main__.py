"""Run edgefleet's benchmarks: ``python -m bench [NAME ...]``.

Every module in ``bench/`` that defines ``main()`` is a benchmark (``common`` holds shared
helpers and is not one). They run one after another in name order, each under a header;
``NAME`` arguments pick some of them (``python -m bench protocol hub``). A benchmark fails
when ``main()`` raises or returns a non-zero int: its traceback is printed, the others still
run, and the exit status is 1. So is a run in which no benchmark ran at all. An unknown
name is a usage error (status 2) before anything runs.

After the run it writes ``bench/results/SUMMARY.md``: one table over every result file
there (:func:`bench.common.write_summary`).

The soak and scale tests are pytest tests marked ``slow``; ``make bench`` runs them after
this (``pytest -m slow``). This runner does not start them itself.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import write_summary

PACKAGE = "bench"
NOT_BENCHMARKS = frozenset({"__main__", "common"})


def discover() -> list[str]:
    """Names of the candidate benchmark modules in ``bench/``, sorted."""
    here = [str(Path(__file__).resolve().parent)]
    return sorted(
        info.name
        for info in pkgutil.iter_modules(here)
        if not info.ispkg and info.name not in NOT_BENCHMARKS
    )


def run_one(name: str) -> bool | None:
    """Import ``bench.<name>`` and run its ``main()``, printing any failure.

    Returns:
        True if it passed, False if it failed, None if the module defines no ``main()``.
    """
    try:
        module = importlib.import_module(f"{PACKAGE}.{name}")
    except Exception:
        return _failed(name, "import failed\n" + traceback.format_exc())
    entry: Callable[[], object] | None = getattr(module, "main", None)
    if not callable(entry):
        return None
    print(f"\n=== bench.{name} ===", flush=True)
    started = time.perf_counter()
    try:
        result = entry()
    except SystemExit as e:  # a benchmark that parses its own arguments may exit
        if e.code not in (None, 0):
            return _failed(name, f"exited with {e.code!r}")
    except Exception:
        return _failed(name, traceback.format_exc())
    else:
        if isinstance(result, int) and not isinstance(result, bool) and result != 0:
            return _failed(name, f"main() returned {result}")
    print(f"--- bench.{name} done in {time.perf_counter() - started:.1f}s", flush=True)
    return True


def _failed(name: str, why: str) -> bool:
    print(f"--- bench.{name} FAILED: {why}", file=sys.stderr, flush=True)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run every bench/ module that defines main(), in name order.",
        epilog="`make bench` also runs the slow pytest suite (pytest -m slow) afterwards.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these (e.g. protocol hub)")
    args = parser.parse_args(argv)
    available = discover()
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; have: {', '.join(available)}")
    chosen = [name for name in available if not args.names or name in args.names]

    outcomes = {name: run_one(name) for name in chosen}
    print(f"\nsummary: {write_summary()}")
    failed = [name for name, ok in outcomes.items() if ok is False]
    ran = [name for name, ok in outcomes.items() if ok is not None]
    print(
        f"\n{len(ran)} benchmark(s) run, {len(failed)} failed" + (f": {failed}" if failed else "")
    )
    return 1 if failed or not ran else 0


if __name__ == "__main__":
    sys.exit(main())

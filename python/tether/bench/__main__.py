"""``python -m tether.bench [NAME...]``: run the benchmarks, print a table, save JSON."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

from . import BenchContext, workdir


def _goal_met(fig: dict[str, Any]) -> str:
    goal = fig.get("goal")
    if not goal:
        return ""
    op, _, value = goal.partition(" ")
    target = float(value)
    ok = fig["ratio"] <= target if op == "<=" else fig["ratio"] >= target
    return "ok" if ok else "MISSED"


def main(argv: list[str]) -> int:
    import tether.bench as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__)]
    chosen = [n for n in names if not argv or n in argv]
    results: list[dict[str, Any]] = []
    with workdir() as wd:
        ctx = BenchContext(wd)
        for name in sorted(chosen):
            module = importlib.import_module(f"tether.bench.{name}")
            run = getattr(module, "run", None)
            if run is None:
                continue
            print(f"== {name}", flush=True)
            started = time.monotonic()
            for fig in run(ctx):
                fig["bench"] = name
                results.append(fig)
                print(f"  {fig['name']:<48} tether {fig['tether']:>12.3f} {fig['unit']:<6} "
                      f"direct {fig['direct']:>12.3f}  ratio {fig['ratio']:6.3f} "
                      f"{fig.get('goal', ''):>8} {_goal_met(fig)}", flush=True)
            print(f"   ({time.monotonic() - started:.1f} s)")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"saved {out / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Print the mutation run's result per module: `make mutate` runs mutmut, then this.

Reads ``mutmut results --all true`` (one line per mutant: ``<module>.<mutant>: <status>``)
and prints a table of killed / survived / no tests / timeout per module with the share
killed (timeouts count as killed: the mutant hung the tests), then the survivors.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*(?P<name>[\w.]+)\.x[_\w]*__mutmut_\d+: (?P<status>.+)$")
KILLED = {"killed", "timeout"}


def main() -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run(
        [str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=False
    ).stdout
    per: defaultdict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        status = m["status"].strip()
        per[m["name"]][status] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{line.strip()}")
    if not per:
        print("no mutation results: run `make mutate` first")
        return 1
    head = (
        f"{'module':<40} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} "
        f"{'killed %':>9}"
    )
    print(head)
    print("-" * len(head))
    totals: Counter[str] = Counter()
    for name in sorted(per):
        c = per[name]
        totals.update(c)
        print(_row(name, c))
    print("-" * len(head))
    print(_row("all", totals))
    print(f"\nsurvivors and untested mutants ({len(survivors)}; `mutmut show NAME` shows one):")
    for s in survivors:
        print(f"  {s}")
    return 0


def _row(name: str, c: Counter[str]) -> str:
    total = sum(c.values())
    killed = sum(c[s] for s in KILLED)
    share = 100 * killed / total if total else 0.0
    return f"{name:<40} {total:>8} {killed:>7} {c['survived']:>9} {c['no tests']:>9} {share:>8.1f}%"


if __name__ == "__main__":
    sys.exit(main())

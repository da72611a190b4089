"""Kill rates per module from `mutmut results --all true` (make mutation writes it to mutation-results.txt).

    python docs/mutation_report.py mutation-results.txt

Killed and timed-out mutants count as caught; "no tests" and survivors as not; skipped mutants and those a
stopped run had not reached ("not checked") are left out of the rate and counted apart.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*(?P<name>\S+?)__mutmut_\d+: (?P<status>.+?)\s*$")
MANGLED = re.compile(r"\.x(?:_|\u01c1)")  # mutmut names a function x_NAME and a method x\u01c1Class\u01c1NAME
CAUGHT = {"killed", "timeout"}


def main(path: str) -> int:
    per_module: dict[str, Counter] = defaultdict(Counter)
    survivors: list[str] = []
    for line in Path(path).read_text().splitlines():
        match = LINE.match(line)
        if not match:
            continue
        module = MANGLED.split(match.group("name"))[0]
        status = match.group("status")
        per_module[module][status] += 1
        if status in ("survived", "no tests"):
            survivors.append(line.strip())
    print(f"{'module':<45} {'mutants':>8} {'caught':>8} {'kill rate':>10} {'not checked':>12}")
    for module, counts in sorted(per_module.items()):
        total = sum(n for s, n in counts.items() if s not in ("skipped", "not checked"))
        caught = sum(counts[s] for s in CAUGHT)
        rate = f"{caught / total:.1%}" if total else "-"
        print(f"{module:<45} {total:>8} {caught:>8} {rate:>10} {counts['not checked']:>12}")
    print(f"\n{len(survivors)} mutant(s) not caught (`mutmut show NAME` shows one):")
    for line in survivors:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

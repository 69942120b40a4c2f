"""`python -m rlhf.report <run or sweep dir>...`: compare runs side by side (one table, overlaid curves).

Paths are run dirs (with summary.json) or sweep dirs (their job subdirs). With one sweep dir the comparison is written
into it; otherwise into outputs/compare/<date>_<time>/. The arguments are paths only (no options), read from argv.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rlhf.report.run_report import compare_runs


def main(argv: list) -> int:
    if not argv or any(a.startswith("-") for a in argv):
        print("usage: python -m rlhf.report <run or sweep dir>...", file=sys.stderr)
        return 2
    single = Path(argv[0])
    out = single if len(argv) == 1 and not (single / "summary.json").is_file() else \
        Path("outputs/compare") / time.strftime("%Y-%m-%d_%H-%M-%S")
    try:
        md, png = compare_runs(argv, out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {md}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

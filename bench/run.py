"""Run every benchmark in this folder; exit non-zero if one misses its target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = ["sqlite_push.py", "smtp_jobs.py", "inbox_store.py", "large_messages.py"]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed += subprocess.call([sys.executable, str(Path(__file__).with_name(name))]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

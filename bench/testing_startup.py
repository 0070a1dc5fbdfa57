"""How long the test toolkit's in-process server takes to start, once its modules are
imported (target ≤ 0.5 s): what every test session that uses `mailrunner_server` waits.

Each round starts `mailrunner.testing.server()` in a fresh temporary data_dir, measures until
it listens and answers (the block is entered), sends nothing, and stops it. The first import
is timed apart: it is paid once per process, by whatever imports the server first.
"""

from __future__ import annotations

import statistics
import sys
import time

ROUNDS = 20
TARGET_SECONDS = 0.5


def main() -> int:
    started = time.perf_counter()
    from mailrunner.testing.inprocess import server  # noqa: PLC0415 (timed)

    imported = time.perf_counter() - started
    starts: list[float] = []
    for _ in range(ROUNDS):
        began = time.perf_counter()
        with server():
            starts.append(time.perf_counter() - began)
    worst = max(starts)
    print(f"imports: {imported:.3f} s (once per process)")
    print(
        f"start-up over {ROUNDS} rounds: median {statistics.median(starts):.3f} s,"
        f" worst {worst:.3f} s (target <= {TARGET_SECONDS} s)"
    )
    return 0 if worst <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())

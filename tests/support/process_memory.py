"""What a process holds, read from /proc: the resident size now and its peak since a reset,
so a memory test measures one message's cost, not the process's history."""

from __future__ import annotations

from pathlib import Path

from support.requirements import unavailable


def memory_bytes(pid: int, key: str) -> int:
    """`VmRSS` (resident now) or `VmHWM` (peak since the last reset) of `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Start the peak resident size over from now; returns the idle resident size."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as error:
        unavailable(f"cannot reset the peak RSS of {pid} ({error}); needs Linux and the same user")
    return memory_bytes(pid, "VmRSS")

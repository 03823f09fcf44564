"""Peak memory of the current process, for the benchmarks' worker processes."""

from __future__ import annotations


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM) in MB.

    Not ``getrusage().ru_maxrss``: on Linux that value survives ``exec``, so a worker started from a
    big parent reports the parent's peak (every worker then shows the same number).
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")

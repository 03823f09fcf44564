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


def rss_mb() -> float:
    """This process's resident set now (VmRSS) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def reset_peak_rss() -> None:
    """Set the high-water mark (VmHWM) back to the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")

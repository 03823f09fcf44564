"""`trilens app` leaves no server behind: a SIGTERM to it (a process manager, a container stop) stops Streamlit too,
frees the port within 5 s and leaves no child process."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from app_driver import app_command, free_port, wait_healthy

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir() or os.name != "posix", reason="needs Linux's /proc")


def children(pid: int) -> list[int]:
    """Every live process whose parent is ``pid``, and theirs."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[1]) == pid and fields[0] != "Z":
            out += [int(entry.name), *children(int(entry.name))]
    return out


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_to_trilens_app_stops_the_server_and_frees_the_port():
    port = free_port()
    proc = subprocess.Popen(app_command("zoo:gpt", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(proc, port, timeout=120)
        tree = [proc.pid, *children(proc.pid)]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        stop = time.monotonic() + 5
        while any(alive(p) for p in tree):
            assert time.monotonic() < stop, f"processes {[p for p in tree if alive(p)]} outlived the SIGTERM"
            time.sleep(0.1)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a new server binds: past TIME_WAIT, not LISTEN
            s.bind(("127.0.0.1", port))  # the port is free again
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        for p in [proc.pid, *children(proc.pid)]:
            if alive(p):
                os.kill(p, signal.SIGKILL)

"""Child processes and polling: every wait bounded in time, every kill aimed at one PID."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time


def wait_until(pred, timeout: float = 20.0, what: str = "condition", interval: float = 0.1):
    """Poll pred() until it returns a truthy value and return that value; AssertionError
    naming `what` after `timeout` seconds (a test must fail, never hang)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def stop_pid(p: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    """Send `sig` to this one child by its PID (never by name) and reap it; SIGKILL when
    it outlives `timeout`. Nothing to do when it already exited."""
    if p.poll() is not None:
        return
    os.kill(p.pid, sig)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=timeout)


def rss_kib() -> int:
    """This process's resident memory (KiB), to show an attack allocated nothing big."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_threads(work, n: int, timeout: float = 120.0) -> None:
    """Run work(i) for i in range(n) on n threads at once; re-raise what any of them
    raised and fail if one is still running after `timeout` (a test must not hang)."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

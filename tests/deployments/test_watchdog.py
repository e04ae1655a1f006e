"""The engine watchdog on real processes: a replica stand-in starts a child the way vLLM does (it
inherits the environment), is SIGKILLed, and its child must end without anyone else's help."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from deployments import watchdog

REPLICA = r"""
import subprocess, sys, time
from deployments import watchdog
guard = watchdog.guard()
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(guard.pid, child.pid, flush=True)
time.sleep(600)
"""


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_a_killed_replicas_children_end_even_if_they_ignore_sigterm():
    replica = subprocess.Popen([sys.executable, "-c", REPLICA], stdout=subprocess.PIPE, text=True)
    try:
        guard_pid, child_pid = map(int, replica.stdout.readline().split())
        child = psutil.Process(child_pid)
        assert child.environ()[watchdog.OWNER_ENV].startswith(f"{replica.pid}:")
        assert watchdog.OWNER_ENV not in psutil.Process(guard_pid).environ()  # not its own victim
        time.sleep(2 * watchdog.POLL_S)
        assert child.is_running()  # nothing happens while the replica lives
        os.kill(replica.pid, signal.SIGKILL)
        replica.wait()
        # The child ignores SIGTERM: it is killed after the grace period; the watchdog then exits.
        assert wait_gone([child_pid, guard_pid], timeout_s=60) == []
    finally:
        for pid in (replica.pid,):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        replica.wait()


def test_a_reused_pid_is_not_the_replica():
    me = psutil.Process()
    assert watchdog.alive(me.pid, me.create_time())
    assert not watchdog.alive(me.pid, me.create_time() - 1)

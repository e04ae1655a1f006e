"""Engine processes die with their replica, however the replica ends.

vLLM runs its engine core and CPU/GPU workers in processes of their own, started from the replica's
process. A replica that exits normally shuts them down; one that is killed (`ray.kill`, a SIGKILL,
a failed health check, the OOM killer, `ray stop --force` on its node) cannot, and an orphaned
engine keeps its GPU memory (or, on a CPU, a busy-polling core), so the replacement replica cannot
start or starves. Nothing in vLLM watches the front-end process it serves.

`guard()` stamps the replica's environment with an owner mark before the engine starts, so every
process the engine starts (spawned, re-exec'd: the environment is inherited) carries it, and starts
a small watchdog process in a session of its own. The watchdog polls the replica; once the replica
is gone it terminates every process carrying the mark, then kills what is left after a grace
period, and exits. It imports neither Ray nor vLLM, and `ray stop` does not match it by name.

    python -m deployments.watchdog PID START_TICKS MARK

A replica is known by its pid and when it started, in clock ticks since boot (`start_ticks`), so that a
reused pid is another process. Not psutil's `create_time()`: that adds the boot time as the wall clock
gives it now, so a clock step (NTP, a VM's clock sync) changes it, every watchdog on the host would take
its live replica for gone, and every engine would be killed at once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

OWNER_ENV = "SERVE_APP_ENGINE_OWNER"
"""Environment variable naming the replica that owns an engine process: `pid:start_ticks`."""
POLL_S = 0.5
GRACE_S = 5.0


def start_ticks(pid: int) -> int:
    """When `pid` started, in clock ticks since boot (`starttime` in /proc/PID/stat): fixed for the
    process's life, whatever the wall clock does. OSError if there is no such process."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[19])  # field 22; fields after the name start at 3


def guard() -> subprocess.Popen:
    """Mark this process's future children as this replica's and start their watchdog."""
    pid = os.getpid()
    started = start_ticks(pid)
    mark = f"{pid}:{started}"
    os.environ[OWNER_ENV] = mark
    environment = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # the watchdog is not its own victim
    return subprocess.Popen([sys.executable, "-m", "deployments.watchdog", str(pid), str(started), mark],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True, env=environment)


def with_env(name: str, value: str) -> list[psutil.Process]:
    """Processes whose environment has name=value (those of other users cannot be read, nor ours be theirs)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get(name) == value:
                found.append(process)
    return found


def terminate(processes: list[psutil.Process], grace_s: float = GRACE_S) -> None:
    """SIGTERM, then SIGKILL for those still there after `grace_s`."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, left = psutil.wait_procs(processes, timeout=grace_s)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=grace_s)


def alive(pid: int, started: int) -> bool:
    """The process `pid` that started at `started` (`start_ticks`) still runs (a reused pid is another process)."""
    try:
        return start_ticks(pid) == started and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, IndexError, psutil.Error):
        return False


def reap(mark: str, grace_s: float = GRACE_S) -> list[int]:
    """End every process carrying `mark`; their pids."""
    victims = with_env(OWNER_ENV, mark)
    terminate(victims, grace_s)
    return [p.pid for p in victims]


def watch(pid: int, started: int, mark: str, poll_s: float = POLL_S) -> list[int]:
    while alive(pid, started):
        time.sleep(poll_s)
    return reap(mark)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

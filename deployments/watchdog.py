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

    python -m deployments.watchdog PID CREATE_TIME MARK
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

OWNER_ENV = "SERVE_APP_ENGINE_OWNER"
"""Environment variable naming the replica that owns an engine process: `pid:create_time`."""
POLL_S = 0.5
GRACE_S = 5.0


def guard() -> subprocess.Popen:
    """Mark this process's future children as this replica's and start their watchdog."""
    me = psutil.Process()
    mark = f"{me.pid}:{me.create_time()}"
    os.environ[OWNER_ENV] = mark
    environment = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # the watchdog is not its own victim
    return subprocess.Popen([sys.executable, "-m", "deployments.watchdog", str(me.pid), str(me.create_time()), mark],
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


def alive(pid: int, create_time: float) -> bool:
    """The process `pid` started at `create_time` still runs (a reused pid is another process)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == create_time and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(mark: str, grace_s: float = GRACE_S) -> list[int]:
    """End every process carrying `mark`; their pids."""
    victims = with_env(OWNER_ENV, mark)
    terminate(victims, grace_s)
    return [p.pid for p in victims]


def watch(pid: int, create_time: float, mark: str, poll_s: float = POLL_S) -> list[int]:
    while alive(pid, create_time):
        time.sleep(poll_s)
    return reap(mark)


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3])

"""Stop a process group and every process it started, even ones that left the group or lost their
parent (a vLLM engine process outlives a killed Ray replica), so that no Ray or vLLM process
outlives a test run or a benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil


def marked(name: str, value: str) -> list[psutil.Process]:
    """Processes whose environment has name=value: descendants of a marked process, even orphaned ones."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get(name) == value:
                found.append(process)
    return found


def stop_process_tree(leader: subprocess.Popen, first_signal: int = signal.SIGTERM, grace_s: float = 20,
                      marker: tuple[str, str] | None = None) -> None:
    """Stop `leader`'s group and descendants; with `marker`, also every process carrying it in its environment."""
    family: list[psutil.Process] = marked(*marker) if marker else []
    with contextlib.suppress(psutil.Error):
        family += psutil.Process(leader.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, first_signal)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(timeout=grace_s)
    for process in family:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait(timeout=30)

"""Stop a process group and every process it started, even ones that left the group (vLLM's engine
processes do), so no Ray or vLLM process outlives a test run or a benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil


def stop_process_tree(leader: subprocess.Popen, first_signal: int = signal.SIGTERM, grace_s: float = 20) -> None:
    family: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        family = psutil.Process(leader.pid).children(recursive=True)
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

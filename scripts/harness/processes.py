"""Stop a process group and every process it started, and check that a Ray cluster's engines end
with it, so that no Ray or vLLM process outlives a test run or a benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil

from deployments.watchdog import OWNER_ENV, terminate, with_env


def marked(name: str, value: str) -> list[psutil.Process]:
    """Processes whose environment has name=value: descendants of a marked process, even orphaned ones."""
    return with_env(name, value)


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
    terminate(family, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait(timeout=30)


def is_engine_side(process: psutil.Process) -> bool:
    """An engine process of a replica (it carries its owner's mark) or a replica's engine watchdog."""
    try:
        return OWNER_ENV in process.environ() or "deployments.watchdog" in process.cmdline()
    except psutil.Error:
        return False


def kill_ray(marker: tuple[str, str]) -> list[psutil.Process]:
    """`ray stop --force` on a cluster of this machine: SIGKILL every process carrying `marker` except the
    replicas' engines and their watchdogs, which must end by themselves. Returns those left to end."""
    processes = marked(*marker)
    engine_side = [p for p in processes if is_engine_side(p)]
    for process in processes:
        if process not in engine_side:
            with contextlib.suppress(psutil.Error):
                process.kill()
    return engine_side


def survivors(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still running after `timeout_s` (polled; a zombie has ended)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in processes if _running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def command(process: psutil.Process) -> str:
    """Its command line, or "" for a process that has ended (a zombie has no command line to read)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {process.name()} {' '.join(process.cmdline())[:120]}")
    return described

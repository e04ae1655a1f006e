"""Time from `serve run` to the first answer, and the peak memory of the whole stack.

    .venv/bin/python -m scripts.measure_startup [--config configs/local-cpu.yaml] [--out bench-out/startup.json]

Starts `serve run CONFIG` (the README's run command, after set-up), asks a chat question every
second until one is answered, sampling the proportional set size (PSS: shared pages split between
processes, so nothing is counted twice) of every process the command started; then runs
scripts/request_latency.py against it (sampler paused) and samples once more. Prints and writes one JSON
object; stops the stack and everything it started before exiting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from scripts.harness.processes import stop_process_tree

ROOT = Path(__file__).resolve().parents[1]


def stack_pss_bytes(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total


def ask(url: str) -> bool:
    body = json.dumps({"model": "strong", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                       "max_tokens": 16, "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", body, {"content-type": "application/json"})
    with contextlib.suppress(Exception), urllib.request.urlopen(request, timeout=120) as response:
        return response.status == 200
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/local-cpu.yaml")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "startup.json")
    args = parser.parse_args()
    port = yaml.safe_load((ROOT / args.config).read_text())["http_options"]["port"]
    url = f"http://127.0.0.1:{port}"

    started = time.monotonic()
    serve = subprocess.Popen([ROOT / ".venv/bin/serve", "run", args.config], cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(serve.pid)
    peak = {"bytes": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["bytes"] = max(peak["bytes"], stack_pss_bytes(root))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        while not ask(url):
            if time.monotonic() - started > args.timeout_s or serve.poll() is not None:
                sys.exit("the stack did not answer")
            time.sleep(1)
        first_answer_s = time.monotonic() - started
        stop.set()  # reading every process's smaps costs CPU: keep it out of the latency figures
        sampler.join()
        latency = subprocess.run([ROOT / ".venv/bin/python", "-m", "scripts.request_latency",
                                  "--base-url", f"{url}/v1"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        peak["bytes"] = max(peak["bytes"], stack_pss_bytes(root))
        result = json.dumps({
            "command": f"python -m scripts.measure_startup --config {args.config}",
            "config": args.config,
            "seconds_to_first_answer": round(first_answer_s, 1),
            "peak_stack_pss_gib": round(peak["bytes"] / 2**30, 2),
            "latency": [json.loads(line) for line in latency.splitlines() if line.strip()],
        }, indent=2)
        print(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result + "\n")
    finally:
        stop.set()
        stop_process_tree(serve, first_signal=signal.SIGINT, grace_s=60)  # SIGINT: serve run shuts the app down


if __name__ == "__main__":
    main()

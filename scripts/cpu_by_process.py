"""Where the CPU goes while a system serves one load level: CPU % per process, for the overhead work.

    .venv/bin/python -m scripts.cpu_by_process app --concurrency 16 [--out bench-out/cpu.json]   # or: vllm, ray-llm; --idle
    .venv/bin/python -m scripts.cpu_by_process vllm --with-ray           # vLLM beside an idle Ray + Serve

Starts the system as scripts/bench_serving.py does, runs one level of the same load on the `strong`
route (or, with --idle, nothing for --idle-s), and prints the load's figures and each process's CPU
over it (100 % = one core), and writes them as JSON with `--out`. On a CPU host every process shares the cores the engine's OpenMP threads
are bound to, so the serving stack's own CPU shows up as a slower engine.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from scripts import bench_serving
from scripts.harness.cluster import RayHead, assignments, free_port

ROOT = Path(__file__).resolve().parents[1]


def label(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    if command.startswith("ray::"):
        return command.split()[0]
    return f"{process.name()} {' '.join(Path(part).name for part in process.cmdline()[1:3])}"[:70]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=bench_serving.SYSTEMS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", default="configs/local-cpu.yaml")
    parser.add_argument("--idle", action="store_true", help="measure the idle system instead of a load")
    parser.add_argument("--idle-s", type=float, default=20)
    parser.add_argument("--with-ray", action="store_true", help="run an idle Ray head with Serve beside it")
    parser.add_argument("--ray-env", nargs="*", default=[], help="KEY=VALUE settings for the Ray heads it starts")
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    load = bench_serving.arguments().parse_args(["--raw-dir", tempfile.mkdtemp()])  # the benchmark's own load
    profile = yaml.safe_load((ROOT / args.profile).read_text())
    ray_env = assignments(args.ray_env)
    folder = Path(tempfile.mkdtemp(prefix="cpu-", dir="/tmp"))
    with contextlib.ExitStack() as stack:
        if args.with_ray:
            head = RayHead.start(folder / "beside.log", bench_serving.MARKER, env=ray_env)
            stack.callback(head.stop)
            head.deploy({"http_options": {"host": "127.0.0.1", "port": free_port()}, "applications": []}, cli=False)
        target = stack.enter_context(bench_serving.started(args.system, profile, folder, ray_env=ray_env))
        time.sleep(5)
        processes = [p for p in psutil.process_iter() if p.pid != os.getpid()]
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.cpu_percent(None)
        started = time.monotonic()
        if args.idle:
            time.sleep(args.idle_s)
            figures = "idle"
        else:
            result = bench_serving.run_load(target, "strong", args.concurrency, load)
            figures = (f"output {result['output_throughput']:.1f} tok/s, TTFT p50 {result['median_ttft_ms']:.0f} ms, "
                       f"TPOT p50 {result['median_tpot_ms']:.1f} ms")
        usage: collections.Counter[str] = collections.Counter()
        for process in processes:
            with contextlib.suppress(psutil.Error):
                usage[label(process)] += process.cpu_percent(None)
    seconds = time.monotonic() - started
    print(f"{args.system}, concurrency {args.concurrency}, {seconds:.0f} s: {figures}")
    shown = [(name, round(percent, 1)) for name, percent in usage.most_common() if percent >= 0.5]
    for name, percent in shown:
        print(f"{percent:7.1f} %  {name}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python -m scripts.cpu_by_process " + " ".join(sys.argv[1:]), "seconds": round(seconds, 1),
            "load": figures, "cpu_percent_of_one_core": dict(shown)}, indent=1) + "\n")


if __name__ == "__main__":
    main()

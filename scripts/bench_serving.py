"""Side-by-side serving benchmark: this app against vLLM's own OpenAI server and Ray Serve LLM.

    .venv/bin/python -m scripts.bench_serving [--systems app,vllm,ray-llm] [--routes strong,cheap,auto]
        [--concurrency 1,4,16] [--input-len 256] [--output-len 64] [--out bench-out/serving.json]
        [--ray-env RAY_SERVE_ENABLE_HA_PROXY=1]

The same model (the profile's strong tier), engine settings, machine and load for every system:
- app: `serve deploy` of the profile as shipped (only its port changed) on a throwaway Ray head; routes
  `strong`, `cheap` and `auto` (the cascade);
- vllm: `python -m vllm.entrypoints.openai.api_server` on the strong model, the same engine kwargs;
- ray-llm: `ray.serve.llm:build_openai_app` on the same model and kwargs, on its own Ray head.
One system runs at a time. The load is vLLM's benchmark client (`vllm.benchmarks.serve`): chat
completions, streamed, random prompts of `--input-len` tokens, `--output-len` tokens each (ignore_eos),
`--max-concurrency` closed-loop streams per level; prompts differ by route and level (no prefix-cache
hits between levels) and are identical across systems. `--app-url` / `--vllm-url` / `--ray-llm-url`
measure an already running system instead of starting one (OPENAI_API_KEY is sent if set).

Writes the summary (per system, route and level: request and output-token throughput, TTFT and TPOT
p50/p99, goodput against the SLOs; then the overhead of the app's `strong` route against vLLM direct
and Ray Serve LLM) as JSON, the same rows as CSV beside it, and a PNG plot (`--plot`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scripts.harness.cluster import BIN, ROOT, RayHead, app_args, assignments, free_port, load_profile, wait_for
from scripts.harness.processes import stop_process_tree
from serve_app.analysis.bench_stats import Slo, overhead, records, summarize
from serve_app.config import AppConfig

MARKER = ("SERVE_APP_BENCH_RUN", str(os.getpid()))
SYSTEMS = ("app", "vllm", "ray-llm")
START_TIMEOUT_S = 900


@dataclass
class Target:
    """A running system: its API root and the model name of each route it serves."""

    system: str
    base_url: str
    models: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)


def serving(base_url: str, model: str) -> bool:
    """True once the API lists models and answers one chat request for `model`."""
    with httpx.Client(base_url=base_url, timeout=120, headers=_auth()) as http:
        if http.get("/v1/models").status_code != 200:
            return False
        body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        return http.post("/v1/chat/completions", json=body).status_code == 200


def _auth() -> dict[str, str]:
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def first_model(base_url: str) -> str:
    return httpx.get(f"{base_url}/v1/models", headers=_auth(), timeout=30).json()["data"][0]["id"]


def engine_flags(engine_kwargs: dict) -> list[str]:
    """vLLM CLI flags for AsyncEngineArgs keyword arguments."""
    flags = []
    for name, value in engine_kwargs.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags.append(f"{flag}={value}")
    return flags


def bench_profile(profile: dict, port: int) -> dict:
    """The profile as shipped, on `port`: what its users get (its admission follows measured capacity)."""
    config = json.loads(json.dumps(profile))
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    return config


def ray_llm_config(strong, model_name: str, port: int) -> dict:
    """Ray Serve LLM's OpenAI app on the strong tier's model, engine kwargs and env, one replica."""
    llm_config = {
        "model_loading_config": {"model_id": model_name, "model_source": strong.model.resolved()},
        "engine_kwargs": strong.engine.args,
        "placement_group_config": {"bundles": [{"CPU": 1}]},  # its default asks for a GPU
        "runtime_env": {"env_vars": strong.engine.env_vars},
        "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    }
    return {"http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": "ray-llm", "route_prefix": "/", "import_path": "ray.serve.llm:build_openai_app",
                              "args": {"llm_configs": [llm_config]}}]}


@contextlib.contextmanager
def started(system: str, profile: dict, folder: Path,
            ray_env: dict[str, str] | None = None, label: str | None = None) -> Iterator[Target]:
    """Start `system` on free loopback ports, yield it once it answers, stop it and its processes.
    `ray_env` is added to a Ray head's environment (e.g. Ray Serve's RAY_SERVE_* settings); `label`
    names the log file (default: the system)."""
    config = AppConfig.model_validate(app_args(profile))
    strong = config.tiers[config.cascade.strong_tier]
    model_name = Path(strong.model.source).name
    port, log = free_port(), folder / f"{label or system}.log"
    base_url = f"http://127.0.0.1:{port}"
    head = None
    process = None
    try:
        if system == "vllm":
            process = subprocess.Popen(
                [BIN / "python", "-m", "vllm.entrypoints.openai.api_server", "--model", strong.model.resolved(),
                 "--served-model-name", model_name, "--host", "127.0.0.1", f"--port={port}",
                 *engine_flags(strong.engine.args)],
                cwd=ROOT, env={**os.environ, **strong.engine.env_vars, MARKER[0]: MARKER[1]},
                stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
            target = Target(system, base_url, {"strong": model_name}, [process])
        elif system == "app":
            head = RayHead.start(log, MARKER, env=ray_env)
            head.deploy(bench_profile(profile, port), cli=False)
            target = Target(system, base_url, {route: route for route in ("strong", "cheap", "auto")}, [head.process])
        elif system == "ray-llm":
            head = RayHead.start(log, MARKER, env=ray_env)
            head.deploy(ray_llm_config(strong, model_name, port), cli=False)
            target = Target(system, base_url, {"strong": model_name}, [head.process])
        else:
            raise ValueError(f"unknown system {system!r}; known: {SYSTEMS}")
        started_at = time.monotonic()
        for model in target.models.values():  # one answer per route: the router's slow start is over
            wait_for(f"{system} serving {model}", lambda m=model: serving(base_url, m), START_TIMEOUT_S,
                     watch=target.processes)
        print(f"{system}: serving after {time.monotonic() - started_at:.0f} s", flush=True)
        yield target
    finally:
        if head is not None:
            head.stop()
        if process is not None:
            stop_process_tree(process, marker=MARKER)


def run_load(target: Target, route: str, concurrency: int, args: argparse.Namespace) -> dict:
    """One level with vLLM's benchmark client; its result dict (per-request lists included)."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    seed = zlib.crc32(f"{route}/{concurrency}".encode())  # same prompts for every system, new ones per level
    cli = ["--backend", "openai-chat", "--base-url", target.base_url, "--endpoint", "/v1/chat/completions",
           "--model", target.models[route], "--tokenizer", str(ROOT / args.tokenizer),
           "--dataset-name", "random", "--input-len", str(args.input_len), "--output-len", str(args.output_len),
           "--num-prompts", str(prompts_per_level(args, concurrency)),
           "--max-concurrency", str(concurrency), "--num-warmups", str(concurrency), "--seed", str(seed),
           "--temperature", "0", "--ignore-eos", "--disable-tqdm", "--save-result", "--save-detailed",
           "--result-dir", str(args.raw_dir), "--result-filename", f"{target.system}-{route}-c{concurrency}.json",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--goodput", f"ttft:{args.slo_ttft_ms}", f"tpot:{args.slo_tpot_ms}"]
    return main(parser.parse_args(cli))


def row(target: Target, route: str, concurrency: int, result: dict, slo: Slo) -> dict:
    summary = summarize(records(result), result["duration"], slo)
    return {"system": target.system, "route": route, "concurrency": concurrency, **summary,
            "vllm_client": {"output_throughput": round(result["output_throughput"], 3),
                            "median_ttft_ms": round(result["median_ttft_ms"], 2),
                            "median_tpot_ms": round(result["median_tpot_ms"], 2),
                            "request_goodput": result.get("request_goodput")}}


def write_csv(rows: list[dict], path: Path) -> None:
    columns = [key for key in rows[0] if key != "vllm_client"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("output_throughput", "output tokens/s"), ("ttft_ms_p50", "TTFT p50 (ms)"), ("tpot_ms_p50", "TPOT p50 (ms)")]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = sorted({(r["system"], r["route"]) for r in rows}, key=lambda s: (SYSTEMS.index(s[0]), s[1]))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for system, route in series:
            points = sorted((r["concurrency"], r[metric]) for r in rows
                            if (r["system"], r["route"]) == (system, route) and r[metric] is not None)
            name = f"app {route}" if system == "app" else f"{system} (strong model)"
            ax.plot(*zip(*points, strict=True), marker="o", label=name, linestyle="-" if system == "app" else "--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    figure.suptitle("Same model, engine settings and load on this machine: this app vs vLLM direct vs Ray Serve LLM")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def arguments() -> argparse.ArgumentParser:
    """The command line; its defaults are the load every benchmark of this project uses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="configs/local-cpu.yaml")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--routes", default="strong,cheap,auto", help="the app's routes to measure")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3, help="requests per stream at each level")
    parser.add_argument("--min-prompts", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--slo-ttft-ms", type=float, default=2000)
    parser.add_argument("--slo-tpot-ms", type=float, default=250)
    parser.add_argument("--tokenizer", default="models/smollm2-135m-instruct")
    parser.add_argument("--ray-env", nargs="*", default=[],
                        help="KEY=VALUE for both Ray heads (app, ray-llm), e.g. RAY_SERVE_ENABLE_HA_PROXY=1")
    for system in SYSTEMS:
        parser.add_argument(f"--{system}-url", help=f"measure this running {system} instead of starting one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/serving.json")
    parser.add_argument("--plot", type=Path, help="PNG plot (default: beside --out)")
    parser.add_argument("--raw-dir", type=Path, help="vLLM's per-request results (default: a folder beside --out)")
    return parser


def prompts_per_level(args: argparse.Namespace, concurrency: int) -> int:
    return max(args.min_prompts, concurrency * args.rounds)


def main() -> None:
    args = arguments().parse_args()
    args.raw_dir = args.raw_dir or args.out.with_suffix("")

    profile = load_profile(args.profile)
    os.environ.pop("SERVE_APP_API_KEYS", None)  # a loopback benchmark: the clusters it starts take no API keys
    levels = [int(c) for c in args.concurrency.split(",")]
    routes = args.routes.split(",")
    slo = Slo(args.slo_ttft_ms, args.slo_tpot_ms)
    folder = Path(tempfile.mkdtemp(prefix="bench-serving-", dir="/tmp"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop what was started
    rows: list[dict] = []
    for system in args.systems.split(","):
        url = getattr(args, f"{system.replace('-', '_')}_url")
        if url:
            models = ({route: route for route in routes} if system == "app" else {"strong": first_model(url)})
            context = contextlib.nullcontext(Target(system, url.rstrip("/"), models))
        else:
            context = started(system, profile, folder, ray_env=assignments(args.ray_env))
        with context as target:
            for route in (routes if system == "app" else ["strong"]):
                for concurrency in levels:
                    result = run_load(target, route, concurrency, args)
                    rows.append(row(target, route, concurrency, result, slo))
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "vllm_client"}), flush=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "profile": args.profile, "ray_env": args.ray_env},
        "load": {"input_len": args.input_len, "output_len": args.output_len, "concurrency": levels,
                 "requests_per_level": {c: prompts_per_level(args, c) for c in levels},
                 "client": "vllm.benchmarks.serve (openai-chat, streamed, random prompts, ignore_eos)"},
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
        "overhead": overhead(rows),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    write_csv(rows, args.out.with_suffix(".csv"))
    plot(rows, args.plot or args.out.with_suffix(".png"))
    print(json.dumps(report["overhead"], indent=1))
    print(f"wrote {args.out}, {args.out.with_suffix('.csv')} and {args.plot or args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

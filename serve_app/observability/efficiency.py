"""How close decoding runs to the hardware's limits: model bandwidth and FLOPs utilization.

Decoding one step of a batch reads every weight once (shared by the batch) plus each sequence's KV
cache, and emits one token per sequence; at small batches it is bound by memory bandwidth. So

    MBU = (weight bytes + batch * KV bytes per sequence) / TPOT / peak memory bandwidth
    MFU = 2 * parameters * batch / TPOT / peak FLOP/s          (a forward pass is ~2 FLOPs per weight)

with TPOT the time of one decode step. Pure arithmetic, plus the probes that measure a CPU's peaks
(the GPU profiles give theirs in config) and a parameter count read from safetensors headers.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True, slots=True)
class ModelShape:
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    weight_bytes_per_parameter: float
    kv_bytes_per_value: float

    @classmethod
    def from_hf_config(cls, config: dict, parameters: int, dtype: str, kv_dtype: str | None = None) -> ModelShape:
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        return cls(parameters, config["num_hidden_layers"], config.get("num_key_value_heads", config["num_attention_heads"]),
                   head_dim, DTYPE_BYTES[dtype], DTYPE_BYTES[kv_dtype or dtype])

    @property
    def weight_bytes(self) -> float:
        return self.parameters * self.weight_bytes_per_parameter

    def kv_bytes(self, context_tokens: int) -> float:
        """Keys and values of one sequence of `context_tokens`, over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_value * context_tokens


def bytes_per_step(model: ModelShape, batch: int, context_tokens: int) -> float:
    return model.weight_bytes + batch * model.kv_bytes(context_tokens)


def mbu(model: ModelShape, tpot_s: float, peak_bytes_per_s: float, batch: int = 1, context_tokens: int = 0) -> float:
    return bytes_per_step(model, batch, context_tokens) / tpot_s / peak_bytes_per_s


def mfu(model: ModelShape, tpot_s: float, peak_flops: float, batch: int = 1) -> float:
    return 2 * model.parameters * batch / tpot_s / peak_flops


def count_parameters(folder: str | Path) -> int:
    """Parameters stored in a model folder's safetensors files, from their headers alone."""
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total


def probe_bandwidth(gib: float = 1.0, threads: int | None = None, repeats: int = 5) -> float:
    """Bytes per second moved by a parallel copy of `gib` GiB (read + write counted), best of `repeats`."""
    threads = threads or os.cpu_count() or 1
    n = int(gib * 2**30) // 4
    src, dst = np.ones(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    parts = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda p: np.copyto(*p), parts))  # numpy releases the GIL for the copy
            best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best

def probe_flops(size: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a  # warm-up (BLAS threads)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def probe_peaks(bandwidth_gb_s: float | None, tflops: float | None) -> tuple[float, float]:
    """Configured peaks, or probed ones; one probe at a time per node, so replicas starting together
    do not halve each other's figure."""
    if bandwidth_gb_s is not None and tflops is not None:
        return bandwidth_gb_s * 1e9, tflops * 1e12
    with open(Path(tempfile.gettempdir()) / "serve_app-peak-probe.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return (bandwidth_gb_s * 1e9 if bandwidth_gb_s else probe_bandwidth(0.25, repeats=3),
                tflops * 1e12 if tflops else probe_flops(1024, repeats=3))


class AnswerEfficiency:
    """MBU and MFU of each finished answer, from the model's shape and the configured or probed peaks."""

    def __init__(self, model_dir: str, hf_config: dict[str, Any], dtype: str, peaks: tuple[float, float]):
        self.shape = ModelShape.from_hf_config(hf_config, count_parameters(model_dir), dtype)
        self.peak_bytes_per_s, self.peak_flops = peaks

    def of(self, tpot_s: float, batch: float, context_tokens: int) -> tuple[float, float]:
        batch = max(1, round(batch))
        return (mbu(self.shape, tpot_s, self.peak_bytes_per_s, batch, context_tokens),
                mfu(self.shape, tpot_s, self.peak_flops, batch))

    def of_answer(self, decode_s: float, produced: int, life_s: float, held_s: float,
                  prompt_tokens: int) -> tuple[float, float] | None:
        """MBU and MFU of one finished answer: its TPOT over its decode, at its mean batch (its life over
        the replica share it held, serve_app.observability.metering), at its mid-answer context. None for an
        answer too short to have a TPOT."""
        if produced < 2 or held_s <= 0:
            return None
        return self.of(decode_s / (produced - 1), life_s / held_s, prompt_tokens + produced // 2)

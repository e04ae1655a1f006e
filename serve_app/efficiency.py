"""How close decoding runs to the hardware's limits: model bandwidth and FLOPs utilization.

Decoding one step of a batch reads every weight once (shared by the batch) plus each sequence's KV
cache, and emits one token per sequence; at small batches it is bound by memory bandwidth. So

    MBU = (weight bytes + batch * KV bytes per sequence) / TPOT / peak memory bandwidth
    MFU = 2 * parameters * batch / TPOT / peak FLOP/s          (a forward pass is ~2 FLOPs per weight)

with TPOT the time of one decode step. Pure arithmetic; the peaks come from config (GPU profiles) or
from a probe (scripts/efficiency.py on this CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

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

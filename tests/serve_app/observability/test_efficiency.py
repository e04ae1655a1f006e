"""MBU and MFU arithmetic against hand-computed cases."""

import json
import struct

import pytest

from serve_app.observability.efficiency import AnswerEfficiency, ModelShape, bytes_per_step, count_parameters, mbu, mfu

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "num_hidden_layers": 30}


def test_shape_from_a_hugging_face_config():
    shape = ModelShape.from_hf_config(SMOLLM2, parameters=134_515_008, dtype="float32")
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (30, 3, 64)
    assert shape.weight_bytes == 134_515_008 * 4
    assert shape.kv_bytes(100) == 2 * 30 * 3 * 64 * 4 * 100  # 4.6 MB for 100 tokens


def test_head_dim_defaults_to_hidden_over_heads():
    config = {k: v for k, v in SMOLLM2.items() if k != "head_dim"}
    assert ModelShape.from_hf_config(config, 1, "bfloat16").head_dim == 64


def test_mbu_counts_weights_once_per_step_and_kv_per_sequence():
    shape = ModelShape(parameters=1_000_000_000, layers=10, kv_heads=2, head_dim=100, weight_bytes_per_parameter=2,
                       kv_bytes_per_value=2)
    assert bytes_per_step(shape, batch=4, context_tokens=1000) == 2e9 + 4 * (2 * 10 * 2 * 100 * 2 * 1000)
    # 2.032 GB per step in 20 ms against a 200 GB/s peak: 101.6 GB/s achieved.
    assert mbu(shape, tpot_s=0.02, peak_bytes_per_s=200e9, batch=4, context_tokens=1000) == pytest.approx(0.508)


def test_mfu_is_two_flops_per_weight_per_token():
    shape = ModelShape(7_000_000_000, 32, 8, 128, 2, 2)
    assert mfu(shape, tpot_s=0.025, peak_flops=1e15, batch=64) == pytest.approx(2 * 7e9 * 64 / 0.025 / 1e15)


def write(folder, name, tensors):
    """A safetensors file of only its header: what the parameter count reads."""
    header = json.dumps({"__metadata__": {"format": "pt"}, **{
        k: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]} for k, shape in tensors.items()}}).encode()
    (folder / name).write_bytes(struct.pack("<Q", len(header)) + header)


def test_parameters_are_counted_from_safetensors_headers(tmp_path):
    write(tmp_path, "model-00001.safetensors", {"embed": [100, 8], "norm": [8]})
    write(tmp_path, "model-00002.safetensors", {"layer.0.w": [8, 8]})
    (tmp_path / "config.json").write_text("{}")
    assert count_parameters(tmp_path) == 800 + 8 + 64


def test_an_answers_figures_use_its_decode_time_and_mean_batch(tmp_path):
    write(tmp_path, "model.safetensors", {"w": [1000, 1000]})
    answer = AnswerEfficiency(str(tmp_path), SMOLLM2, "float32", peaks=(1e9, 1e12))
    # 11 tokens decoded in 1 s (TPOT 0.1 s); alive 4 s holding 1 s of the replica: a batch of 4.
    assert answer.of_answer(decode_s=1.0, produced=11, life_s=4.0, held_s=1.0, prompt_tokens=20) == pytest.approx(
        answer.of(0.1, 4, 25))
    assert answer.of(0.1, 4, 25)[1] == pytest.approx(2 * 1e6 * 4 / 0.1 / 1e12)
    assert answer.of_answer(decode_s=0.0, produced=1, life_s=1.0, held_s=1.0, prompt_tokens=20) is None

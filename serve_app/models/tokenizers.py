"""Whether two models share a tokenizer: a speculative cascade passes token ids between its tiers, so
their vocabularies must be the same (chat templates may differ: each tier applies its own)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def vocabulary_fingerprint(model_dir: str | Path) -> str | None:
    """A hash of the model's token ids and their strings (tokenizer.json's vocabulary, merges and added
    tokens, or vocab.json); None when the folder has neither."""
    folder = Path(model_dir)
    if (folder / "tokenizer.json").is_file():
        data = json.loads((folder / "tokenizer.json").read_text())
        model = data.get("model", {})
        added = sorted((t["id"], t["content"]) for t in data.get("added_tokens", []))
        content = [model.get("type"), model.get("vocab"), model.get("merges"), added]
    elif (folder / "vocab.json").is_file():
        content = [json.loads((folder / "vocab.json").read_text())]
    else:
        return None
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def check_shared_tokenizer(cheap: tuple[str, str], strong: tuple[str, str]) -> None:
    """Raise a ValueError naming both models unless their local folders have the same vocabulary.
    Each argument: (label, model folder). Models not in a local folder (s3://, hub ids) are skipped."""
    prints = {label: vocabulary_fingerprint(path) if Path(path).is_dir() else None for label, path in (cheap, strong)}
    if None in prints.values():
        return
    if prints[cheap[0]] != prints[strong[0]]:
        raise ValueError(f"cascade.mode speculative needs tiers that share a tokenizer, but {cheap[0]} ({cheap[1]}) "
                         f"and {strong[0]} ({strong[1]}) have different vocabularies; use mode: confidence, or a "
                         "draft model from the strong model's family")

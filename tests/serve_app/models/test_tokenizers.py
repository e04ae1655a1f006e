"""Whether two model folders share a vocabulary (a speculative cascade's precondition)."""

import json

import pytest

from serve_app.config.base import PROJECT_ROOT
from serve_app.models.tokenizers import check_shared_tokenizer, vocabulary_fingerprint


def tokenizer(folder, vocab, template="{{ messages }}"):
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []},
                                                       "added_tokens": [{"id": 0, "content": "<eos>"}]}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return str(folder)


def test_same_vocabulary_passes_whatever_the_chat_template(tmp_path):
    a = tokenizer(tmp_path / "a", {"a": 1, "b": 2})
    b = tokenizer(tmp_path / "b", {"b": 2, "a": 1}, template="other")
    assert vocabulary_fingerprint(a) == vocabulary_fingerprint(b)
    check_shared_tokenizer(("cheap", a), ("strong", b))


def test_different_vocabularies_are_a_config_error_naming_both(tmp_path):
    a, b = tokenizer(tmp_path / "a", {"a": 1}), tokenizer(tmp_path / "b", {"a": 2})
    with pytest.raises(ValueError, match=r"cheap .*strong .*different vocabularies"):
        check_shared_tokenizer(("cheap", a), ("strong", b))


def test_models_not_in_a_local_folder_are_not_judged(tmp_path):
    assert vocabulary_fingerprint(tmp_path) is None
    check_shared_tokenizer(("cheap", "s3://bucket/m"), ("strong", tokenizer(tmp_path / "b", {"a": 2})))


def test_the_bundled_pair_shares_its_tokenizer():
    models = PROJECT_ROOT / "models"
    cheap, strong = models / "smollm2-135m-instruct-pruned", models / "smollm2-135m-instruct"
    if not (cheap / "tokenizer.json").is_file():
        pytest.skip("the model store is made by scripts/setup.sh")
    assert vocabulary_fingerprint(cheap) == vocabulary_fingerprint(strong) is not None

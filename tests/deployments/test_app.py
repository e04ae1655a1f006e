"""The app builder refuses a speculative cascade over tiers that do not share a tokenizer (builds the
Serve application graph only: no cluster, no engine)."""

import json
import shutil

import pytest

from deployments.app import build_app
from serve_app.config.base import PROJECT_ROOT

STRONG = PROJECT_ROOT / "models" / "smollm2-135m-instruct"


def args(cheap: str, strong: str, **cascade) -> dict:
    return {"tiers": {"cheap": {"model": {"source": cheap}}, "strong": {"model": {"source": strong}}}, "cascade": cascade}


@pytest.fixture
def other_vocabulary(tmp_path):
    if not (STRONG / "tokenizer.json").is_file():
        pytest.skip("the model store is made by scripts/setup.sh")
    folder = tmp_path / "other"
    folder.mkdir()
    data = json.loads((STRONG / "tokenizer.json").read_text())
    data["model"]["vocab"] = {f"x{token}": i for token, i in data["model"]["vocab"].items()}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    shutil.copy(STRONG / "config.json", folder)
    return str(folder)


def test_speculative_mode_over_different_vocabularies_is_refused_at_build(other_vocabulary):
    with pytest.raises(ValueError, match="share a tokenizer"):
        build_app(args(other_vocabulary, str(STRONG), mode="speculative"))
    with pytest.raises(ValueError, match="share a tokenizer"):
        build_app(args(other_vocabulary, str(STRONG), allow_request_overrides=True))


def test_the_confidence_mode_takes_any_pair_and_a_shared_tokenizer_builds(other_vocabulary):
    assert build_app(args(other_vocabulary, str(STRONG))) is not None
    assert build_app(args(str(STRONG), str(STRONG), mode="speculative")) is not None

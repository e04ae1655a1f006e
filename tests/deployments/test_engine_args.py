"""Engine options in the shipped profiles are real vLLM AsyncEngineArgs fields (imports vLLM, not Ray Serve apps)."""

from pathlib import Path

import pytest
import yaml

from deployments.vllm_engine import check_engine_args
from serve_app.config import AppConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("profile", ["local-cpu.yaml", "gpu.yaml"])
def test_profile_engine_args_are_vllm_fields(profile):
    args = yaml.safe_load((CONFIGS / profile).read_text())["applications"][0]["args"]
    for tier in AppConfig.model_validate(args).tiers.values():
        for version in tier.all_versions().values():
            check_engine_args(version.engine.args)


def test_misspelled_engine_arg_is_named():
    with pytest.raises(ValueError, match=r"engine.args: \['max_model_length'\]"):
        check_engine_args({"max_model_length": 1024})

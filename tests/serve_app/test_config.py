"""The config tree: shipped profiles validate; bad configs fail naming the field."""

import copy
import math
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from serve_app.config import AppConfig, RolloutConfig, overlaid, serve_app_entry
from serve_app.config import check_serve_config as check
from serve_app.models.store import transfer_settings
from serve_app.routing.scorers import scorer_for

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def app_args(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())["applications"][0]["args"]


def app_args_of(serve_config: dict) -> dict:
    return serve_app_entry(serve_config)["args"]


@pytest.mark.parametrize("profile", ["local-cpu.yaml", "gpu.yaml"])
def test_shipped_profiles_validate(profile):
    config = AppConfig.model_validate(app_args(profile))
    assert {"cheap", "strong"} <= set(config.tiers)


def test_kuberay_manifest_embeds_the_gpu_profile_unchanged():
    manifest = yaml.safe_load((CONFIGS / "kuberay-rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((CONFIGS / "gpu.yaml").read_text()), "run python -m scripts.kuberay_manifest"
    AppConfig.model_validate(embedded["applications"][0]["args"])


def test_local_profile_resolves_models_inside_the_project():
    config = AppConfig.model_validate(app_args("local-cpu.yaml"))
    assert Path(config.tiers["strong"].model.resolved()).is_absolute()
    assert config.tiers["strong"].model.resolved().endswith("models/smollm2-135m-instruct")
    options = config.tiers["cheap"].replica_options()
    assert options["ray_actor_options"]["runtime_env"]["env_vars"]["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def broken(mutate) -> str:
    args = copy.deepcopy(app_args("local-cpu.yaml"))
    mutate(args)
    with pytest.raises(ValidationError) as caught:
        AppConfig.model_validate(args)
    return str(caught.value)


def test_unknown_field_is_named():
    message = broken(lambda a: a["tiers"]["cheap"]["model"].update(sorce="x"))
    assert "tiers.cheap.model.sorce" in message and "Extra inputs are not permitted" in message


def test_unknown_scorer_lists_the_choices():
    message = broken(lambda a: a["cascade"].update(scorer="vibes"))
    assert "cascade.scorer" in message and "mean_prob" in message


def test_threshold_out_of_range_is_named():
    assert "cascade.threshold" in broken(lambda a: a["cascade"].update(threshold=1.5))


def test_the_learned_scorer_needs_its_rule_over_known_features():
    assert "needs cascade.learned" in broken(lambda a: a["cascade"].update(scorer="learned"))
    message = broken(lambda a: a["cascade"].update(scorer="learned", learned={"intercept": 0, "coefficients": {"vibes": 1.0}}))
    assert "cascade.learned.coefficients.vibes" in message and "'median'" in message
    args = copy.deepcopy(app_args("local-cpu.yaml"))
    args["cascade"].update(scorer="learned", learned={"intercept": -1.0, "coefficients": {"min": 2.0}})
    score = scorer_for(AppConfig.model_validate(args).cascade)
    assert score([math.log(0.5), 0.0]) == pytest.approx(1 / (1 + math.exp(1 + 2 * math.log(2))))


def test_cascade_must_name_existing_tiers():
    assert "cascade.strong_tier" in broken(lambda a: a["cascade"].update(strong_tier="huge"))


def test_replicas_and_autoscaling_are_exclusive():
    message = broken(lambda a: a["tiers"]["cheap"]["deployment"].update(autoscaling_config={"max_replicas": 2}))
    assert "tiers.cheap.deployment" in message


def test_a_tiers_request_router_is_passed_to_ray_serve_and_a_bad_one_is_named():
    router = {"request_router_class": "deployments.prefix_router:PrefixAffinityRouter",
              "request_router_kwargs": {"imbalanced_threshold": 2}}
    args = copy.deepcopy(app_args("local-cpu.yaml"))
    args["tiers"]["strong"]["deployment"].update(num_replicas=2, request_router_config=router)
    assert AppConfig.model_validate(args).tiers["strong"].replica_options()["request_router_config"] == router
    assert "request_router_config" not in AppConfig.model_validate(app_args("local-cpu.yaml")).tiers[
        "strong"].replica_options()  # unset: Ray Serve's default router
    message = broken(lambda a: a["tiers"]["strong"]["deployment"].update(
        request_router_config={"request_router_clas": "x.Y"}))
    assert "tiers.strong.deployment.request_router_config.request_router_clas" in message
    message = broken(lambda a: a["tiers"]["strong"]["deployment"].update(
        request_router_config={"request_router_class": "prefix aware"}))
    assert "tiers.strong.deployment.request_router_config.request_router_class" in message


def test_slots_beyond_what_a_replica_takes_are_refused():
    message = broken(lambda a: a["tiers"]["cheap"]["limits"].update(concurrency_slots=1000))
    assert "limits.concurrency_slots (1000 per replica) exceeds" in message


def test_initial_replicas_of_fixed_and_autoscaled_tiers():
    config = AppConfig.model_validate(app_args("gpu.yaml"))
    assert config.tiers["cheap"].initial_replicas == 1
    args = copy.deepcopy(app_args("local-cpu.yaml"))
    args["tiers"]["cheap"]["deployment"].update(num_replicas=3)
    assert AppConfig.model_validate(args).tiers["cheap"].initial_replicas == 3


def test_scale_to_zero_needs_no_dispatch_timeout():
    def scale_to_zero(args):
        args["tiers"]["cheap"]["deployment"].update(num_replicas=None, autoscaling_config={"min_replicas": 0})
    assert "limits.dispatch_timeout_s: null" in broken(scale_to_zero)
    args = copy.deepcopy(app_args("local-cpu.yaml"))
    scale_to_zero(args)
    args["tiers"]["cheap"]["limits"]["dispatch_timeout_s"] = None
    AppConfig.model_validate(args)


def test_tier_may_not_shadow_the_cascade_route():
    assert "reserved" in broken(lambda a: a["tiers"].update(auto=a["tiers"]["cheap"]))


def test_unknown_span_exporter_is_named():
    message = broken(lambda a: a.update(observability={"tracing": {"exporter": "jaeger"}}))
    assert "observability.tracing.exporter" in message and "'otlp'" in message


def test_prices_are_checked_by_name():
    assert "tiers.cheap.price.usd_per_replica_hour" in broken(
        lambda a: a["tiers"]["cheap"]["price"].update(usd_per_replica_hour=-1))
    assert "tiers.cheap.price.usd_per_hour" in broken(lambda a: a["tiers"]["cheap"]["price"].update(usd_per_hour=1))


def test_an_s3_model_source_is_kept_as_a_uri():
    args = copy.deepcopy(app_args("local-cpu.yaml"))
    args["tiers"]["cheap"]["model"] = {"source": "s3://models/cheap/v1"}
    config = AppConfig.model_validate(args)
    assert config.tiers["cheap"].model.from_s3 and config.tiers["cheap"].model.resolved() == "s3://models/cheap/v1"
    assert transfer_settings(config.model_store).chunk_size_bytes == 8 * 2**20
    assert "model_store.chunk_size_mb" in broken(lambda a: a.update(model_store={"chunk_size_mb": 1}))


@pytest.mark.parametrize("profile", ["local-cpu.yaml", "gpu.yaml"])
def test_shipped_profiles_rollouts_validate(profile):
    tiers = check(yaml.safe_load((CONFIGS / profile).read_text()))["llm"]
    assert {tier: traffic["stable"] for tier, traffic in tiers.items()} == {"cheap": "v1", "strong": "v1"}


def test_the_rollout_check_names_the_application_and_field_at_fault():
    serve_config = yaml.safe_load((CONFIGS / "local-cpu.yaml").read_text())
    serve_config["applications"][0]["deployments"][0]["user_config"] = {"rollouts": {"strong": {"stable": "v7"}}}
    with pytest.raises(ValueError, match=r"application 'llm': rollouts.strong.stable: 'v7' is not one of its versions"):
        check(serve_config)


@pytest.mark.parametrize("profile", ["local-cpu.yaml", "gpu.yaml"])
def test_no_shipped_profile_lets_requests_pick_their_cascade(profile):
    assert not AppConfig.model_validate(app_args(profile)).cascade.allow_request_overrides


def config_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """Every model of the config tree under `root`."""
    found, todo = [], [root]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                annotation = stack.pop()
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    todo.append(annotation)
                stack += typing.get_args(annotation)
    return found


def test_every_config_field_is_set_by_a_profile_a_test_or_a_script():
    # A knob nobody sets is a knob nobody needs: remove it, or show where it matters.
    root = CONFIGS.parent
    texts = [p.read_text() for pattern in ("configs/**/*.yaml", "tests/**/*.py", "scripts/**/*.py")
             for p in root.glob(pattern)]
    unset = []
    for model in config_models(AppConfig) + config_models(RolloutConfig):
        for name in model.model_fields:
            ways = (rf"^\s*(- )?{name}:", rf"[\"']{name}[\"']\s*:", rf"\b{name}=", rf"[\"']{name}[\"']\]\s*=")
            if not any(re.search(way, text, re.M) for way in ways for text in texts):
                unset.append(f"{model.__name__}.{name}")
    assert not unset, f"config fields no profile, test or script sets: {unset}"


def test_an_overlay_changes_only_what_it_says(tmp_path):
    shipped = yaml.safe_load((CONFIGS / "local-cpu.yaml").read_text())
    evaluation = yaml.safe_load((CONFIGS / "overlays" / "evaluation.yaml").read_text())
    result = overlaid(shipped, evaluation)
    args, before = app_args_of(result), app_args_of(shipped)
    assert args["cascade"] == {**before["cascade"], "allow_request_overrides": True}
    assert {k: v for k, v in args.items() if k != "cascade"} == {k: v for k, v in before.items() if k != "cascade"}
    assert "allow_request_overrides" not in before["cascade"]  # the shipped config is left as it was
    assert AppConfig.model_validate(args).cascade.allow_request_overrides

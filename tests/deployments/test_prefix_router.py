"""The prefix-aware request router matches this app's engine requests by their prompt text (no cluster:
its text extraction and the class it extends)."""

from types import SimpleNamespace

from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import PendingRequest

from deployments.prefix_router import PrefixAffinityRouter
from serve_app.core.generation import GenerationRequest

SYSTEM = {"role": "system", "content": "You answer briefly."}


def text_of(*args) -> str:
    pending = PendingRequest(args=list(args), kwargs={}, metadata=RequestMetadata("r", "r"), future=None)
    return PrefixAffinityRouter.__new__(PrefixAffinityRouter)._extract_text_from_request(pending)


def test_a_conversations_next_turn_extends_the_text_of_the_last():
    first = [SYSTEM, {"role": "user", "content": "Hi"}]
    second = [*first, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"}]
    earlier, later = (text_of(GenerationRequest("r", {}, messages=m)) for m in (first, second))
    assert later.startswith(earlier) and len(later) > len(earlier)
    assert earlier == "<system>You answer briefly.<user>Hi"


def test_roles_count_and_a_completion_prompt_is_its_own_text():
    as_user = text_of(GenerationRequest("r", {}, messages=[{"role": "user", "content": "Hi"}]))
    assert as_user != text_of(GenerationRequest("r", {}, messages=[{"role": "system", "content": "Hi"}]))
    # Ray Serve LLM's router would take `messages=None` for a completion's text and fail.
    assert text_of(GenerationRequest("r", {}, prompt="Once upon a time")) == "Once upon a time"


def test_other_callers_requests_are_matched_as_ray_serve_llm_does():
    assert text_of(SimpleNamespace(prompt="plain")) == "plain"


def test_it_extends_ray_serve_llms_public_router():
    """deployments.prefix_router imports the internal class to avoid vLLM's import; the public one must
    stay that class (an empty subclass of it)."""
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    assert PrefixCacheAffinityRouter.__mro__[1] is PrefixAffinityRouter.__mro__[1]
    overrides = [name for name in vars(PrefixCacheAffinityRouter)
                 if not name.startswith(("__", "_abc", "_annotated"))]  # ABC and @PublicAPI marks
    assert overrides == []

"""The answer cache: normalized exact match, completeness, size and age bounds."""

from serve_app.core.generation import GenerationChunk, GenerationRequest
from serve_app.routing.answer_cache import AnswerCache, cache_key


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def chat(content, **sampling):
    return GenerationRequest("id", {"max_tokens": 8, **sampling}, messages=[{"role": "user", "content": content}])


def answer(text="Paris.", finish="stop"):
    return [GenerationChunk(text, [1], 3, 1, finish_reason=finish)]


def test_key_folds_whitespace_but_not_meaning():
    assert cache_key("auto", chat("What is  the capital\nof France?")) == cache_key("auto", chat("What is the capital of France?"))
    assert cache_key("auto", chat("hi")) != cache_key("strong", chat("hi"))
    assert cache_key("auto", chat("hi")) != cache_key("auto", chat("hi", temperature=0.0))
    assert cache_key("auto", chat("hi")) == cache_key("auto", GenerationRequest("other-id", {"max_tokens": 8},
                                                                             messages=[{"role": "user", "content": "hi"}]))


def test_only_complete_answers_are_kept():
    cache = AnswerCache(4, 60, Clock())
    cache.put("a", answer(finish=None), "cheap")
    cache.put("b", [], "cheap")
    assert len(cache) == 0
    cache.put("c", answer(), "cheap")
    assert cache.get("c").served_by == "cheap" and cache.get("c").chunks[0].text == "Paris."


def test_least_recently_used_goes_first():
    cache = AnswerCache(2, 60, Clock())
    cache.put("a", answer(), "cheap")
    cache.put("b", answer(), "cheap")
    cache.get("a")
    cache.put("c", answer(), "cheap")
    assert cache.get("b") is None and cache.get("a") and cache.get("c")


def test_old_answers_expire():
    clock = Clock()
    cache = AnswerCache(2, 60, clock)
    cache.put("a", answer(), "cheap")
    clock.now = 60.5
    assert cache.get("a") is None and len(cache) == 0

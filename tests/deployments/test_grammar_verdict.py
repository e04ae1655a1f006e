"""A verdict under a grammar (deployments/structured.py `constrained_scores`, `Grammar`): over a fake grammar,
each case of the rule; over vLLM's own xgrammar backend and the bundled tokenizer, the grammar itself."""

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployments.structured import GRAMMAR_TOP, Grammar, constrained_scores
from serve_app.core.generation import GenerationRequest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Lp:
    logprob: float
    rank: int


def row(*ranked, extra=None):
    """A prompt-logprobs row: token ids by rank (probabilities halving), plus the scored token if unranked."""
    entries = {token: Lp(math.log(0.5 ** (r + 1)), r + 1) for r, token in enumerate(ranked)}
    if extra is not None:
        entries[extra] = Lp(math.log(1e-4), 500)
    return entries


class FakeGrammar:
    """Allows, at answer position p, the tokens `allowed[p]` (everything past the list)."""

    def __init__(self, allowed):
        self.allowed, self.position = allowed, 0

    def _ok(self, token, position):
        return position >= len(self.allowed) or token in self.allowed[position]

    def allows(self, token):
        return self._ok(token, self.position)

    def accept(self, tokens):
        if all(self._ok(t, self.position + i) for i, t in enumerate(tokens)):
            self.position += len(tokens)
            return True
        return False

    def rollback(self, count):
        self.position -= count

    def allowed_ids(self):
        return sorted(self.allowed[self.position])


def scores(rows, scored, grammar, best=None):
    asked = []

    async def best_allowed(i, allowed):
        asked.append((i, allowed))
        return best

    result = asyncio.run(constrained_scores(rows, scored, grammar, best_allowed))
    return result, asked


def test_an_allowed_favourite_is_the_models_own_token():
    (logprobs, tops, _), asked = scores([row(7, 8), row(9, 1)], [7, 9], FakeGrammar([{7, 8}, {9}]))
    assert tops == [7, 9] and logprobs == [math.log(0.5), math.log(0.5)] and asked == []


def test_where_the_favourite_is_forbidden_the_best_allowed_candidate_is():
    (logprobs, tops, top_logprobs), _ = scores([row(7, 8, 3)], [3], FakeGrammar([{8, 3}]))
    assert tops == [8] and top_logprobs == [math.log(0.25)]
    assert logprobs == [math.log(0.125)]  # the scored token is allowed: its own probability, below the best


def test_a_forbidden_scored_token_is_never_kept_and_nothing_after_it_counts():
    grammar = FakeGrammar([{7}, {9}, {4}])
    (logprobs, tops, _), _ = scores([row(7), row(5, 9), row(4)], [7, 5, 4], grammar)
    assert logprobs[0] == math.log(0.5) and logprobs[1] == -math.inf and logprobs[2] == -math.inf
    assert tops[:2] == [7, 9]
    assert grammar.position == 0  # left where it was


def test_with_no_allowed_candidate_one_token_is_generated_among_the_allowed():
    ranked = list(range(100, 100 + GRAMMAR_TOP))
    (logprobs, tops, top_logprobs), asked = scores([row(*ranked, extra=3)], [3], FakeGrammar([{3, 4}]),
                                                   best=(4, -6.0))
    assert asked == [(0, [3, 4])]
    assert tops == [4] and top_logprobs == [-6.0]
    assert logprobs == [math.log(1e-4)]  # allowed, but not the model's constrained choice: rejected at alpha 0


# The real grammar: vLLM's xgrammar backend as the engine builds it, over the bundled model's tokenizer.

@pytest.fixture(scope="module")
def backend():
    from transformers import AutoTokenizer
    from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "models" / "smollm2-135m-instruct")
    config = SimpleNamespace(structured_outputs_config=SimpleNamespace(disable_any_whitespace=False),
                             model_config=None, speculative_config=None)
    return XgrammarBackend(config, tokenizer=tokenizer, vocab_size=len(tokenizer)), tokenizer


def test_a_schema_grammar_follows_an_answer_and_ends_only_where_it_may(backend):
    xgrammar_backend, tokenizer = backend
    place = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = GenerationRequest("r", {}, prompt="q", structured={
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": place}}})
    eos = {tokenizer.eos_token_id}
    grammar = Grammar.compiled(xgrammar_backend, request, eos)
    ids = tokenizer.encode('{"city": "Paris"}', add_special_tokens=False)
    assert not grammar.allows(tokenizer.encode("Hello", add_special_tokens=False)[0])
    assert grammar.allowed_after(ids[:-1]) is not None
    assert tokenizer.eos_token_id not in grammar.allowed_after(ids[:-1])  # not complete yet
    assert grammar.allowed_after(ids) == [tokenizer.eos_token_id]  # complete: only the end
    assert grammar.allowed_after(tokenizer.encode('{"town"', add_special_tokens=False)) is None
    assert grammar.accept(ids) and grammar.allowed_ids() == [tokenizer.eos_token_id]

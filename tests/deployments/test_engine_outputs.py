"""vLLM outputs to the seam's types, over plain objects shaped like vLLM's (no engine)."""

from types import SimpleNamespace as NS

from deployments.engine_outputs import eos_ids, scored_ids, scored_positions_cached, unsure, verification
from serve_app.core.generation import GenerationRequest

EOS = 0
WORDS = {1: "The", 2: " cat", 3: " sat", 4: " dog", 5: " ran", 9: "<prompt>"}


def decode(ids):
    return "".join(WORDS[i] for i in ids if i != EOS)


def position(given, given_lp, top=None, top_lp=None):
    """One prompt position of vLLM's prompt_logprobs=1: the given token, and the top one when it differs."""
    row = {given: NS(logprob=given_lp, rank=1 if top is None else 2)}
    if top is not None:
        row[top] = NS(logprob=top_lp, rank=1)
    return row


def test_the_verdict_scores_the_last_positions_and_offers_a_text_per_outcome():
    # prompt [9, 9], prefix [1], scored [2, 4]: the model prefers " cat" then " sat", then ends.
    rows = [None, position(9, -1.0), position(1, -0.5), position(2, -0.1), position(4, -2.0, top=3, top_lp=-0.2)]
    output = NS(prompt_logprobs=rows, outputs=[NS(token_ids=[EOS])])
    v = verification(output, [9, 9], [1], [2, 4], decode, {EOS}, EOS)
    assert v.logprobs == (-0.1, -2.0) and v.top_ids == (2, 3) and v.top_logprobs == (-0.1, -0.2)
    assert v.ids == (2, 3, EOS) and v.stops == (False, False, True)
    assert v.texts == (" cat", " cat sat", " cat dog")  # relative to the served "The"; EOS adds no text


def test_a_verdict_needs_every_scored_position_computed():
    assert not scored_positions_cached(None, 10)
    assert not scored_positions_cached(9, 10)  # logits at 9 score the token at 10
    assert scored_positions_cached(10, 10)


def test_a_draft_ends_at_a_sampled_token_below_the_floor():
    delta = NS(token_ids=[2, 3], logprobs=[{2: NS(logprob=-0.1), 4: NS(logprob=-3.0)}, {3: NS(logprob=-1.5)}])
    assert unsure(delta, -1.0)  # " sat" at -1.5; an alternative's low log-probability does not count
    assert not unsure(delta, -2.0)
    assert not unsure(delta, None) and not unsure(NS(token_ids=[2], logprobs=None), -1.0)


def test_end_of_sequence_ids_come_from_tokenizer_and_config():
    assert eos_ids(NS(eos_token_id=2), NS(eos_token_id=[2, 7])) == {2, 7}
    assert eos_ids(NS(eos_token_id=None), NS()) == set()


def test_a_character_split_across_tokens_is_sent_whole():
    bytes_of = {1: b"ok ", 2: b"\xf0\x9f", 3: b"\x98\x80", 4: b"!"}  # 2 and 3 are the halves of an emoji

    def decode_bytes(ids):
        return b"".join(bytes_of[i] for i in ids if i != EOS).decode(errors="replace")

    # prompt [1], nothing served yet, scoring [2] (the first half); the model's next token is 3
    first = verification(NS(prompt_logprobs=[None, position(2, -0.1)], outputs=[NS(token_ids=[3])]),
                         [1], [], [2], decode_bytes, {EOS}, EOS)
    assert first.texts == ("", "\U0001f600")  # half an emoji is held back, not sent as U+FFFD
    # [2] served (with no text yet); scoring [3] completes the emoji
    second = verification(NS(prompt_logprobs=[None, position(2, -0.1), position(3, -0.1)], outputs=[NS(token_ids=[4])]),
                          [1], [2], [3], decode_bytes, {EOS}, EOS)
    assert second.texts == ("\U0001f600", "\U0001f600!")


def test_a_scoring_request_names_its_tokens_by_id_or_by_text_in_the_engines_own_tokens():
    class Words:
        def encode(self, text, add_special_tokens):
            assert not add_special_tokens
            return [len(word) for word in text.split()]

    def request(**scoring):
        return GenerationRequest("r", {}, prompt="q", **scoring)

    assert scored_ids(Words(), request(verify_token_ids=[7, 8])) == [7, 8]
    assert scored_ids(Words(), request(verify_text="a bcd ef")) == [1, 3, 2]
    assert scored_ids(Words(), request()) is None

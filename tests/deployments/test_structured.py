"""The engine replica's tools and formats (deployments/structured.py) over vLLM's own pieces and the bundled
model's real tokenizer, without an engine: the vLLM import paths it relies on, the constraint each request
gets, its answer's deltas parsed, and the shipped tool template."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from deployments.structured import TOOL_STRICT_LEVEL, StructuredAnswer, parser_class
from serve_app.config.tiers import EngineConfig
from serve_app.core.errors import InvalidRequest
from serve_app.core.generation import GenerationRequest, assembled_tool_calls

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "smollm2-135m-instruct"
TEMPLATE = "./configs/templates/smollm2-tools.jinja"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # not `strict`
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def hermes(tokenizer):
    return parser_class("hermes", tokenizer)


def test_the_vllm_pieces_are_where_this_build_has_them():
    """Pinned: these moved between vLLM releases (an upgrade that moves them fails here, not in a replica)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.parser.parser_manager import ParserManager
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.tool_parsers import ToolParserManager
    from vllm.tool_parsers.tool_strict_level import ToolStrictLevel
    from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend
    from vllm.v1.structured_output.request import get_structured_output_key

    assert {"hermes", "llama3_json", "mistral"} <= set(ToolParserManager.list_registered())
    assert ToolStrictLevel.from_name(TOOL_STRICT_LEVEL) == ToolStrictLevel.PARAMETER
    assert callable(ParserManager.get_parser)
    assert {"structured_outputs", "response_format"} <= set(ChatCompletionRequest.model_fields)
    assert {"structured_outputs", "response_format"} <= set(CompletionRequest.model_fields)
    assert SamplingParams(structured_outputs=StructuredOutputsParams(json={"type": "object"})).structured_outputs
    assert get_structured_output_key(StructuredOutputsParams(regex="a+"))[1] == "a+"
    assert callable(XgrammarBackend.compile_grammar)


def test_an_unknown_parser_is_refused_naming_the_known_ones(tokenizer):
    with pytest.raises(ValueError, match="hermes"):
        parser_class("hermez", tokenizer)


def answer(tokenizer, parser, **structured):
    return StructuredAnswer(GenerationRequest("r", {}, messages=ASK, structured=structured), tokenizer, parser, None)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}, "auto"])
def test_a_call_is_constrained_to_its_tools_schema_even_without_strict(tokenizer, hermes, choice):
    constraint = answer(tokenizer, hermes, tools=[WEATHER, TIME], tool_choice=choice).sampling()
    tag = json.loads(constraint["structured_outputs"].structural_tag)
    text = json.dumps(tag)
    assert WEATHER["function"]["parameters"] == _schema_for(tag, "get_weather")
    if isinstance(choice, dict):
        assert "get_time" not in text
    assert constraint["skip_special_tokens"] is False  # the parser needs the markers


def _schema_for(tag: dict, name: str) -> dict:
    """The argument schema a structural tag pins for a tool (found by its tag's `begin`)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if f'"name": "{name}"' in str(node.get("begin", "")):
                found.append(node["content"]["json_schema"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tag)
    return found[0]


def stream(tokenizer, structured: StructuredAnswer, text: str):
    ids = tokenizer.encode(text, add_special_tokens=False)
    chunks = []
    for i, token in enumerate(ids):
        content, calls = structured.delta(tokenizer.decode([token]), [token], [1, 2, 3], finished=i == len(ids) - 1)
        chunks.append((content, calls))
    return chunks


@pytest.mark.parametrize(("choice", "finish"), [("required", "tool_calls"), ("auto", "tool_calls"),
                                                ({"type": "function", "function": {"name": "get_weather"}}, "stop")])
def test_a_hermes_answer_streams_as_tool_call_deltas(tokenizer, hermes, choice, finish):
    from serve_app.core.generation import GenerationChunk

    structured = answer(tokenizer, hermes, tools=[WEATHER], tool_choice=choice)
    deltas = stream(tokenizer, structured, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert "".join(content for content, _ in deltas).strip() == ""
    chunks = [GenerationChunk("", [], 0, 0, tool_calls=calls) for _, calls in deltas]
    [call] = assembled_tool_calls(chunks)
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["id"]
    assert structured.finish_reason("stop") == finish
    assert structured.finish_reason("length") == "length"


def test_prose_stays_content_and_finishes_as_it_did(tokenizer, hermes):
    structured = answer(tokenizer, hermes, tools=[WEATHER])
    deltas = stream(tokenizer, structured, "It is sunny in Paris.")
    assert "".join(content for content, _ in deltas) == "It is sunny in Paris."
    assert all(calls is None for _, calls in deltas)
    assert structured.finish_reason("stop") == "stop"


def test_formats_become_vllms_structured_outputs(tokenizer):
    place = {"type": "object", "properties": {"city": {"type": "string"}}}
    schema = answer(tokenizer, None, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": place}})
    assert schema.sampling()["structured_outputs"].json == place
    assert answer(tokenizer, None, response_format={"type": "json_object"}).sampling()["structured_outputs"].json_object
    assert answer(tokenizer, None, structured_outputs={"choice": ["yes", "no"]}).sampling()[
        "structured_outputs"].choice == ["yes", "no"]
    completion = StructuredAnswer(GenerationRequest("r", {}, prompt="x", structured={"structured_outputs": {
        "regex": r"\d+"}}), tokenizer, None, None)
    assert completion.sampling()["structured_outputs"].regex == r"\d+"


def test_tools_without_a_parser_and_what_vllm_refuses_are_invalid_requests(tokenizer, hermes):
    with pytest.raises(InvalidRequest, match="tool parser") as refused:
        answer(tokenizer, None, tools=[WEATHER])
    assert refused.value.param == "tools"
    with pytest.raises(InvalidRequest):
        answer(tokenizer, hermes, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})


def test_the_shipped_template_renders_a_tool_loop_and_is_the_models_own_without_tools(tokenizer):
    template = EngineConfig(chat_template=TEMPLATE).chat_template_text()
    for messages in (ASK, [{"role": "system", "content": "Be brief."}, *ASK, {"role": "assistant", "content": "Hi"}]):
        assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, chat_template=template)
    loop = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    text = tokenizer.apply_chat_template(loop, tools=[WEATHER], tokenize=False, add_generation_prompt=True,
                                         chat_template=template)
    assert json.dumps(WEATHER) in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")

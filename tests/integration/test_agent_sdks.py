"""The official ``anthropic`` and ``openai`` SDKs against the real server: Anthropic Messages
(create, stream, count_tokens, a tool round trip) and OpenAI Responses (create, stream,
previous_response_id, function calls), on the tiny random-weight model (mechanics; forced calls
follow the grammar whatever the weights say) and on SmolLM2 (language)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.conftest import RunningServer, start_server
from tests.integration.test_vision import (
    IMAGE_TOKENS,
    VLM,
    pdf_uri,
    png_uri,
    vision_server,  # noqa: F401  (the fixture, started for this module too)
)
from tests.openai_schemas import validate

TOOLS_MODEL = "tiny-qwen-template"
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 6}},
    "required": ["city"],
    "additionalProperties": False,
}
CAPITAL = "What is the capital of France?"


def anthropic_client(server: RunningServer) -> Any:
    from anthropic import Anthropic

    return Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


# ---------------------------------------------------------------------- Anthropic Messages


def test_messages_create_stream_and_count_tokens(tiny_server: RunningServer) -> None:
    client = anthropic_client(tiny_server)
    kwargs: dict[str, Any] = {
        "model": "tiny-llama",
        "system": "You are terse and you answer in one line. " * 20,  # past a prefix-cache block (64 tokens)
        "messages": [{"role": "user", "content": "Count tokens for this exact request, please."}],
    }
    counted = client.messages.count_tokens(**kwargs).input_tokens
    message = client.messages.create(max_tokens=5, extra_body={"temperature": 0}, **kwargs)
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5
    # count_tokens only tokenized the prompt: nothing of it was in the prefix cache.
    assert message.usage.input_tokens == counted and message.usage.cache_read_input_tokens == 0
    again = client.messages.create(max_tokens=1, extra_body={"temperature": 0}, **kwargs)
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == counted
    assert again.usage.cache_read_input_tokens > 0
    with client.messages.stream(max_tokens=5, extra_body={"temperature": 0}, **kwargs) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == final.content[0].text == message.content[0].text  # greedy: the same answer
    fresh = {**kwargs, "messages": [{"role": "user", "content": "A prompt nobody sent before."}]}
    counted = client.messages.count_tokens(**fresh).input_tokens
    other = client.messages.create(max_tokens=1, **{**fresh, "system": "Another system prompt."})
    assert other.usage.input_tokens + other.usage.cache_read_input_tokens != counted  # the system prompt counts


def test_count_tokens_counts_a_prompt_longer_than_the_context(tiny_server: RunningServer) -> None:
    """A client counts to learn how much to cut: the count of a prompt the model cannot take is
    still given, while the message itself is refused with a 400 that says why."""
    import anthropic

    client = anthropic_client(tiny_server)
    kwargs: dict[str, Any] = {"model": "tiny-short", "messages": [{"role": "user", "content": "many words " * 40}]}
    counted = client.messages.count_tokens(**kwargs).input_tokens
    assert counted > 48
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(max_tokens=5, **kwargs)
    assert f"{counted} tokens" in str(refused.value)


def test_messages_clamp_max_tokens_to_the_context(tiny_server: RunningServer) -> None:
    client = anthropic_client(tiny_server)
    message = client.messages.create(model="tiny-short", max_tokens=32000, messages=[{"role": "user", "content": "Hi"}])
    assert message.stop_reason in ("max_tokens", "end_turn")
    assert message.usage.input_tokens + message.usage.output_tokens <= 48


def test_messages_stop_sequence_is_reported(tiny_server: RunningServer) -> None:
    client = anthropic_client(tiny_server)
    kwargs: dict[str, Any] = {"model": "tiny-llama", "max_tokens": 12, "messages": [{"role": "user", "content": "Go on"}]}
    whole = client.messages.create(extra_body={"temperature": 0}, **kwargs).content[0].text
    stop = whole[len(whole) // 2 :][:3]
    assert stop.strip(), whole
    cut = client.messages.create(stop_sequences=[stop, "never-seen"], extra_body={"temperature": 0}, **kwargs)
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == whole[: whole.index(stop)]
    with client.messages.stream(stop_sequences=[stop], extra_body={"temperature": 0}, **kwargs) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_messages_tool_round_trip(tiny_server: RunningServer) -> None:
    client = anthropic_client(tiny_server)
    tools = [{"name": "get_weather", "description": "Weather for a city", "input_schema": PARAMETERS}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    with client.messages.stream(
        model=TOOLS_MODEL, max_tokens=200, messages=messages, tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0},
    ) as stream:
        events = list(stream)
        first = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    jsonschema.validate(call.input, PARAMETERS)
    # The arguments arrive as the grammar writes them, token by token, not in one piece.
    partial = [e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len(partial) > 2 and json.loads("".join(partial)) == call.input
    # Every finished prompt is kept in the prefix cache: what was not read from it was written.
    assert first.usage.cache_creation_input_tokens == first.usage.input_tokens > 0
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]},
    ]
    second = client.messages.create(model=TOOLS_MODEL, max_tokens=5, messages=messages, tools=tools)
    assert second.stop_reason in ("max_tokens", "end_turn", "tool_use")
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens > first.usage.input_tokens


def test_messages_errors_reach_the_sdk_as_its_exceptions(tiny_server: RunningServer) -> None:
    import anthropic

    client = anthropic_client(tiny_server)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="tiny-llama", max_tokens=5, messages=[])


def test_messages_answer_in_language(smol_server: RunningServer) -> None:
    client = anthropic_client(smol_server)
    message = client.messages.create(
        model=_smol_id(smol_server),
        max_tokens=24,
        messages=[{"role": "user", "content": CAPITAL}],
        extra_body={"temperature": 0},
    )
    assert "Paris" in message.content[0].text
    with client.messages.stream(
        model=_smol_id(smol_server), max_tokens=24, messages=[{"role": "user", "content": CAPITAL}], extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == message.content[0].text


def _smol_id(server: RunningServer) -> str:
    with server.client() as http:
        return str(http.get("/v1/models").json()["data"][0]["id"])


# ---------------------------------------------------------------------- OpenAI Responses


def test_responses_create_continue_and_stream(tiny_server: RunningServer) -> None:
    client = tiny_server.openai()
    opening = "Hello there, this is a long opening line. " * 12  # past a prefix-cache block (64 tokens)
    first = client.responses.create(model="tiny-llama", input=opening, max_output_tokens=4, temperature=0)
    validate(first.model_dump(exclude_unset=True), "Response")
    assert first.status == "incomplete" and first.output_text
    counted = client.responses.input_tokens.count(model="tiny-llama", input="And again", previous_response_id=first.id)
    validate(counted.model_dump(exclude_unset=True), "TokenCountsResource")
    second = client.responses.create(model="tiny-llama", input="And again", previous_response_id=first.id, max_output_tokens=4)
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn is in the prompt
    assert counted.input_tokens == second.usage.input_tokens  # counted by the same worker and template
    assert second.usage.input_tokens_details.cached_tokens > 0  # the first turn came from the prefix cache
    items = client.responses.input_items.list(second.id)
    assert [item.content[0].text for item in items.data] == ["And again"]  # type: ignore[union-attr]
    assert client.responses.retrieve(first.id).output_text == first.output_text
    events = list(client.responses.create(model="tiny-llama", input=opening, max_output_tokens=4, temperature=0, stream=True))
    for event in events:
        validate(event.model_dump(exclude_unset=True), "ResponseStreamEvent")
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == first.output_text
    client.responses.delete(first.id)
    import openai

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_responses_function_call_round_trip(tiny_server: RunningServer) -> None:
    client = tiny_server.openai()
    tools = [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": PARAMETERS, "strict": True}]
    with client.responses.stream(
        model=TOOLS_MODEL, input="Weather in Paris?", tools=tools, tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_output_tokens=200,
    ) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert kinds.count("response.function_call_arguments.delta") > 2 and kinds[-1] == "response.completed"
    [call] = [item for item in first.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), PARAMETERS)
    second = client.responses.create(
        model=TOOLS_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=tools,
        max_output_tokens=4,
    )
    validate(second.model_dump(exclude_unset=True), "Response")
    assert second.usage is not None and first.usage is not None and second.usage.input_tokens > first.usage.input_tokens


def test_responses_answer_in_language(smol_server: RunningServer) -> None:
    client = smol_server.openai()
    response = client.responses.create(model=_smol_id(smol_server), input=CAPITAL, max_output_tokens=24, temperature=0)
    assert "Paris" in response.output_text


@pytest.fixture
def restartable(tmp_path: Path, tiny_models_root: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    config = {"defaults": {"model": "tiny-llama", "model_directory": str(tiny_models_root), "embedded_model": False}}
    yield config, tmp_path


def test_previous_response_id_survives_a_restart(restartable: tuple[dict[str, Any], Path]) -> None:
    config, tmp = restartable
    config["server"] = {"responses_store_path": str(tmp / "store.sqlite3")}
    server = start_server(tmp, json.loads(json.dumps(config)))
    try:
        first = server.openai().responses.create(model="tiny-llama", input="Remember this", max_output_tokens=3)
    finally:
        server.stop()
    server = start_server(tmp, json.loads(json.dumps(config)))
    try:
        second = server.openai().responses.create(model="tiny-llama", input="Go on", previous_response_id=first.id, max_output_tokens=3)
        assert second.usage is not None and first.usage is not None
        assert second.usage.input_tokens > first.usage.input_tokens
    finally:
        server.stop()


# ---------------------------------------------------------------------- images and documents

def test_images_and_pdfs_reach_a_vision_model_through_both_apis(vision_server: RunningServer) -> None:  # noqa: F811
    client = anthropic_client(vision_server)

    def tokens(*blocks: dict[str, Any]) -> int:
        content = [{"type": "text", "text": "What is this?"}, *blocks]
        message = client.messages.create(model=VLM, max_tokens=1, messages=[{"role": "user", "content": content}])
        return message.usage.input_tokens + message.usage.cache_read_input_tokens

    red = png_uri("red").split(",", 1)[1]
    pdf = pdf_uri(2).split(",", 1)[1]
    plain = tokens()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": red}}
    assert tokens(image) == plain + IMAGE_TOKENS
    counted = client.messages.count_tokens(model=VLM, messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}])
    assert counted.input_tokens == plain + IMAGE_TOKENS  # the image's tokens counted by the model's processor
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}
    chat = vision_server.openai().chat.completions.create(
        model=VLM, max_tokens=1,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": pdf_uri(2)}}]}],
    )
    assert chat.usage is not None
    assert tokens(document) == chat.usage.prompt_tokens >= plain + 2 * IMAGE_TOKENS  # the pages, as chat renders them
    openai_client = vision_server.openai()
    parts = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": png_uri("red")}]
    response = openai_client.responses.create(model=VLM, input=[{"role": "user", "content": parts}], max_output_tokens=1, store=False)
    assert response.usage is not None and response.usage.input_tokens == plain + IMAGE_TOKENS


def test_thinking_and_reasoning_requests_decide_what_is_returned(tmp_path: Path, make_tiny_model: Any) -> None:
    """A model whose template opens <think> and whose reasoning_response is unset: chat returns
    the raw text, a Messages request with thinking gets it as a thinking block and one with
    thinking disabled gets none of it, a Responses request with reasoning gets a reasoning item."""
    folder = make_tiny_model("thinker")
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["chat_template"] = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
    )
    config_file.write_text(json.dumps(tokenizer_config))
    (tmp_path / "srv").mkdir()
    config = {"defaults": {"model_directory": str(folder.parent), "embedded_model": False}, "models": {"thinker": {}}}
    server = start_server(tmp_path / "srv", config)
    try:
        ask: dict[str, Any] = {"model": "thinker", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
        raw = server.openai().chat.completions.create(temperature=0, **ask).choices[0].message.content
        assert raw and raw.strip()
        client = anthropic_client(server)
        greedy = {"temperature": 0}
        shown = client.messages.create(thinking={"type": "adaptive"}, extra_body=greedy, **ask)
        assert [(b.type, getattr(b, "thinking", None)) for b in shown.content] == [("thinking", raw)]
        hidden = client.messages.create(thinking={"type": "disabled"}, extra_body=greedy, **ask)
        assert all(b.type == "text" and raw.strip() not in b.text for b in hidden.content)
        response = server.openai().responses.create(
            model="thinker", input="Hi", max_output_tokens=8, temperature=0, reasoning={"effort": "low"}
        )
        validate(response.model_dump(exclude_unset=True), "Response")
        assert response.output[0].type == "reasoning" and response.output[0].summary[0].text == raw
    finally:
        server.stop()

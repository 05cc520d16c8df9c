"""LangChain's ChatOpenAI against the real server with the embedded SmolLM2: a forced tool call
comes back as LangChain tool calls, the tool result goes back as a ToolMessage and the model
answers; ``with_structured_output`` (strict json_schema) returns a validated object."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_openai")

pytestmark = pytest.mark.timeout(600)

MODEL = "SmolLM2-135M-Instruct"


def _llm(server: Any, **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", model=MODEL, temperature=0, max_retries=0, **kwargs
    )


def test_langchain_tool_loop(smol_server: Any) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"It is sunny and 22 degrees in {city}."

    llm = _llm(smol_server, max_tokens=60)
    messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    [call] = first.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather]).invoke(messages)
    assert isinstance(final.content, str) and final.content.strip()


def test_langchain_structured_output(smol_server: Any) -> None:
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=24)
        country: str = Field(max_length=24)

    result = _llm(smol_server, max_tokens=80).with_structured_output(City, method="json_schema", strict=True).invoke(
        "Name a European capital city and its country."
    )
    assert isinstance(result, City) and result.name and result.country
